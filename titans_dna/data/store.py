"""HDF5 token store of fixed-length windows (``titans-dna preprocess``) and the dataset that trains from it.

Layout of the file (n windows of L tokens):
  ``input_ids`` uint8 [n, L] (PAD after the end of a short padded window), ``soft_mask`` bool [n, L],
  ``length`` int32 [n], ``chrom_index`` int32 [n] (into the ``chroms`` attribute), ``start`` int64 [n],
  ``strand`` S1 [n]; attributes ``tokenizer_version``, ``window``, ``chroms``, ``sources`` (JSON
  {path: sha256}), ``config`` (JSON of the preprocess arguments) and the skip counts.
Datasets are chunked by about 16 KiB of rows and gzip-compressed; the file appears atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from torch.utils.data import Dataset

from titans_dna.data.atomic import atomic_path
from titans_dna.data.bed import Interval, SequenceSource, check_intervals, read_bed
from titans_dna.data.genome import Genome
from titans_dna.data.token_store import sha256_file
from titans_dna.data.tokenizer import N_ID, TOKENIZER_VERSION, reverse_complement_ids
from titans_dna.data.windows import GenomeCollection, ItemRandom, WindowDataset, make_item, whole_records

Window = tuple[np.ndarray, np.ndarray, str, int, str]  # ids [<=L], soft_mask [<=L], chrom, start, strand
_BATCH = 1024


@dataclass
class PreprocessSummary:
    """What `preprocess` wrote and what it left out."""

    path: str
    windows: int
    skipped_short: int
    dropped_n: int
    window: int


def write_windows_h5(
    out: str | os.PathLike,
    windows: Iterable[Window],
    window: int,
    attrs: dict | Callable[[], dict] | None = None,
) -> int:
    """Write ``windows`` into an HDF5 token store at ``out`` atomically; returns the number written.

    Windows shorter than ``window`` are right-padded with PAD (their true size goes to ``length``).
    ``attrs`` (or a callable returning them, called after the last window) become file attributes.
    """
    rows = max(1, (16 * 1024) // window)  # ~16 KiB chunks: cheap to decompress for one random row
    chroms: dict[str, int] = {}
    count = 0
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as h5:
        opts = {"chunks": (rows, window), "compression": "gzip", "compression_opts": 4}
        ids_ds = h5.create_dataset("input_ids", (0, window), np.uint8, maxshape=(None, window), **opts)
        mask_ds = h5.create_dataset("soft_mask", (0, window), bool, maxshape=(None, window), **opts)
        meta = {
            name: h5.create_dataset(name, (0,), dtype, maxshape=(None,), chunks=(4096,))
            for name, dtype in (
                ("length", np.int32),
                ("chrom_index", np.int32),
                ("start", np.int64),
                ("strand", "S1"),
            )
        }
        for batch in _batched(windows, _BATCH):
            ids = np.full((len(batch), window), 4, dtype=np.uint8)  # PAD_ID
            mask = np.zeros((len(batch), window), dtype=bool)
            for row, (w_ids, w_mask, *_) in enumerate(batch):
                ids[row, : w_ids.size], mask[row, : w_mask.size] = w_ids, w_mask
            columns = {
                "length": [w[0].size for w in batch],
                "chrom_index": [chroms.setdefault(w[2], len(chroms)) for w in batch],
                "start": [w[3] for w in batch],
                "strand": [w[4].encode() for w in batch],
            }
            new = count + len(batch)
            for ds, values in ((ids_ds, ids), (mask_ds, mask)):
                ds.resize(new, axis=0)
                ds[count:new] = values
            for name, values in columns.items():
                meta[name].resize(new, axis=0)
                meta[name][count:new] = np.asarray(values, dtype=meta[name].dtype)
            count = new
        if count == 0:
            raise ValueError(f"{out}: no windows to write (all skipped or filtered); nothing written")
        h5.attrs.update(
            {"tokenizer_version": TOKENIZER_VERSION, "window": window, "chroms": json.dumps(list(chroms))}
        )
        h5.attrs.update((attrs() if callable(attrs) else attrs) or {})
    return count


def _batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _tiles(
    source: SequenceSource,
    regions: Sequence[Interval],
    window: int,
    stride: int,
    max_n: float,
    short: str,
    counts: dict,
) -> Iterator[Window]:
    """Windows every ``stride`` bases over each region; each region is read once and sliced."""
    for iv in regions:
        ids, mask = source.fetch_ids(iv.chrom, iv.start, iv.end)
        if ids.size < window:
            if short == "skip":
                counts["skipped_short"] += 1
                continue
            starts = [0]
        else:
            starts = range(0, ids.size - window + 1, stride)
        for off in starts:
            w_ids, w_mask = ids[off : off + window], mask[off : off + window]
            if np.count_nonzero(w_ids == N_ID) > max_n * w_ids.size:
                counts["dropped_n"] += 1
                continue
            if iv.strand == "-":  # strand-specific BED intervals are stored as the molecule reads
                w_ids, w_mask = reverse_complement_ids(w_ids), w_mask[::-1]
            yield w_ids, w_mask, iv.chrom, iv.start + off, iv.strand


def preprocess(
    fasta_paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    window: int,
    bed: str | os.PathLike | None = None,
    split: str | Sequence[str] | None = None,
    split_column: int = 4,
    max_n: float = 0.1,
    stride: int | None = None,
    num_windows: int | None = None,
    seed: int = 0,
    short: str = "skip",
    drop_missing: bool = False,
) -> PreprocessSummary:
    """Tokenise windows of a genome into an HDF5 token store (see the module docstring for the layout).

    Args:
        fasta_paths: FASTA files (plain, BGZF or plain gzip); record names unique across them.
        out: the ``.h5`` path (written atomically: nothing is left behind on error).
        window: L, tokens per window.
        bed, split, split_column, drop_missing: restrict to BED intervals of some splits (see `read_bed`,
            `check_intervals`); None uses whole records.
        max_n: drop windows with a larger fraction of N.
        stride: tile every region with this step (default ``window``: adjacent tiles). Ignored when
            ``num_windows`` is given, which samples that many random windows (seeded by ``seed``).
        short: regions shorter than ``window``: ``"skip"`` (counted) or ``"pad"``.
    """
    if stride is not None and stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if not Path(out).parent.exists():
        raise FileNotFoundError(f"output folder {Path(out).parent} does not exist")
    genomes = [Genome(p) for p in fasta_paths]
    source = genomes[0] if len(genomes) == 1 else GenomeCollection(genomes)
    regions = (
        check_intervals(read_bed(bed, split, split_column), source, str(bed), drop_missing)
        if bed is not None
        else whole_records(source)
    )
    counts = {"skipped_short": 0, "dropped_n": 0}
    if num_windows is not None:
        dataset = WindowDataset(
            source, window, regions, num_windows, max_n=max_n, rc_prob=0.0, short=short, seed=seed
        )
        counts["skipped_short"] = dataset.num_short
        windows: Iterable[Window] = (dataset.window_arrays(i) for i in range(len(dataset)))
    else:
        windows = _tiles(source, regions, window, stride or window, max_n, short, counts)
    config = {
        "window": window,
        "bed": str(bed) if bed else None,
        "split": split,
        "split_column": split_column,
        "max_n": max_n,
        "stride": stride,
        "num_windows": num_windows,
        "seed": seed,
        "short": short,
    }
    sources = json.dumps({str(p): sha256_file(p) for p in fasta_paths})
    # A callable: the skip counts are known only once the window generator is exhausted.
    written = write_windows_h5(
        out, windows, window, lambda: {"sources": sources, "config": json.dumps(config)} | counts
    )
    return PreprocessSummary(str(out), written, counts["skipped_short"], counts["dropped_n"], window)


class H5WindowDataset(Dataset):
    """Windows from a `preprocess` HDF5 file; the file is opened lazily once per process (DataLoader workers).

    Args:
        path: the ``.h5`` file.
        rc_prob: reverse-complement augmentation probability (deterministic in ``(seed, epoch, index)``).

    Items: the same dict as `WindowDataset` (``input_ids``, ``soft_mask``, ``attention_mask``, ``chrom``,
    ``start``, ``strand``).
    """

    def __init__(self, path: str | os.PathLike, rc_prob: float = 0.0, seed: int = 0):
        self.path, self.rc_prob, self.seed, self.epoch = str(path), rc_prob, seed, 0
        with h5py.File(self.path, "r") as h5:
            version = h5.attrs.get("tokenizer_version")
            if version != TOKENIZER_VERSION:
                raise ValueError(f"{path}: tokenizer {version!r} != {TOKENIZER_VERSION!r}; preprocess again")
            self.window = int(h5.attrs["window"])
            self.chroms = json.loads(h5.attrs["chroms"])
            self._len = int(h5["input_ids"].shape[0])
            self.attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in h5.attrs.items()}
        self._h5: h5py.File | None = None
        self._meta: dict[str, np.ndarray] | None = None
        self._tokens: tuple[h5py.Dataset, h5py.Dataset] | None = None
        self._pid = -1

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_h5": None, "_pid": -1, "_meta": None, "_tokens": None}

    def _open(self) -> tuple[h5py.Dataset, h5py.Dataset, dict[str, np.ndarray]]:
        if self._h5 is None or self._pid != os.getpid():  # h5py handles must not cross a fork
            self._h5, self._pid = h5py.File(self.path, "r"), os.getpid()
            # Per-window metadata is a few bytes a row: hold it in memory, read only the tokens per item.
            self._meta = {name: self._h5[name][:] for name in ("length", "chrom_index", "start", "strand")}
            self._tokens = (self._h5["input_ids"], self._h5["soft_mask"])  # group lookups are slow per item
        return (*self._tokens, self._meta)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self._len:
            raise IndexError(f"window index {index} out of range [0, {self._len})")
        ids_ds, mask_ds, _ = self._open()
        return self._item(index, ids_ds[index], mask_ds[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """A batch in one read per dataset (DataLoader calls this when present): far fewer h5py calls."""
        rows = np.unique(np.asarray(indices, dtype=np.int64))  # h5py wants increasing, unique indices
        if rows.size and (rows[0] < 0 or rows[-1] >= self._len):
            raise IndexError(f"window indices must lie in [0, {self._len})")
        ids_ds, mask_ds, _ = self._open()
        ids, mask = ids_ds[rows], mask_ds[rows]
        where = {int(index): row for row, index in enumerate(rows)}
        return [self._item(int(i), ids[where[int(i)]], mask[where[int(i)]]) for i in indices]

    def _item(self, index: int, ids: np.ndarray, mask: np.ndarray) -> dict:
        meta = self._meta
        n = int(meta["length"][index])
        ids, mask = ids[:n], mask[:n]
        strand = meta["strand"][index].decode()
        if self.rc_prob and ItemRandom(self.seed, self.epoch, index).random() < self.rc_prob:
            ids, mask, strand = reverse_complement_ids(ids), mask[::-1], "-" if strand == "+" else "+"
        chrom = self.chroms[int(meta["chrom_index"][index])]
        return make_item(ids, mask, chrom, int(meta["start"][index]), strand, self.window)
