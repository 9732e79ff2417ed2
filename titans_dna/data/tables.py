"""Labelled sequence tables: CSV/TSV (gzip ok) or parquet with a ``seq``/``sequence`` column and ``label``.

One loader serves GenomicBenchmarks exports, GUE (``<group>/<task>/{train,dev,test}.csv.gz``), iEnhancer,
janggu and users' own tables. Every loader in the package returns `LabelledSequences`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from titans_dna.data.fasta import format_from_suffix, iter_records
from titans_dna.data.tokenizer import InvalidSequenceError, encode

SEQUENCE_COLUMNS = ("sequence", "seq")


@dataclass
class LabelledSequences:
    """(sequence, label) records; ``labels[i]`` indexes ``classes`` (official order), ``ids`` are optional."""

    sequences: list[str]
    labels: np.ndarray  # int64 [n]
    classes: tuple[str, ...]
    source: str = ""
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.sequences[index], int(self.labels[index])

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return zip(self.sequences, (int(x) for x in self.labels), strict=True)

    def class_counts(self) -> dict[str, int]:
        """Records per class name, in class order."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts, strict=True)}


class TableError(ValueError):
    """A malformed label table; the message names the file and, where it applies, the line."""


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _read_frame(path: Path, fmt: str | None = None):
    import pandas as pd

    name = path.name.lower().removesuffix(".gz")
    if fmt == "parquet" or (fmt is None and name.endswith(".parquet")):
        return pd.read_parquet(path)
    sep = "\t" if fmt == "tsv" or (fmt is None and name.endswith((".tsv", ".txt"))) else ","
    return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)


def load_table(
    path: str | os.PathLike,
    classes: Sequence[str] | None = None,
    sequence_column: str | None = None,
    label_column: str = "label",
    validate: bool = True,
    fmt: str | None = None,
) -> LabelledSequences:
    """Load one split of a labelled table.

    Args:
        path: ``.csv``, ``.tsv`` (either ``.gz``) or ``.parquet``.
        classes: class names in official order. Labels in the file may be these names or integer indices
            into them; any other label is an error naming the line. None: the sorted distinct labels
            (numerically when they are all integers).
        sequence_column: default: the first of ``sequence``, ``seq`` present.
        validate: tokenise every sequence once so a bad character is reported with file, line and position.
        fmt: ``csv``, ``tsv`` or ``parquet``; None guesses from the extension (``.tsv``/``.txt`` = TSV).

    Returns:
        `LabelledSequences` with ``ids`` from an ``id`` column when present.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    frame = _read_frame(path, fmt)
    columns = list(frame.columns)
    seq_col = sequence_column or next((c for c in SEQUENCE_COLUMNS if c in columns), None)
    if seq_col not in columns or label_column not in columns:
        wanted = [sequence_column or "seq|sequence", label_column]
        raise TableError(f"{path}: needs columns {wanted}, found {columns}")
    raw_labels = [str(x) for x in frame[label_column].tolist()]
    if classes is None:
        distinct = sorted(
            set(raw_labels), key=lambda x: (0, int(x), "") if x.lstrip("-").isdigit() else (1, 0, x)
        )
        classes = tuple(distinct)
    classes = tuple(classes)
    lookup = {name: i for i, name in enumerate(classes)}
    if not any(_is_int(name) for name in classes):  # integer labels index named classes (GB exports: 0/1)
        lookup.update({str(i): i for i in range(len(classes))})
    labels = np.empty(len(raw_labels), dtype=np.int64)
    for row, value in enumerate(raw_labels):
        if value not in lookup:
            raise TableError(
                f"{path}: line {row + 2}: unknown label {value!r}; expected one of {list(classes)} "
                f"or an index 0..{len(classes) - 1}"
            )
        labels[row] = lookup[value]
    empty = np.flatnonzero(frame[seq_col].isna().to_numpy() | (frame[seq_col].astype(str) == "").to_numpy())
    if empty.size:
        raise TableError(f"{path}: line {empty[0] + 2}: empty sequence ({empty.size} rows have none)")
    sequences = [str(s) for s in frame[seq_col].tolist()]
    if validate:
        _validate(sequences, path)
    ids = [str(x) for x in frame["id"].tolist()] if "id" in columns else []
    return LabelledSequences(sequences, labels, classes, str(path), ids)


def _validate(sequences: Sequence[str], path: Path) -> None:
    """Tokenise all rows in one call; map a failure back to its line and position within the row."""
    try:
        encode("".join(sequences), str(path))
    except InvalidSequenceError as err:
        ends = np.cumsum([len(s) for s in sequences])
        row = int(np.searchsorted(ends, err.position - 1, side="right"))
        within = err.position - (int(ends[row - 1]) if row else 0)
        raise InvalidSequenceError(str(path), f"line {row + 2}", within, err.char) from None


def read_labelled(path: str | os.PathLike, fmt: str | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """Sequences, integer labels and record names of one split file, for fine-tuning.

    Args:
        fmt: ``csv``, ``tsv``, ``parquet`` (a ``seq``/``sequence`` and a ``label`` column) or ``fasta``
            (the label is the last ``|``-separated field of each header: ``>id|1``); None guesses from the
            extension.

    Returns:
        ``(seqs, labels int64 [n], names)``. Integer labels are kept as they are (so every split of a task
        agrees); text labels become indices of their sorted names. Names are the ``id`` column, else the
        0-based row number, or the FASTA id without its label.
    """
    path = Path(path)
    if fmt == "fasta" or (fmt is None and format_from_suffix(path.name) == "fasta"):
        seqs, raw, names = [], [], []
        for record_id, seq in iter_records(path, "fasta"):
            name, sep, label = record_id.rpartition("|")
            if not sep or not label:
                raise TableError(f"{path}: record '{record_id}' has no label; write headers as >id|label")
            seqs.append(seq)
            raw.append(label)
            names.append(name)
    else:
        if fmt not in (None, "csv", "tsv", "parquet"):
            raise ValueError(f"{path}: unknown table format {fmt!r}; use csv, tsv, parquet or fasta")
        table = load_table(path, fmt=fmt)
        seqs, names = table.sequences, table.ids or [str(i) for i in range(len(table))]
        raw = [table.classes[i] for i in table.labels]
    if all(_is_int(x) for x in raw):
        return seqs, np.asarray([int(x) for x in raw], dtype=np.int64), names
    classes = sorted(set(raw))
    return seqs, np.asarray([classes.index(x) for x in raw], dtype=np.int64), names

