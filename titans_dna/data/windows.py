"""Pretraining windows of length L from a genome: random windows weighted by length, or tiles of intervals.

Item ``i`` of epoch ``e`` depends only on ``(seed, e, i)``, so a run is reproducible whatever the number of
DataLoader workers or ranks and the order they ask in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from titans_dna.data.bed import Interval, SequenceSource
from titans_dna.data.tokenizer import N_ID, PAD_ID, reverse_complement_ids

log = logging.getLogger(__name__)


_MASK64 = (1 << 64) - 1


class ItemRandom:
    """A counter-based generator for one item: splitmix64 over ``(seed, epoch, index, ...)``.

    Creating a numpy Generator per item costs ~20 us (SeedSequence hashing), more than fetching a window
    from a memory map; this costs ~1 us and gives the same property: draws depend only on the key.
    """

    def __init__(self, *key: int):
        state = 0x9E3779B97F4A7C15
        for part in key:
            state = self._mix(state ^ (int(part) & _MASK64))
        self._state = state

    @staticmethod
    def _mix(x: int) -> int:
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        return x ^ (x >> 31)

    def _next(self) -> int:
        self._state = self._mix(self._state)
        return self._state

    def integers(self, high: int) -> int:
        """Uniform integer in [0, high) (modulo bias < high / 2**64, negligible for genome sizes)."""
        return self._next() % int(high)

    def random(self) -> float:
        """Uniform float in [0, 1)."""
        return (self._next() >> 11) / float(1 << 53)


class GenomeCollection:
    """Several sources (e.g. one FASTA per chromosome) seen as one; record names must be unique over all."""

    def __init__(self, sources: Sequence[SequenceSource]):
        self.sources = list(sources)
        self.name = " + ".join(s.name for s in self.sources)
        self.records: dict[str, int] = {}
        self._owner: dict[str, SequenceSource] = {}
        for src in self.sources:
            for chrom, length in src.records.items():
                if chrom in self._owner:
                    raise ValueError(
                        f"record '{chrom}' appears in both {self._owner[chrom].name} and {src.name}"
                    )
                self.records[chrom], self._owner[chrom] = length, src

    def resolve(self, name: str) -> str:
        if name in self.records:
            return name
        errors = []
        for src in self.sources:
            try:
                return src.resolve(name)
            except KeyError as err:
                errors.append(str(err).strip("'\""))
        raise KeyError("; ".join(errors))

    def fetch_ids(self, chrom: str, start: int, end: int, strand: str = "+") -> tuple[np.ndarray, np.ndarray]:
        chrom = self.resolve(chrom)
        return self._owner[chrom].fetch_ids(chrom, start, end, strand)


def whole_records(source: SequenceSource) -> list[Interval]:
    """One interval per record of ``source``."""
    return [Interval(chrom, 0, length) for chrom, length in source.records.items()]


class WindowDataset(Dataset):
    """Windows of ``window`` tokens for pretraining.

    Two modes:
      * random (``num_windows`` given): each item picks a region with probability proportional to its number
        of window positions (so contigs are weighted by length) and a uniform offset inside it;
      * tiled (``num_windows=None``): each region is cut into ``len // window`` adjacent tiles; with
        ``random_offset`` the tiling is shifted by a random amount (per region and epoch) within the slack.

    Args:
        source: a `Genome`, `TokenStore` or `GenomeCollection`.
        window: L, tokens per item.
        regions: intervals to draw from (e.g. `check_intervals(read_bed(...), source)`); None = whole records.
        num_windows: items per epoch in random mode; None selects tiled mode.
        random_offset: tiled mode only; False gives fixed tiles (validation/test).
        max_n: largest allowed fraction of N in a window; a window above it is redrawn (up to ``max_tries``).
        rc_prob: probability of returning the reverse complement (augmentation; 0 for evaluation).
        short: regions shorter than ``window``: ``"skip"`` (counted in ``num_short``) or ``"pad"`` (one item,
            right-padded with PAD, ``attention_mask`` False there).
        seed: base seed; call ``set_epoch`` each epoch.

    Items:
        ``input_ids`` LongTensor [L], ``soft_mask`` BoolTensor [L], ``attention_mask`` BoolTensor [L], and
        ``chrom`` (str), ``start`` (int, 0-based forward-strand start), ``strand`` ("+" or "-").
    """

    def __init__(
        self,
        source: SequenceSource,
        window: int,
        regions: Sequence[Interval] | None = None,
        num_windows: int | None = None,
        random_offset: bool = True,
        max_n: float = 1.0,
        rc_prob: float = 0.5,
        short: str = "skip",
        seed: int = 0,
        max_tries: int = 64,
    ):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if short not in ("skip", "pad"):
            raise ValueError(f"short must be 'skip' or 'pad', got {short!r}")
        if not 0.0 <= max_n <= 1.0 or not 0.0 <= rc_prob <= 1.0:
            raise ValueError(f"max_n and rc_prob must lie in [0, 1], got {max_n}, {rc_prob}")
        self.source, self.window, self.num_windows = source, window, num_windows
        self.random_offset, self.max_n, self.rc_prob = random_offset, max_n, rc_prob
        self.seed, self.epoch, self.max_tries = seed, 0, max_tries
        regions = list(regions) if regions is not None else whole_records(source)
        long_enough = [r for r in regions if len(r) >= window]
        short_ones = [r for r in regions if len(r) < window]
        self.num_short = len(short_ones)
        if short_ones and short == "skip":
            log.info("skipping %d regions shorter than the %d-token window", len(short_ones), window)
        self.regions = long_enough + (short_ones if short == "pad" else [])
        if not self.regions:
            raise ValueError(
                f"no region of {source.name} is at least {window} long ({self.num_short} shorter ones "
                "skipped); use a shorter window or short='pad'"
            )
        lengths = np.array([len(r) for r in self.regions], dtype=np.int64)
        self._lengths = lengths
        # Random mode weights: window positions per region (a padded short region counts once).
        positions = np.maximum(lengths - window + 1, 1)
        self._cum_positions = np.cumsum(positions)
        self._cum_tiles = np.cumsum(np.maximum(lengths // window, 1))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: random draws, offsets and strands change with it."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.num_windows if self.num_windows is not None else self._cum_tiles[-1])

    def _draw(self, rng: ItemRandom, index: int | None) -> tuple[int, int]:
        """Region and start of one window; ``index`` picks a tile, None picks at random."""
        if self.num_windows is not None:
            pos = rng.integers(self._cum_positions[-1])
            region = int(np.searchsorted(self._cum_positions, pos, side="right"))
            offset = pos - (int(self._cum_positions[region - 1]) if region else 0)
            return region, self.regions[region].start + offset
        tile = index if index is not None else rng.integers(self._cum_tiles[-1])
        region = int(np.searchsorted(self._cum_tiles, tile, side="right"))
        k = tile - (int(self._cum_tiles[region - 1]) if region else 0)
        slack = max(
            int(self._lengths[region]) - self.window * max(int(self._lengths[region]) // self.window, 1), 0
        )
        shift = 0
        if self.random_offset and slack:
            # Same shift for all tiles of a region in an epoch, so its tiles never overlap.
            shift = ItemRandom(self.seed, self.epoch, region, 1).integers(slack + 1)
        return region, self.regions[region].start + shift + k * self.window

    def __getitem__(self, index: int) -> dict:
        return make_item(*self.window_arrays(index), window=self.window)

    def window_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray, str, int, str]:
        """Item ``index`` as numpy: ids uint8 [<= L], soft_mask bool [<= L], chrom, start, strand."""
        if not 0 <= index < len(self):
            raise IndexError(f"window index {index} out of range [0, {len(self)})")
        rng = ItemRandom(self.seed, self.epoch, index)
        pick: int | None = index
        for _ in range(self.max_tries):
            region, start = self._draw(rng, pick)
            iv = self.regions[region]
            end = min(start + self.window, iv.end)
            ids, mask = self.source.fetch_ids(iv.chrom, start, end, iv.strand)
            if self.max_n >= 1.0 or np.count_nonzero(ids == N_ID) <= self.max_n * ids.size:
                break
            pick = None  # this tile is too N-rich: redraw any window
        else:
            raise RuntimeError(
                f"no window with at most {self.max_n:.0%} N found in {self.max_tries} draws from "
                f"{self.source.name}; raise max_n or restrict the regions"
            )
        strand = iv.strand
        if rng.random() < self.rc_prob:
            ids, mask = reverse_complement_ids(ids), mask[::-1]
            strand = "-" if strand == "+" else "+"
        return ids, mask, iv.chrom, start, strand


def make_item(ids: np.ndarray, mask: np.ndarray, chrom: str, start: int, strand: str, window: int) -> dict:
    """The item dict shared by every window dataset; pads ``ids`` [n <= window] to ``window`` with PAD."""
    n = ids.size
    attention_mask = torch.ones(window, dtype=torch.bool)
    if n < window:
        ids = np.concatenate([ids, np.full(window - n, PAD_ID, dtype=ids.dtype)])
        mask = np.concatenate([mask, np.zeros(window - n, dtype=bool)])
        attention_mask[n:] = False
    return {
        "input_ids": torch.from_numpy(ids.astype(np.int64)),
        "soft_mask": torch.from_numpy(np.array(mask, dtype=bool)),  # a writable copy (views may be read-only)
        "attention_mask": attention_mask,
        "chrom": chrom,
        "start": int(start),
        "strand": strand,
    }
