"""Random access to a reference genome: FASTA (plain, BGZF or plain gzip) via pyfaidx, or sequences in memory.

Coordinates are 0-based half-open everywhere; ``strand="-"`` returns the reverse complement.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from titans_dna.data.atomic import atomic_path
from titans_dna.data.fasta import FastaFormatError, check_fasta_start, compression, first_line, open_text
from titans_dna.data.paths import cache_dir
from titans_dna.data.tokenizer import encode, reverse_complement, reverse_complement_ids

log = logging.getLogger(__name__)


def _cache_key(path: Path) -> str:
    # Path + size + mtime: a changed file gets a fresh cache entry instead of a stale one.
    stat = path.stat()
    text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def decompressed_copy(path: str | os.PathLike) -> Path:
    """Decompress a plain-gzip FASTA into the cache once (pyfaidx cannot seek in plain gzip) and return it."""
    path = Path(path)
    target = cache_dir("decompressed") / f"{_cache_key(path)}-{path.name.removesuffix('.gz')}"
    if not target.exists():
        log.info("%s is plain gzip (not BGZF); decompressing once into %s", path, target)
        with atomic_path(target) as tmp, gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 22)
    return target


def _writable(folder: Path) -> bool:
    # os.access says yes to root everywhere; a folder whose mode has no write bit is read-only by intent.
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _index_paths(fasta: Path, bgzf: bool) -> tuple[Path, Path | None]:
    """Where .fai (and for BGZF .gzi) go: beside the file, or in the cache if its folder is read-only."""
    fai, gzi = Path(f"{fasta}.fai"), (Path(f"{fasta}.gzi") if bgzf else None)
    fresh = fai.exists() and fai.stat().st_mtime >= fasta.stat().st_mtime and (gzi is None or gzi.exists())
    if fresh or _writable(fasta.parent):
        return fai, gzi
    stem = cache_dir("fai") / f"{_cache_key(fasta)}-{fasta.name}"
    return Path(f"{stem}.fai"), (Path(f"{stem}.gzi") if bgzf else None)


def resolve_record(records: Mapping[str, int], name: str, where: str) -> str:
    """The key of ``records`` for ``name``, allowing UCSC/Ensembl aliases (chr16 <-> 16, chrM <-> MT).

    Raises ``KeyError`` naming ``where`` and a few of its records when nothing matches.
    """
    if name in records:
        return name
    bare = name[3:] if name.startswith("chr") else name
    for alias in (bare, f"chr{bare}", "MT" if bare == "M" else "", "chrM" if bare == "MT" else ""):
        if alias and alias in records:
            return alias
    shown = ", ".join(list(records)[:5]) + (", ..." if len(records) > 5 else "")
    raise KeyError(f"{where}: no record named '{name}' (records: {shown})")


class Genome:
    """Named sequences with random access.

    Args:
        source: a FASTA path (plain, BGZF, or plain gzip, which is decompressed once into the cache), or a
            mapping ``{name: sequence}`` (tests, small in-memory references).
        read_ahead: pyfaidx read-ahead buffer in bases (speeds up many small nearby fetches).

    Attributes:
        path: the FASTA path (None in memory); records: ``{name: length}`` in file order.
    """

    def __init__(self, source: str | os.PathLike | Mapping[str, str], read_ahead: int | None = None):
        self._read_ahead = read_ahead
        self._faidx = None
        self._pid = os.getpid()
        if isinstance(source, Mapping):
            self.path = None
            self._memory = dict(source)
            self.records = {name: len(seq) for name, seq in self._memory.items()}
        else:
            self.path = Path(source)
            self._memory = None
            self.records = self._open()
        if not self.records:
            raise FastaFormatError(f"{self.name}: no sequence records")

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "<memory>"

    def _open(self) -> dict[str, int]:
        import pyfaidx

        path = self.path
        with open_text(path) as handle:  # FileNotFoundError / empty / no '>' with our own message
            line, number = first_line(handle, str(path))
            check_fasta_start(line, number, str(path))
        kind = compression(path)
        readable = decompressed_copy(path) if kind == "gzip" else path
        fai, gzi = _index_paths(readable, kind == "bgzf")
        existed = {p: p.exists() for p in (fai, gzi) if p is not None}
        try:
            self._faidx = pyfaidx.Faidx(
                str(readable),
                indexname=str(fai),
                gzi_indexname=str(gzi) if gzi else None,
                read_ahead=self._read_ahead,
                sequence_always_upper=False,
            )
        except (pyfaidx.FastaIndexingError, ValueError, UnicodeDecodeError) as err:
            for index_file, was_there in existed.items():  # leave no half-built index behind
                if not was_there:
                    index_file.unlink(missing_ok=True)
            raise FastaFormatError(self._explain(err)) from err
        return {name: int(rec.rlen) for name, rec in self._faidx.index.items()}

    def _explain(self, err: Exception) -> str:
        text = str(err)
        if text.startswith("Duplicate key"):
            return f"{self.path}: duplicate record name {text.split(' ', 2)[2]}; record names must be unique"
        if "not consistent" in text:
            return (
                f"{self.path}: {text} pyfaidx needs equal-width sequence lines; re-wrap the file "
                "(e.g. `seqkit seq -w 60`) or read it with iter_records (no random access)"
            )
        if isinstance(err, UnicodeDecodeError):
            return f"{self.path}: non-ASCII byte at byte offset {err.start} of a line"
        return f"{self.path}: cannot index FASTA: {text}"

    # pyfaidx holds an open file: a copy sent to a DataLoader worker reopens its own on first fetch.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_faidx"] = None
        return state

    def __contains__(self, name: object) -> bool:
        return name in self.records

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[str]:
        return iter(self.records)

    def resolve(self, name: str) -> str:
        """The record name for ``name``, allowing UCSC/Ensembl aliases; see :func:`resolve_record`."""
        return resolve_record(self.records, name, self.name)

    def _check(self, chrom: str, start: int, end: int, strand: str) -> None:
        if strand not in ("+", "-"):
            raise ValueError(f"strand must be '+' or '-', got {strand!r}")
        length = self.records[chrom]
        if not 0 <= start <= end <= length:
            raise ValueError(
                f"{self.name}: interval {chrom}:{start}-{end} is outside the record (0-based half-open, "
                f"length {length})"
            )

    def fetch(self, chrom: str, start: int, end: int, strand: str = "+") -> str:
        """Sequence of ``chrom[start:end]`` (0-based half-open), case kept; reverse complement for ``"-"``."""
        chrom = self.resolve(chrom)
        self._check(chrom, start, end, strand)
        if start == end:
            return ""
        if self._memory is not None:
            seq = self._memory[chrom][start:end]
        else:
            # closed, unpickled in a spawned worker, or inherited by a forked one (a shared BGZF handle
            # gives corrupt reads when two processes seek it)
            if self._faidx is None or self._pid != os.getpid():
                self._faidx, self._pid = None, os.getpid()
                self._open()
            seq = self._faidx.fetch(chrom, start + 1, end).seq
        return reverse_complement(seq) if strand == "-" else seq

    def fetch_ids(self, chrom: str, start: int, end: int, strand: str = "+") -> tuple[np.ndarray, np.ndarray]:
        """Token ids uint8 [end - start] and soft-mask bool [end - start] of an interval.

        Invalid characters raise ``InvalidSequenceError`` with the 1-based position inside the record.
        """
        chrom = self.resolve(chrom)
        self._check(chrom, start, end, strand)
        ids, mask = encode(self.fetch(chrom, start, end), self.name, chrom, offset=start)
        if strand == "-":
            return reverse_complement_ids(ids), mask[::-1].copy()
        return ids, mask

    def close(self) -> None:
        if self._faidx is not None:
            self._faidx.close()
            self._faidx = None

    def __enter__(self) -> Genome:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
