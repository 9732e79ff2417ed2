"""Pretraining data from a ``data/`` config: the genome (FASTA files or a token store), training regions
with the validation ranges cut out (or BED splits), and the train / validation window datasets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset, Subset

from titans_dna.data.bed import Interval, SequenceSource, check_intervals, read_bed
from titans_dna.data.genome import Genome
from titans_dna.data.token_store import TokenStore
from titans_dna.data.windows import GenomeCollection, WindowDataset
from titans_dna.train.configs import data_path


def build_source(cfg: DictConfig) -> SequenceSource:
    """``data.store`` (a token store from ``titans-dna preprocess``) when set, else the ``data.genomes``
    FASTA files as one collection (record names must be unique across files)."""
    if cfg.data.get("store"):
        return TokenStore(data_path(cfg, cfg.data.store))
    if not cfg.data.genomes:
        raise ValueError("data.genomes is empty and data.store is not set: nothing to pretrain on")
    return GenomeCollection([Genome(data_path(cfg, p)) for p in cfg.data.genomes])


def subtract(records: dict[str, int], holdout: Sequence[Interval]) -> list[Interval]:
    """Whole records minus the held-out intervals: what is left to train on, as intervals."""
    left = []
    for chrom, length in records.items():
        cuts = sorted((iv.start, iv.end) for iv in holdout if iv.chrom == chrom)
        start = 0
        for cut_start, cut_end in cuts:
            if cut_start > start:
                left.append(Interval(chrom, start, cut_start))
            start = max(start, cut_end)
        if start < length:
            left.append(Interval(chrom, start, length))
    return left


def split_regions(cfg: DictConfig, source: SequenceSource) -> tuple[list[Interval], list[Interval]]:
    """Training and validation regions: BED splits when ``data.bed`` is set, else whole records minus
    ``data.valid_regions`` (which become the validation regions)."""
    data = cfg.data
    if data.get("bed"):
        bed = data_path(cfg, data.bed)
        as_list = lambda s: list(s) if isinstance(s, Sequence) and not isinstance(s, str) else s  # noqa: E731
        train = check_intervals(
            read_bed(bed, split=as_list(data.train_split)), source, str(bed), drop_missing=True
        )
        valid = check_intervals(
            read_bed(bed, split=as_list(data.valid_split)), source, str(bed), drop_missing=True
        )
        return train, valid
    valid = [Interval(r["contig"], int(r["start"]), int(r["end"])) for r in data.valid_regions or []]
    valid = check_intervals(valid, source, "data.valid_regions")
    if not valid:
        raise ValueError(
            "no validation data: set data.valid_regions (held-out ranges) or data.bed with a valid split"
        )
    return subtract(source.records, valid), valid


class EpochIndexed(Dataset):
    """A ``WindowDataset`` addressed by ``(epoch, index)`` pairs (what :class:`ShardedSampler` yields), so
    every item carries its own epoch into DataLoader worker processes."""

    def __init__(self, windows: WindowDataset):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        self.windows.set_epoch(epoch)
        return self.windows[index]


def build_datasets(cfg: DictConfig) -> tuple[WindowDataset, Dataset]:
    """Training windows (random, length-weighted, about one pass over the training bases per epoch, with
    N filter and reverse-complement augmentation) and a fixed validation set (``data.valid_windows``
    evenly spaced tiles of the validation regions, forward strand, no augmentation)."""
    data = cfg.data
    source = build_source(cfg)
    train_regions, valid_regions = split_regions(cfg, source)
    window = int(data.window_length)
    train_bases = sum(len(r) for r in train_regions)
    train = WindowDataset(
        source,
        window,
        regions=train_regions,
        num_windows=max(1, train_bases // window),
        max_n=float(data.max_n_fraction),
        rc_prob=float(data.rc_prob),
        seed=int(cfg.seed),
    )
    valid_tiles = WindowDataset(
        source,
        window,
        regions=valid_regions,
        num_windows=None,
        random_offset=False,
        max_n=float(data.max_n_fraction),
        rc_prob=0.0,
        seed=int(cfg.seed),
    )
    count = min(int(data.valid_windows), len(valid_tiles))
    picks = torch.linspace(0, len(valid_tiles) - 1, count).round().long().unique().tolist()
    return train, Subset(valid_tiles, picks)
