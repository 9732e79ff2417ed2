"""Per-record composition (length, GC, N, soft-masked fraction) for ``titans-dna info``."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from titans_dna.data.tokenizer import BASE_IDS, C_ID, G_ID, N_ID, encode


@dataclass
class RecordStats:
    """Counts for one record (or a total); percentages are derived, so totals add up exactly."""

    name: str
    length: int
    gc: int  # C + G
    acgt: int  # unambiguous bases, the denominator of GC %
    n: int  # N and IUPAC ambiguity codes
    soft_masked: int  # lowercase bases

    @property
    def gc_percent(self) -> float:
        """GC % of the unambiguous bases (NaN when there are none)."""
        return 100.0 * self.gc / self.acgt if self.acgt else math.nan

    @property
    def n_percent(self) -> float:
        return 100.0 * self.n / self.length if self.length else math.nan

    @property
    def soft_masked_percent(self) -> float:
        return 100.0 * self.soft_masked / self.length if self.length else math.nan

    def as_dict(self) -> dict:
        """JSON-ready: counts plus percentages (None instead of NaN)."""

        def pct(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 4)

        return {
            "name": self.name,
            "length": self.length,
            "gc_percent": pct(self.gc_percent),
            "n_percent": pct(self.n_percent),
            "soft_masked_percent": pct(self.soft_masked_percent),
            "n": self.n,
            "soft_masked": self.soft_masked,
        }


def record_stats(name: str, seq: str, source: str = "<string>") -> RecordStats:
    """Composition of one sequence; a bad character raises `InvalidSequenceError` naming its position."""
    ids, mask = encode(seq, source, name)
    counts = np.bincount(ids, minlength=N_ID + 1)
    return RecordStats(
        name=name,
        length=int(ids.size),
        gc=int(counts[C_ID] + counts[G_ID]),
        acgt=int(counts[list(BASE_IDS)].sum()),
        n=int(counts[N_ID]),
        soft_masked=int(np.count_nonzero(mask)),
    )


def total_stats(rows: Iterable[RecordStats], name: str = "total") -> RecordStats:
    """Sum of several records' counts."""
    rows = list(rows)
    return RecordStats(
        name,
        sum(r.length for r in rows),
        sum(r.gc for r in rows),
        sum(r.acgt for r in rows),
        sum(r.n for r in rows),
        sum(r.soft_masked for r in rows),
    )


def format_table(rows: Iterable[tuple[str, RecordStats]], total: RecordStats) -> str:
    """A fixed-width text table: one row per ``(file, stats)``, then the total; the file column only when
    the rows come from more than one file."""
    rows = list(rows)
    show_file = len({file for file, _ in rows}) > 1
    head = ["file"] * show_file + ["record", "length", "GC %", "N %", "soft-masked %"]

    def cells(file: str, r: RecordStats) -> list[str]:
        pcts = [
            f"{x:.2f}" if not math.isnan(x) else "-"
            for x in (r.gc_percent, r.n_percent, r.soft_masked_percent)
        ]
        return [file] * show_file + [r.name, f"{r.length:,}", *pcts]

    body = [cells(file, r) for file, r in rows] + [cells("", total)]
    widths = [max(len(x) for x in column) for column in zip(head, *body, strict=True)]

    def line(values: list[str]) -> str:
        text = [
            v.ljust(w) if i < 1 + show_file else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(text).rstrip()

    rule = "-" * len(line(head))
    return "\n".join([line(head), rule, *(line(b) for b in body[:-1]), rule, line(body[-1])])
