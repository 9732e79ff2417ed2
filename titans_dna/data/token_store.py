"""A flat memory-mapped token store: a whole genome's ids in one ``.npy`` for very fast window sampling.

Layout: ``<name>.npy`` holds uint8 ``id | soft_mask << 7`` for all records back to back (ids are < 16, so
bit 7 is free), and ``<name>.json`` holds the record names, offsets and lengths, the tokenizer version and the
sha256 of the source files. A window is a slice of the memory map: no parsing, no decompression.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from titans_dna.data.atomic import atomic_path, atomic_write_text
from titans_dna.data.decontaminate import OverlapReport, labelled_kmers, overlap_mask, sequences_sharing_kmers
from titans_dna.data.fasta import iter_records
from titans_dna.data.genome import resolve_record
from titans_dna.data.tokenizer import N_ID, TOKENIZER_VERSION, encode, reverse_complement_ids

_MASK_BIT, _ID_BITS = np.uint8(0x80), np.uint8(0x7F)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (as stored, compressed or not)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_token_store(
    fasta_paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    exclude_sequences: Sequence[str] | None = None,
) -> TokenStore:
    """Tokenise every record of ``fasta_paths`` into ``out`` (.npy) plus its ``.json`` index, atomically.

    Any reader of `iter_records` works (plain/gzip/BGZF FASTA, GenBank, EMBL). Record names must be unique
    across files. Returns the opened store.

    Args:
        exclude_sequences: labelled sequences to keep out of pretraining: genome bases covered by a 32-mer
            shared with any of them (either strand) are stored as N; the counts go into the index under
            ``decontamination``.
    """
    out = Path(out).with_suffix(".npy")
    records, names, offset = [], set(), 0
    exclude = labelled_kmers(exclude_sequences) if exclude_sequences else None
    masked, matched = 0, []
    with tempfile.TemporaryFile(dir=out.parent if out.parent.exists() else None) as raw:
        for path in fasta_paths:
            for name, seq in iter_records(path):
                if name in names:
                    raise ValueError(f"{path}: record '{name}' already read from an earlier file")
                names.add(name)
                ids, mask = encode(seq, str(path), name)
                if exclude is not None:
                    overlap, found = overlap_mask(ids, exclude)
                    ids[overlap] = N_ID
                    masked += int(overlap.sum())
                    matched.append(found)
                raw.write((ids | (mask.view(np.uint8) << 7)).tobytes())
                records.append({"name": name, "offset": offset, "length": int(ids.size)})
                offset += int(ids.size)
        raw.seek(0)
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            header = {"descr": "|u1", "fortran_order": False, "shape": (offset,)}
            np.lib.format.write_array_header_2_0(fh, header)
            shutil.copyfileobj(raw, fh, length=1 << 22)
    meta = {
        "tokenizer_version": TOKENIZER_VERSION,
        "records": records,
        "sources": {str(p): sha256_file(p) for p in fasta_paths if str(p) != "-"},
        "encoding": "uint8 id | soft_mask << 7",
    }
    if exclude is not None:
        found = np.unique(np.concatenate(matched)) if matched else np.zeros(0, np.uint64)
        meta["decontamination"] = asdict(OverlapReport(
            masked_bases=masked,
            labelled_sequences=len(exclude_sequences),
            sequences_hit=sequences_sharing_kmers(exclude_sequences, found),
        ))
    atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=1))
    return TokenStore(out)


class TokenStore:
    """Read side of `build_token_store`; implements the `SequenceSource` protocol used by `WindowDataset`.

    Attributes:
        records: ``{name: length}``; offsets: ``{name: offset into the flat array}``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).with_suffix(".npy")
        self.name = str(self.path)
        meta_path = self.path.with_suffix(".json")
        for needed in (self.path, meta_path):
            if not needed.exists():
                raise FileNotFoundError(
                    f"{needed}: token store file missing (build it with build_token_store)"
                )
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("tokenizer_version") != TOKENIZER_VERSION:
            raise ValueError(
                f"{self.path}: built with tokenizer {self.meta.get('tokenizer_version')!r}, this package "
                f"uses "
                f"{TOKENIZER_VERSION!r}; rebuild the store"
            )
        self.records = {r["name"]: int(r["length"]) for r in self.meta["records"]}
        self.offsets = {r["name"]: int(r["offset"]) for r in self.meta["records"]}
        self._data: np.ndarray | None = None
        total = sum(self.records.values())
        if self.data.shape != (total,):
            raise ValueError(f"{self.path}: holds {self.data.shape[0]} tokens but its index lists {total}")

    @property
    def data(self) -> np.ndarray:
        """The flat uint8 memory map (opened lazily, so a pickled copy in a worker maps its own)."""
        if self._data is None:
            self._data = np.load(self.path, mmap_mode="r")
        return self._data

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data": None}

    def resolve(self, name: str) -> str:
        return resolve_record(self.records, name, self.name)

    def fetch_ids(self, chrom: str, start: int, end: int, strand: str = "+") -> tuple[np.ndarray, np.ndarray]:
        """Ids uint8 [end - start] and soft-mask bool [end - start]; 0-based half-open, '-' reverse
        complemented."""
        chrom = self.resolve(chrom)
        length = self.records[chrom]
        if not 0 <= start <= end <= length or strand not in ("+", "-"):
            raise ValueError(f"{self.name}: bad interval {chrom}:{start}-{end} ({strand}); length {length}")
        raw = self.data[self.offsets[chrom] + start : self.offsets[chrom] + end]
        ids, mask = raw & _ID_BITS, raw >= _MASK_BIT
        if strand == "-":
            return reverse_complement_ids(ids), mask[::-1].copy()
        return ids, mask

    def sample(self, n: int, window: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` random windows at once, records weighted by their number of window positions.

        Returns ``input_ids`` uint8 [n, window], ``soft_mask`` bool [n, window], ``record`` int [n] (index
        into ``records``), ``start`` int64 [n]. The fast path for pretraining loops.
        """
        lengths = np.array(list(self.records.values()), dtype=np.int64)
        offsets = np.array(list(self.offsets.values()), dtype=np.int64)
        positions = np.maximum(lengths - window + 1, 0)
        if positions.sum() == 0:
            raise ValueError(f"{self.name}: no record is at least {window} tokens long")
        cum = np.cumsum(positions)
        pos = rng.integers(cum[-1], size=n)
        record = np.searchsorted(cum, pos, side="right")
        start = pos - (cum[record] - positions[record])
        # A strided view of all windows, indexed by row: one memcpy per window, no [n, L] index array.
        raw = np.lib.stride_tricks.sliding_window_view(self.data, window)[offsets[record] + start]
        return {
            "input_ids": raw & _ID_BITS,
            "soft_mask": raw >= _MASK_BIT,
            "record": record,
            "start": start,
        }
