"""Streaming sequence readers: FASTA (plain, gzip, BGZF, stdin) and GenBank/EMBL through Biopython.

`iter_records` is the one reader every CLI command uses for files that need not be random-accessed; `Genome`
(genome.py) indexes FASTA through pyfaidx when random access is needed.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

FASTA_SUFFIXES = {".fa", ".fasta", ".fna", ".fas", ".ffn", ".frn", ".fsa", ".mfa", ".seq"}
GENBANK_SUFFIXES = {".gb", ".gbk", ".gbff", ".genbank"}
EMBL_SUFFIXES = {".embl", ".emb"}
FORMATS = ("fasta", "genbank", "embl")
_GZIP_MAGIC = b"\x1f\x8b"

Source = str | os.PathLike | IO


class FastaFormatError(ValueError):
    """A malformed sequence file; the message names the file and the record or line."""


def source_name(source: Source) -> str:
    """Printable name of a path or handle (``-`` and stdin show as ``<stdin>``)."""
    if isinstance(source, (str, os.PathLike)):
        return "<stdin>" if str(source) == "-" else str(source)
    return str(getattr(source, "name", "<stream>"))


def compression(path: str | os.PathLike) -> str | None:
    """``"bgzf"``, ``"gzip"`` or ``None`` from the file's magic bytes (never from its name).

    BGZF is gzip whose first member carries the ``BC`` extra subfield (SAM/BAM spec, section 4.1).
    """
    with open(path, "rb") as fh:
        head = fh.read(18)
    if head[:2] != _GZIP_MAGIC:
        return None
    has_extra = len(head) >= 14 and head[3] & 4
    return "bgzf" if has_extra and head[12:14] == b"BC" else "gzip"


def format_from_suffix(name: str) -> str | None:
    """``fasta``/``genbank``/``embl`` from a file name (``.gz`` ignored), or None."""
    suffixes = [s.lower() for s in Path(name).suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bgz", ".gzip"):
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    for fmt, known in (("fasta", FASTA_SUFFIXES), ("genbank", GENBANK_SUFFIXES), ("embl", EMBL_SUFFIXES)):
        if last in known:
            return fmt
    return None


def _sniff_format(first_line: str) -> str | None:
    if first_line.startswith((">", ";")):
        return "fasta"
    if first_line.startswith("LOCUS"):
        return "genbank"
    if first_line.startswith("ID "):
        return "embl"
    return None


class _ProgressReader(io.RawIOBase):
    """Counts the (compressed) bytes read from a file into a tqdm bar: progress for any format."""

    def __init__(self, raw: IO[bytes], bar):
        self._raw, self._bar = raw, bar

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._raw.readinto(buffer)
        self._bar.update(count or 0)
        return count


@contextlib.contextmanager
def open_text(source: Source, progress: bool = False) -> Iterator[IO[str]]:
    """Open a path, ``-`` (stdin) or a handle as text, gunzipping when the bytes start with the gzip magic.

    Text is decoded as latin-1 so every byte is one character: a stray byte is reported at its exact
    position by the tokenizer instead of failing the decoder. CRLF becomes LF (universal newlines).
    ``progress`` shows a tqdm bar of the file's bytes on stderr (only when stderr is a terminal).
    """
    with contextlib.ExitStack() as stack:
        if isinstance(source, (str, os.PathLike)) and str(source) != "-":
            path = Path(source)
            if not path.exists():
                raise FileNotFoundError(f"{path}: no such file")
            if path.is_dir():
                raise FastaFormatError(f"{path}: is a folder, expected a sequence file")
            raw: IO[bytes] = stack.enter_context(open(path, "rb"))
            if progress:
                from tqdm import tqdm

                bar = stack.enter_context(
                    tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name, disable=None)
                )
                raw = io.BufferedReader(_ProgressReader(raw, bar), buffer_size=1 << 20)
        else:
            handle = sys.stdin if isinstance(source, (str, os.PathLike)) else source
            if isinstance(handle, io.TextIOBase):
                if not hasattr(handle, "buffer"):  # an in-memory text handle (StringIO)
                    yield handle
                    return
                handle = handle.buffer
            raw = handle
        if not hasattr(raw, "peek"):
            raw = io.BufferedReader(raw)
        if raw.peek(2)[:2] == _GZIP_MAGIC:
            raw = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
        yield stack.enter_context(io.TextIOWrapper(raw, encoding="latin-1", newline=None))


def first_line(handle: IO[str], name: str) -> tuple[str, int]:
    """Return the first non-blank line and its 1-based number; ``FastaFormatError`` if the file is empty."""
    for number, line in enumerate(handle, start=1):
        if line.strip():
            return line, number
    raise FastaFormatError(f"{name}: empty file (no sequence records)")


def check_fasta_start(line: str, number: int, name: str) -> None:
    """Refuse a FASTA whose first non-blank line is not a ``>`` header (or a ``;`` comment)."""
    if not line.startswith((">", ";")):
        shown = line.rstrip("\r\n")[:40]
        raise FastaFormatError(
            f"{name}: line {number}: expected a '>' header, found {shown!r}; not a FASTA file "
            f"(GenBank/EMBL: pass --format genbank|embl)"
        )


def _counted(lines: Iterable[str], header_lines: list[int], start: int) -> Iterator[str]:
    # Remember header line numbers so errors can name them; Biopython's parser does not.
    for number, line in enumerate(lines, start=start):
        if line.startswith(">"):
            header_lines.append(number)
        yield line


def _fasta_records(handle: IO[str], first: str, first_number: int, name: str) -> Iterator[tuple[str, str]]:
    from Bio.SeqIO.FastaIO import SimpleFastaParser

    check_fasta_start(first, first_number, name)
    header_lines: list[int] = []
    seen: dict[str, int] = {}
    lines = _counted(_chain(first, handle), header_lines, first_number)
    for index, (title, seq) in enumerate(SimpleFastaParser(lines)):
        line = header_lines[index]
        record_id = title.split(maxsplit=1)[0] if title.strip() else ""
        if not record_id:
            raise FastaFormatError(f"{name}: line {line}: header has no record name")
        if record_id in seen:
            raise FastaFormatError(
                f"{name}: line {line}: duplicate record name '{record_id}' (first at line "
                f"{seen[record_id]}); record names (the first word of each header) must be unique"
            )
        seen[record_id] = line
        yield record_id, seq


def _chain(first: str, rest: Iterable[str]) -> Iterator[str]:
    yield first
    yield from rest


def iter_records(source: Source, fmt: str | None = None, progress: bool = False) -> Iterator[tuple[str, str]]:
    """Stream ``(record_id, sequence)`` pairs from FASTA, GenBank or EMBL, gzip or plain, file or stdin.

    Args:
        source: a path, ``"-"`` for stdin, or an open handle (text or binary).
        fmt: ``"fasta"``, ``"genbank"`` or ``"embl"``; None guesses from the extension (``.fa``, ``.gb``,
            ``.embl``, with or without ``.gz``), then from the first line.
        progress: a progress bar over the file's bytes (paths only; shown when stderr is a terminal).

    Yields:
        The record id (first word of the header / the GenBank accession.version) and its sequence, case kept
        (lowercase = soft-masked).

    Raises:
        FileNotFoundError: missing file. FastaFormatError: empty file, no ``>`` header, duplicate or empty
        record names (the message names the file and line).
    """
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown sequence format {fmt!r}; choose one of {', '.join(FORMATS)}")
    name = source_name(source)
    with open_text(source, progress) as handle:
        first, number = first_line(handle, name)
        fmt = fmt or format_from_suffix(name) or _sniff_format(first) or "fasta"
        if fmt == "fasta":
            yield from _fasta_records(handle, first, number, name)
            return
        from Bio import SeqIO

        seen: set[str] = set()
        # GenBank/EMBL files are small next to genomes: read them whole, with the first line put back.
        for record in SeqIO.parse(io.StringIO(first + handle.read()), fmt):
            if record.id in seen:
                raise FastaFormatError(f"{name}: duplicate record name '{record.id}' (ids must be unique)")
            seen.add(record.id)
            yield record.id, str(record.seq)
        if not seen:
            raise FastaFormatError(f"{name}: no {fmt} records found")
