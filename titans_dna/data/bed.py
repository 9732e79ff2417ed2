"""BED intervals with a split column (train/valid/test or foldN, as in Enformer/Borzoi BEDs), checked
against a genome so that intervals from another assembly are refused instead of fetching the wrong sequence.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from titans_dna.data.fasta import open_text, source_name


class SequenceSource(Protocol):
    """What windows need from a genome: `Genome`, `TokenStore` and `GenomeCollection` all provide it."""

    name: str
    records: dict[str, int]

    def resolve(self, name: str) -> str: ...

    def fetch_ids(self, chrom: str, start: int, end: int, strand: str = "+"): ...


@dataclass(frozen=True)
class Interval:
    """A 0-based half-open interval; ``line`` is its 1-based BED line (0 when not from a file)."""

    chrom: str
    start: int
    end: int
    strand: str = "+"
    split: str | None = None
    line: int = 0

    def __len__(self) -> int:
        return self.end - self.start


class BedError(ValueError):
    """A BED file that is malformed or does not fit the genome; the message names the line."""


def read_bed(
    source: str | os.PathLike | Iterable[str],
    split: str | Sequence[str] | None = None,
    split_column: int = 4,
) -> list[Interval]:
    """Read BED intervals (plain or gzip), optionally keeping only some splits.

    Args:
        source: a BED path, or lines of BED text.
        split: keep intervals whose split column equals this value (or one of these values), e.g. ``"train"``
            or ``["fold0", "fold1"]``; None keeps all.
        split_column: 1-based column holding the split label (4 in Enformer/Borzoi BEDs).

    Returns:
        Intervals in file order; the strand comes from column 6 when present.
    """
    name = source_name(source) if isinstance(source, (str, os.PathLike)) else "<bed>"
    wanted = {split} if isinstance(split, str) else set(split) if split is not None else None
    intervals, seen_splits = [], set()
    if isinstance(source, (str, os.PathLike)):
        with open_text(source) as handle:
            lines = handle.readlines()
    else:
        lines = list(source)
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        fields = line.rstrip("\r\n").split("\t") if "\t" in line else line.split()
        if len(fields) < 3:
            raise BedError(
                f"{name}: line {number}: expected at least 3 columns (chrom start end), got {fields}"
            )
        try:
            start, end = int(fields[1]), int(fields[2])
        except ValueError:
            raise BedError(
                f"{name}: line {number}: start/end are not integers: {fields[1]!r}, {fields[2]!r}"
            ) from None
        if not 0 <= start < end:
            raise BedError(f"{name}: line {number}: need 0 <= start < end, got start={start} end={end}")
        label = fields[split_column - 1] if len(fields) >= split_column else None
        seen_splits.add(label)
        if wanted is not None and label not in wanted:
            continue
        strand = fields[5] if len(fields) >= 6 and fields[5] in ("+", "-") else "+"
        intervals.append(Interval(fields[0], start, end, strand, label, number))
    if wanted is not None and not intervals:
        present = ", ".join(sorted(str(s) for s in seen_splits)[:12])
        raise BedError(
            f"{name}: no interval with split {sorted(wanted)} in column {split_column} (found: {present})"
        )
    if not intervals:
        raise BedError(f"{name}: no intervals")
    return intervals


def check_intervals(
    intervals: Sequence[Interval], genome: SequenceSource, bed_name: str = "<bed>", drop_missing: bool = False
) -> list[Interval]:
    """Map interval contigs onto the genome's record names (chr16 <-> 16); refuse intervals that do not fit.

    Args:
        drop_missing: drop intervals on contigs the genome lacks (a whole-genome BED with a one-chromosome
            FASTA) instead of refusing. Intervals past a contig's end are always refused: that is the sign of
            another assembly (e.g. hg38 intervals against GRCh37).

    Raises:
        BedError naming the first bad line, how many intervals are bad, and the likely cause.
    """
    kept, missing, outside = [], [], []
    for iv in intervals:
        try:
            chrom = genome.resolve(iv.chrom)
        except KeyError:
            missing.append(iv)
            continue
        if iv.end > genome.records[chrom]:
            outside.append((iv, genome.records[chrom]))
            continue
        kept.append(Interval(chrom, iv.start, iv.end, iv.strand, iv.split, iv.line))
    refuse_missing = bool(missing) and (not drop_missing or not kept)
    if outside or refuse_missing:
        bad = [
            (iv.line, f"{iv.chrom}:{iv.start}-{iv.end} runs past the end of {iv.chrom} (length {n:,})")
            for iv, n in outside
        ]
        bad += (
            [(iv.line, f"contig '{iv.chrom}' is not in the FASTA") for iv in missing]
            if refuse_missing
            else []
        )
        line, what = bad[0]  # a contig-end overrun first: the clearest sign of another assembly
        counts = [f"{len(outside)} run past a contig end"] if outside else []
        if refuse_missing:
            absent = sorted({iv.chrom for iv in missing})
            counts.append(f"{len(missing)} name absent contigs ({', '.join(absent[:6])})")
        raise BedError(
            f"{bed_name}: line {line}: {what}; of {len(intervals)} intervals, {' and '.join(counts)}. "
            f"The BED likely belongs to another assembly or naming scheme than {genome.name} (e.g. hg38 "
            "intervals against GRCh37): refusing rather than fetching wrong sequence"
            + ("" if drop_missing or outside else "; drop_missing=True skips contigs the FASTA lacks")
        )
    return kept
