"""Files from streamed regions (streaming.py): embeddings into HDF5, and log-likelihood tracks into HDF5 or
bedGraph. Outputs grow as the stream goes (chunked, resizable HDF5 datasets; bedGraph lines) inside a
temporary file that is renamed into place only when every region is done, so an error leaves no partial file.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from titans_dna.data.atomic import atomic_path
from titans_dna.data.bed import Interval, SequenceSource
from titans_dna.data.tokenizer import TOKENIZER_VERSION
from titans_dna.model import TitansDNA
from titans_dna.train.inference import open_output
from titans_dna.train.streaming import PIECE_SEGMENTS, BinPooler, RegionStream, genome_span, region_name

HDF5_SUFFIXES = (".h5", ".hdf5")


@dataclass
class StreamSummary:
    """One streamed region: its name and coordinates, length, log-likelihood (nats) and time taken."""

    name: str
    region: Interval
    length: int
    log_likelihood: float
    scored: int
    seconds: float

    @property
    def log_likelihood_per_base(self) -> float:
        return self.log_likelihood / self.scored if self.scored else float("nan")


def _growing(h5, name: str, width: int | None, dtype):
    """An empty resizable dataset [0] or [0, width], chunked so that appends stay cheap."""
    shape, chunks = ((0,), (4096,)) if width is None else ((0, width), (256, width))
    maxshape = (None,) if width is None else (None, width)
    return h5.create_dataset(name, shape, maxshape=maxshape, dtype=dtype, chunks=chunks)


def _append(ds, rows) -> None:
    """Grow dataset ``ds`` along axis 0 by ``rows`` (an array or a list)."""
    n = ds.shape[0]
    ds.resize(n + len(rows), axis=0)
    ds[n:] = rows


class _RegionTable:
    """The per-region datasets every stream file carries: names, chrom/start/end/strand, lengths."""

    def __init__(self, h5) -> None:
        import h5py

        text = h5py.string_dtype()
        kinds = {"names": text, "chrom": text, "start": "i8", "end": "i8", "strand": text, "lengths": "i8"}
        self.datasets = {key: _growing(h5, key, None, kind) for key, kind in kinds.items()}

    def add(self, name: str, region: Interval) -> None:
        values = {"names": name, "chrom": region.chrom, "start": region.start, "end": region.end,
                  "strand": region.strand, "lengths": len(region)}
        for key, ds in self.datasets.items():
            _append(ds, [values[key]])


def _streams(model: TitansDNA, genome: SequenceSource, regions: Sequence[Interval], progress: bool,
             desc: str, **kwargs) -> Iterator[tuple[str, RegionStream, tqdm]]:
    """(name, stream, bar) per region; the bar counts bases over all regions."""
    total = sum(len(r) for r in regions)
    bar = tqdm(total=total, desc=desc, unit=" bp", unit_scale=True, disable=not progress)
    for region in regions:
        yield region_name(region, genome), RegionStream(model, genome, region, **kwargs), bar
    bar.close()


def stream_embed_file(model: TitansDNA, genome: SequenceSource, regions: Sequence[Interval],
                      out: str | os.PathLike, stride: int | None = 1000, pooling: str = "mean",
                      piece_segments: int = PIECE_SEGMENTS, precision: str = "fp32",
                      progress: bool = True, cuda_graph: bool | None = None,
                      compiled: bool = False) -> list[StreamSummary]:
    """Stream each region as one sequence into an HDF5 file of embeddings (``cuda_graph``, ``compiled``: as
    `RegionStream`).

    Layout: per region ``names``, ``chrom/start/end/strand``, ``lengths`` [n] and ``embeddings`` float32
    [n, d_model] (the region pooled whole); per window of ``stride`` bp (the last one shorter) ``windows``
    float32 [W, d_model] with genome coordinates ``window_start/window_end`` [W] (0-based half-open) and
    ``window_offsets`` [n + 1] (region i owns ``windows[o[i]:o[i + 1]]``). Attributes record the settings.

    Returns:
        A `StreamSummary` per region (the log-likelihood comes for free with the stream).
    """
    import h5py

    d = model.config.d_model
    summaries, offsets = [], [0]
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as h5:
        table = _RegionTable(h5)
        embeddings = _growing(h5, "embeddings", d, "f4")
        windows = _growing(h5, "windows", d, "f4")
        starts, ends = _growing(h5, "window_start", None, "i8"), _growing(h5, "window_end", None, "i8")
        streams = _streams(model, genome, regions, progress, "embed --stream", stride=stride, pooling=pooling,
                           piece_segments=piece_segments, precision=precision, cuda_graph=cuda_graph,
                           compiled=compiled)
        for name, stream, bar in streams:
            t0, length = time.perf_counter(), len(stream.region)
            for piece in stream:
                if piece.windows.shape[0]:
                    lo, hi = genome_span(stream.region, piece.window_starts,
                                         (piece.window_starts + stride).clamp(max=length))
                    _append(windows, piece.windows.float().numpy())
                    _append(starts, lo.numpy())
                    _append(ends, hi.numpy())
                bar.update(piece.loglik.shape[0])
            table.add(name, stream.region)
            _append(embeddings, stream.embedding[None].float().numpy())
            offsets.append(windows.shape[0])
            summaries.append(StreamSummary(name, stream.region, length, stream.log_likelihood, stream.scored,
                                           time.perf_counter() - t0))
        h5.create_dataset("window_offsets", data=np.asarray(offsets, dtype=np.int64))
        h5.attrs.update({"pooling": pooling, "stride": stride or 0, "piece_segments": piece_segments,
                         "d_model": d, "tokenizer": TOKENIZER_VERSION, "n_records": len(summaries),
                         "streamed": True})
    return summaries


def _binned_track(stream: RegionStream, stride: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Run ``stream``, yielding per piece (bin starts [k], mean log-likelihood [k], positions done) for the
    bins it finishes; a bin's value is the mean over its scored bases (NaN: none scored).

    The pooler averages [log-likelihood or 0, scored] per bin; their ratio is the mean over scored bases.
    """
    pooler = BinPooler("mean", stride)
    for piece in stream:
        scored = ~torch.isnan(piece.loglik)
        pair = torch.stack([piece.loglik.nan_to_num(0.0), scored.to(piece.loglik.dtype)], 1)
        bins, means = pooler.add(piece.start, pair)
        yield bins, means[:, 0] / means[:, 1], piece.loglik.shape[0]  # 0 / 0 = NaN: nothing scored
    tail = pooler.finish()
    if tail is not None:
        yield tail[0], tail[1][:, 0] / tail[1][:, 1], 0


class _BedGraphTrack:
    """bedGraph lines (chrom, start, end, value; genome coordinates) for the bins that have a value."""

    def __init__(self, fh, stride: int) -> None:
        self.fh, self.stride = fh, stride

    def add(self, region: Interval, bins: torch.Tensor, values: torch.Tensor) -> None:
        keep = ~torch.isnan(values)
        lo, hi = genome_span(region, bins[keep], (bins[keep] + self.stride).clamp(max=len(region)))
        self.fh.writelines(f"{region.chrom}\t{a}\t{b}\t{v:.6g}\n"
                           for a, b, v in zip(lo.tolist(), hi.tolist(), values[keep].tolist(), strict=True))

    def end(self, name: str, stream: RegionStream) -> None:
        """Nothing per region: bedGraph has no room for totals (the CLI prints them)."""

    def close(self) -> None:
        """Nothing to finish: open_output renames the file."""


class _Hdf5Track:
    """HDF5: the region table, per-region totals and the concatenated track with offsets."""

    def __init__(self, h5, stride: int, piece_segments: int) -> None:
        self.h5, self.table, self.offsets = h5, _RegionTable(h5), [0]
        self.track = _growing(h5, "track", None, "f4")
        self.totals = _growing(h5, "log_likelihood", None, "f8")
        self.scored = _growing(h5, "scored_bases", None, "i8")
        h5.attrs.update({"stride": stride, "piece_segments": piece_segments, "tokenizer": TOKENIZER_VERSION,
                         "streamed": True, "units": "nats per base"})

    def add(self, region: Interval, bins: torch.Tensor, values: torch.Tensor) -> None:
        _append(self.track, values.float().numpy())

    def end(self, name: str, stream: RegionStream) -> None:
        self.table.add(name, stream.region)
        _append(self.totals, [stream.log_likelihood])
        _append(self.scored, [stream.scored])
        self.offsets.append(self.track.shape[0])

    def close(self) -> None:
        self.h5.create_dataset("track_offsets", data=np.asarray(self.offsets, dtype=np.int64))
        self.h5.attrs["n_records"] = len(self.offsets) - 1


def stream_score_file(model: TitansDNA, genome: SequenceSource, regions: Sequence[Interval],
                      out: str | os.PathLike, stride: int = 1, piece_segments: int = PIECE_SEGMENTS,
                      precision: str = "fp32", progress: bool = True,
                      cuda_graph: bool | None = None, compiled: bool = False) -> list[StreamSummary]:
    """Per-position log-likelihood under the causal model, each region streamed as one sequence
    (``cuda_graph``, ``compiled``: as `RegionStream`).

    The track holds log p(x_i | x_<i) (nats) averaged over the scored bases of each ``stride`` bp bin
    (``stride=1``: every base). ``out`` ending in .h5/.hdf5: HDF5 with the per-region datasets of
    `stream_embed_file` plus ``log_likelihood`` float64 [n], ``scored_bases`` [n], ``track`` float32
    [sum of bins] and ``track_offsets`` [n + 1]; otherwise bedGraph (``-``: stdout), one line per bin with a
    value (chrom, start, end in genome coordinates, value).

    Returns:
        A `StreamSummary` per region.
    """
    if not model.config.causal:
        raise ValueError("scoring needs a causal (next-token) model; this checkpoint was trained with MLM")
    summaries = []
    with contextlib.ExitStack() as stack:
        if Path(str(out)).suffix.lower() in HDF5_SUFFIXES:
            import h5py

            h5 = stack.enter_context(h5py.File(stack.enter_context(atomic_path(out)), "w"))
            sink = _Hdf5Track(h5, stride, piece_segments)
        else:
            sink = _BedGraphTrack(stack.enter_context(open_output(out)), stride)
        for name, stream, bar in _streams(model, genome, regions, progress, "score --stream",
                                          piece_segments=piece_segments, precision=precision,
                                          cuda_graph=cuda_graph, compiled=compiled):
            t0 = time.perf_counter()
            for bins, values, done in _binned_track(stream, stride):
                sink.add(stream.region, bins, values)
                bar.update(done)
            sink.end(name, stream)
            summaries.append(StreamSummary(name, stream.region, len(stream.region), stream.log_likelihood,
                                           stream.scored, time.perf_counter() - t0))
        sink.close()
    return summaries
