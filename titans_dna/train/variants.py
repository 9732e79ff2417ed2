"""Zero-shot variant effect scores: the causal model's log-likelihood ratio of the alternative against the
reference allele in a window of the reference around each variant, averaged over both strands.

    LLR = 1/2 [ (log p(alt window) - log p(ref window)) + (log p(rc alt window) - log p(rc ref window)) ]

Negative values mean the model finds the alternative sequence less likely. The window is ``window`` bases of
reference on each side of the REF allele (clipped at contig ends); indels change the alt window's length.
Output is a TSV, or the input VCF with an INFO field per ALT allele (``Number=A``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from titans_dna.data.fasta import open_text, source_name
from titans_dna.data.genome import Genome
from titans_dna.data.tokenizer import reverse_complement
from titans_dna.model import TitansDNA
from titans_dna.train.inference import chunks, open_output, score_records

INFO_KEY = "TITANS_LLR"
_BASES = set("ACGTNacgtn")


class VcfError(ValueError):
    """A VCF line that cannot be scored; the message names the file and line."""


@dataclass
class Variant:
    """One VCF data line: 1-based ``pos``, its alleles, and the line (number and text) it came from."""

    chrom: str
    pos: int
    id: str
    ref: str
    alts: list[str]
    line: int
    text: str


def read_vcf_header(path: str | os.PathLike) -> list[str]:
    """The header lines of a VCF (``##...`` meta lines and the ``#CHROM`` line), plain or gzip."""
    header = []
    with open_text(path) as fh:
        for text in fh:
            if not text.startswith("#"):
                break
            header.append(text.rstrip("\n"))
    return header


def iter_variants(path: str | os.PathLike) -> Iterator[Variant]:
    """Stream the data lines of a VCF (plain or gzip) as `Variant`s.

    Raises:
        VcfError: a data line with fewer than 5 columns or a non-integer POS (names the line).
    """
    name = source_name(path)
    with open_text(path) as fh:
        for number, text in enumerate(fh, start=1):
            text = text.rstrip("\n")
            if text.startswith("#") or not text.strip():
                continue
            cols = text.split("\t")
            if len(cols) < 5:
                raise VcfError(
                    f"{name}: line {number}: expected tab-separated CHROM POS ID REF ALT, got {text[:60]!r}"
                )
            try:
                pos = int(cols[1])
            except ValueError:
                raise VcfError(f"{name}: line {number}: POS {cols[1]!r} is not an integer") from None
            yield Variant(cols[0], pos, cols[2], cols[3], cols[4].split(","), number, text)


def _scorable(allele: str) -> bool:
    # Symbolic (<DEL>), breakend ([ ]), missing (. *) alleles have no sequence to score.
    return bool(allele) and set(allele) <= _BASES


def variant_windows(genome: Genome, var: Variant, window: int, vcf_name: str) -> tuple[str, list[str | None]]:
    """Reference window and one alt window per ALT allele (None where the allele is symbolic).

    Raises:
        VcfError: REF differs from the reference at POS, or the contig is missing (names the line).
    """
    try:
        chrom = genome.resolve(var.chrom)
    except KeyError as err:
        raise VcfError(f"{vcf_name}: line {var.line}: {err.args[0]}") from None
    start, end = var.pos - 1, var.pos - 1 + len(var.ref)
    length = genome.records[chrom]
    if start < 0 or end > length:
        raise VcfError(
            f"{vcf_name}: line {var.line}: {var.chrom}:{var.pos} {var.ref} lies outside the "
            f"reference contig (length {length})"
        )
    found = genome.fetch(chrom, start, end)
    if found.upper() != var.ref.upper():
        raise VcfError(
            f"{vcf_name}: line {var.line}: REF {var.ref!r} does not match the reference "
            f"{genome.name} at {var.chrom}:{var.pos} ({found!r}); wrong assembly or coordinates?"
        )
    left = genome.fetch(chrom, max(0, start - window), start)
    right = genome.fetch(chrom, end, min(length, end + window))
    alts = [left + alt + right if _scorable(alt) else None for alt in var.alts]
    return left + found + right, alts


def score_variants(
    model: TitansDNA,
    vcf: str | os.PathLike,
    reference: str | os.PathLike | Genome,
    out: str | os.PathLike,
    window: int = 512,
    batch_size: int = 16,
    precision: str = "fp32",
    out_format: str | None = None,
    chunk_variants: int = 256,
    progress: bool = True,
) -> int:
    """Score every ALT allele of a VCF and write a TSV or an annotated VCF.

    Args:
        model: a causal TitansDNA (eval mode, on its device).
        vcf: the variants (plain or gzip VCF).
        reference: the genome FASTA the VCF refers to (or an open ``Genome``).
        out: output path (``-``: a TSV on stdout); ``.vcf`` writes the input VCF with
            ``INFO/TITANS_LLR`` per ALT, else a TSV with columns chrom, pos, id, ref, alt, llr,
            llr_forward, llr_reverse.
        window: reference bases kept on each side of the REF allele.
        out_format: ``vcf`` or ``tsv``; None = from the ``out`` suffix.

    Returns:
        The number of ALT alleles scored (symbolic alleles get ``.``/NaN and are not counted).
    """
    genome = reference if isinstance(reference, Genome) else Genome(reference)
    vcf_name = source_name(vcf)
    fmt = out_format or ("vcf" if Path(out).name.lower().endswith(".vcf") else "tsv")
    header, variants = read_vcf_header(vcf), iter_variants(vcf)
    scored = 0
    with open_output(out) as fh:
        if fmt == "vcf":
            meta, columns = (
                [h for h in header if h.startswith("##")],
                [h for h in header if h.startswith("#CHROM")],
            )
            info_line = (
                f'##INFO=<ID={INFO_KEY},Number=A,Type=Float,Description="Titans-DNA log-likelihood ratio '
                f'alt vs ref, {window} bp flanks, both strands averaged (nats)">'
            )
            fh.write("\n".join([*meta, info_line, *columns]) + "\n")
        else:
            fh.write(
                "\t".join(["chrom", "pos", "id", "ref", "alt", "llr", "llr_forward", "llr_reverse"]) + "\n"
            )
        bar = tqdm(desc="score-variants", unit=" variants", disable=not progress)
        for block in chunks(variants, chunk_variants):
            windows = [variant_windows(genome, v, window, vcf_name) for v in block]
            seqs, slots = (
                [],
                [],
            )  # four sequences per scorable allele: ref, alt, and their reverse complements
            for ref_seq, alts in windows:
                for alt_seq in alts:
                    if alt_seq is not None:
                        slots.append(len(seqs))
                        seqs += [ref_seq, alt_seq, reverse_complement(ref_seq), reverse_complement(alt_seq)]
            ll, _ = score_records(model, seqs, batch_size, precision)
            it = iter(slots)
            for var, (_, alts) in zip(block, windows, strict=True):
                values = []
                for alt_seq in alts:
                    if alt_seq is None:
                        values.append((math.nan, math.nan))
                        continue
                    i = next(it)
                    values.append((ll[i + 1] - ll[i], ll[i + 3] - ll[i + 2]))
                    scored += 1
                fh.write(_format_line(var, values, fmt))
            bar.update(len(block))
        bar.close()
    return scored


def _format_line(var: Variant, values: list[tuple[float, float]], fmt: str) -> str:
    def num(x: float) -> str:
        return "." if math.isnan(x) else f"{x:.5f}"

    if fmt == "vcf":
        cols = var.text.split("\t")
        while len(cols) < 8:
            cols.append(".")
        field = f"{INFO_KEY}=" + ",".join(num((f + r) / 2) for f, r in values)
        cols[7] = field if cols[7] in (".", "") else f"{cols[7]};{field}"
        return "\t".join(cols) + "\n"
    rows = [
        [var.chrom, str(var.pos), var.id, var.ref, alt, num((f + r) / 2), num(f), num(r)]
        for alt, (f, r) in zip(var.alts, values, strict=True)
    ]
    return "".join("\t".join(row) + "\n" for row in rows)
