"""Streaming inference over whole chromosomes: one record (or BED region) is ONE causal sequence, read from
the genome slice by slice and run through the model in pieces of ``piece_segments`` MAC segments with the
model state carried (causal processing in pieces equals processing whole; see model/blocks.py). Only one
piece's activations exist at a time; what leaves a piece is small: pooling accumulators, finished window
embeddings and the per-position log-likelihoods. At batch 1 the GPU waits on kernel launches, so on CUDA the
full pieces replay a CUDA graph of the forward (``model/graphed.py``).

Log-likelihood track: the value at position i is log p(x_i | x_<i), read from the logits at i - 1 (carried
across piece boundaries); NaN at position 0 and where x_i is not A/C/G/T (as ``inference.log_likelihood``
counts). File writers are in ``stream_writers.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from titans_dna.data.bed import Interval, SequenceSource, check_intervals, read_bed
from titans_dna.data.genome import Genome
from titans_dna.data.tokenizer import BASE_IDS
from titans_dna.model import ModelState, TitansDNA, TitansOutput
from titans_dna.model.graphed import GraphedPieces, graph_ready, wavefront_step
from titans_dna.model.heads import check_pooling
from titans_dna.train.classifiers import autocast

PIECE_SEGMENTS = 16  # segments per piece: 4096 tokens with the presets' segment_len 256
READ_BASES = 1 << 20  # bases fetched from the genome at a time (rounded to whole pieces)


def region_name(region: Interval, genome: SequenceSource) -> str:
    """``chrom`` for a whole record on the + strand, else ``chrom:start-end(strand)`` (as inference names
    BED regions)."""
    whole = region.start == 0 and region.end == genome.records[region.chrom] and region.strand == "+"
    return region.chrom if whole else f"{region.chrom}:{region.start}-{region.end}({region.strand})"


def genome_span(region: Interval, start: Tensor | int,
                end: Tensor | int) -> tuple[Tensor | int, Tensor | int]:
    """Genome coordinates (0-based half-open, + strand) of the region offsets [start, end)."""
    if region.strand == "-":
        return region.end - end, region.end - start
    return region.start + start, region.start + end


def open_regions(fasta: str | os.PathLike | None = None, bed: str | os.PathLike | None = None,
                 reference: str | os.PathLike | None = None) -> tuple[Genome, list[Interval]]:
    """The genome and the regions to stream: every record of an indexable FASTA, or the BED regions of a
    reference. Streaming reads through pyfaidx, so stdin and GenBank/EMBL input are refused."""
    if (fasta is None) == (bed is None):
        raise ValueError("give either a FASTA file or --bed with --reference")
    if fasta is not None:
        if str(fasta) == "-":
            raise ValueError("--stream reads the FASTA through its index: give a file, not stdin")
        genome = Genome(fasta)
        return genome, [Interval(name, 0, n) for name, n in genome.records.items()]
    if reference is None:
        raise ValueError("--bed needs --reference (the genome FASTA the regions refer to)")
    genome = Genome(reference)
    return genome, check_intervals(read_bed(bed), genome, bed_name=str(bed))


def shifted_logliks(logp: Tensor, ids: Tensor, context: Tensor | None) -> Tensor:
    """log p(x_i | x_<i) [t] for the ids [t] of a piece from its log-probabilities logp [t, V]: position i
    reads row i - 1, the first position the previous piece's last row ``context`` [1, V] (None at the start
    of the stream: NaN, nothing to condition on)."""
    if context is None:
        context = logp.new_full((1, logp.shape[1]), math.nan)
    return torch.cat([context, logp[:-1]]).gather(1, ids[:, None])[:, 0]


@torch.no_grad()
def stream_logliks(model: TitansDNA, ids: Tensor, precision: str = "fp32",
                   piece_segments: int = PIECE_SEGMENTS, reset_memory: bool = False) -> Tensor:
    """log p(x_i | x_<i) [T] (float32, on the CPU; NaN at 0) of ids [T] streamed as one sequence, eagerly.

    reset_memory: the ablation of the long-term memory. Pieces of one segment, and after each one every
    layer's memory state goes back to None (W_0, S = 0); conv tails and attention state are carried as usual,
    so only what the memory carries across segments is lost.
    """
    piece = model.config.segment_len * (1 if reset_memory else piece_segments)
    state, out, context = None, [], None
    for start in range(0, ids.shape[0], piece):
        chunk = ids[start:start + piece]
        with autocast(ids.device, precision):
            result = model(chunk[None], state=state, return_state=True)
        state = result.state
        if reset_memory:
            state = ModelState([dataclasses.replace(layer, memory=None) for layer in state.layers])
        logp = torch.log_softmax(result.logits[0].float(), dim=-1)
        out.append(shifted_logliks(logp, chunk, context))
        context = logp[-1:]
    return torch.cat(out).cpu()


class BinPooler:
    """Pooling of consecutive bins of ``width`` positions (0..width-1, width..2*width-1, ...), fed piece by
    piece; a bin split over pieces pools exactly as if it came in one piece."""

    def __init__(self, how: str, width: int) -> None:
        check_pooling(how)
        if width < 1:
            raise ValueError(f"bin width must be >= 1, got {width}")
        self.how, self.width = how, width
        self._open: tuple[int, Tensor, Tensor] | None = None  # (bin index, pooled or sum [d], count [])

    def add(self, start: int, values: Tensor) -> tuple[Tensor, Tensor]:
        """values [t, d] at positions start..start+t-1 -> (bin starts int64 [k], pooled [k, d]) of the bins
        that this piece completes."""
        w, t = self.width, values.shape[0]
        dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
        values = values.to(dtype)
        first, nb = start // w, (start + t - 1) // w - start // w + 1  # host arithmetic: no device sync
        local = torch.arange(start, start + t, device=values.device) // w - first
        counts = torch.bincount(local, minlength=nb).to(dtype)
        bin_lo = torch.arange(first, first + nb, device=values.device) * w
        if self.how == "mean":
            acc = values.new_zeros(nb, values.shape[1]).index_add_(0, local, values)
        elif self.how == "max":
            acc = values.new_full((nb, values.shape[1]), -math.inf).scatter_reduce_(
                0, local[:, None].expand_as(values), values, "amax")
        elif self.how == "first":
            acc = values[bin_lo.clamp(min=start) - start]
        else:
            acc = values[(bin_lo + w).clamp(max=start + t) - 1 - start]
        if self._open is not None and self._open[0] == first:  # the bin the previous piece left open
            _, prev, prev_count = self._open
            if self.how == "mean":
                acc[0] += prev
            elif self.how == "max":
                acc[0] = torch.maximum(acc[0], prev)
            elif self.how == "first":
                acc[0] = prev
            counts[0] += prev_count
        done = nb if (start + t) % w == 0 else nb - 1
        self._open = None if done == nb else (first + nb - 1, acc[-1], counts[-1])
        return bin_lo[:done], self._result(acc[:done], counts[:done])

    def finish(self) -> tuple[Tensor, Tensor] | None:
        """The bin left open at the end of the stream (a last, shorter bin): (start [1], pooled [1, d]), or
        None when the stream ended on a bin boundary."""
        if self._open is None:
            return None
        index, acc, count = self._open
        self._open = None
        return torch.tensor([index * self.width], device=acc.device), self._result(acc[None], count[None])

    def _result(self, acc: Tensor, counts: Tensor) -> Tensor:
        return acc / counts[:, None] if self.how == "mean" else acc


@dataclass
class StreamPiece:
    """What one piece of a region stream produces (tensors on the CPU)."""

    start: int  # offset of the piece's first position in the region
    loglik: Tensor  # [t] float: log p(x_i | x_<i) per position, NaN where not scored
    window_starts: Tensor  # [k] int64 region offsets of the windows finished in this piece
    windows: Tensor  # [k, d_model] pooled hidden states of those windows


def graphed_pieces(model: TitansDNA, piece_len: int, precision: str, wavefront: bool = True,
                   compiled: bool = False, skewed: bool = True) -> GraphedPieces:
    """The model's captured graph for pieces of `piece_len` tokens at `precision`, captured once and kept on
    the model for all its streams. One capture per stream left 32 MiB allocated after every stream (H200,
    torch 2.11), so streaming a FASTA of many records grew without bound. A graph reads the weights where
    they were at capture: moved weights (new storage) get a new graph in place of the old one."""
    graphs = model.__dict__.setdefault("_stream_graphs", {})
    weights = tuple(p.data_ptr() for p in model.parameters())
    key = (piece_len, precision, wavefront, compiled, skewed)
    if key not in graphs or graphs[key][0] != weights:
        graphs[key] = weights, GraphedPieces(model, piece_len, precision, wavefront, compiled, skewed)
    return graphs[key][1]


class RegionStream:
    """Iterate over one region as ONE sequence, piece by piece, under no_grad in eval mode.

    After the iteration: ``embedding`` [d_model] (the whole region pooled with ``pooling``),
    ``log_likelihood`` (nats, summed over scored positions) and ``scored`` (how many positions).

    Args:
        model: a causal TitansDNA (an MLM model streams exactly too, pieces being whole segments, but its
            log-likelihoods mean nothing).
        genome: where the tokens come from (``Genome``, or anything with ``fetch_ids``).
        region: the interval to stream (``-`` strand: its reverse complement, read from the far end).
        stride: window width in bp for per-window embeddings (None: no windows).
        pooling: "mean" | "max" | "first" | "last", for the region and its windows.
        piece_segments: segments of ``segment_len`` tokens per forward call.
        precision: "fp32" | "bf16" | "fp16" | "auto" (autocast; weights keep their dtype).
        cuda_graph: replay full pieces from a CUDA graph (``model/graphed.py``; eager: the first piece,
            MAG/MAL pieces until the attention tail is full, and a shorter last piece). None: on when the
            model is causal and on CUDA and the region holds two full pieces or more. True needs CUDA.
        wavefront: graphed pieces run their layers as a wavefront over segments, one CUDA stream per layer
            (`model/graphed.wavefront_step`; same outputs), else layer after layer.
        compiled: graphed pieces run the layers through torch.compile (`model/graphed.piece_layers`;
            fewer, fused kernels; ~30 s of compiling first).
        skewed: graphed pieces in wavefront order run skewed (`model/graphed.wavefront_step` with ``hold``):
            layer l lags l segments behind layer 0 across pieces, so every wave of a replay runs every layer;
            a piece's outputs then cover the positions its top layer reached (same numbers, later).
    """

    def __init__(self, model: TitansDNA, genome: SequenceSource, region: Interval,
                 stride: int | None = None, pooling: str = "mean", piece_segments: int = PIECE_SEGMENTS,
                 precision: str = "fp32", cuda_graph: bool | None = None, wavefront: bool = True,
                 compiled: bool = False, skewed: bool = True) -> None:
        if piece_segments < 1:
            raise ValueError(f"piece_segments must be >= 1, got {piece_segments}")
        if len(region) < 1:
            raise ValueError(f"cannot stream an empty region {region.chrom}:{region.start}-{region.end}")
        self.model, self.genome, self.region, self.precision = model, genome, region, precision
        self.piece = piece_segments * model.config.segment_len
        self.pooler = BinPooler(pooling, len(region))
        self.windows = BinPooler(pooling, stride) if stride is not None else None
        self.embedding: Tensor | None = None
        self.log_likelihood, self.scored = 0.0, 0
        if cuda_graph is None:
            cuda_graph = (model.device.type == "cuda" and model.config.causal
                          and len(region) // self.piece >= 2)
        self.graphed = (graphed_pieces(model, self.piece, precision, wavefront, compiled, skewed)
                        if cuda_graph else None)

    def _token_pieces(self) -> Iterator[tuple[int, Tensor]]:
        """(region offset, ids long [<= piece] on the model's device), fetched READ_BASES at a time."""
        length, piece = len(self.region), self.piece
        read = max(1, READ_BASES // piece) * piece
        for block_start in range(0, length, read):
            lo, hi = genome_span(self.region, block_start, min(block_start + read, length))
            ids, _ = self.genome.fetch_ids(self.region.chrom, lo, hi, self.region.strand)
            block = torch.from_numpy(np.ascontiguousarray(ids)).to(self.model.device, torch.long)
            for offset in range(0, block.shape[0], piece):
                yield block_start + offset, block[offset:offset + piece]

    def __iter__(self) -> Iterator[StreamPiece]:
        model = self.model
        bases = torch.tensor(BASE_IDS, device=model.device)
        context, done = None, 0
        totals = torch.zeros(2, dtype=torch.float64, device=model.device)  # log-likelihood, scored
        was_training = model.training
        model.eval()
        try:
            for out, ids, last in self._outputs():
                logits = out.logits[0]
                logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
                picked, context = shifted_logliks(logp, ids, context), logp[-1:]
                scored = torch.isin(ids, bases) & ~torch.isnan(picked)
                totals += torch.stack([torch.where(scored, picked, 0.0).sum(), scored.sum()]).double()
                hidden = out.hidden_states[0]
                whole = self.pooler.add(done, hidden)[1]  # the region is one bin, done at its last piece
                if last:
                    self.embedding = whole[0].cpu()
                yield self._piece(done, hidden, torch.where(scored, picked, math.nan), last)
                done += ids.shape[0]
        finally:
            model.train(was_training)
        self.log_likelihood, self.scored = float(totals[0]), int(totals[1])

    def _outputs(self) -> Iterator[tuple[TitansOutput, Tensor, bool]]:
        """The model's outputs over the region in order, each with the ids [t] of the positions it covers
        (skewed pieces cover fewer than they read, and the drain the rest) and whether it is the last."""
        state, waiting = None, torch.zeros(0, dtype=torch.long, device=self.model.device)
        for start, piece_ids in self._token_pieces():
            last_piece = start + piece_ids.shape[0] == len(self.region)
            outputs = self._forward(piece_ids, state, last_piece)
            state, waiting = outputs[-1].state, torch.cat([waiting, piece_ids])
            for i, out in enumerate(outputs):
                rows = out.logits.shape[1]
                yield out, waiting[:rows], last_piece and i == len(outputs) - 1
                waiting = waiting[rows:]

    def _forward(self, ids: Tensor, state: ModelState | None, last: bool) -> list[TitansOutput]:
        """The model on one piece, as one output or two (each over the positions it reached: with skewed
        pieces, up to n_layers - 1 segments behind the piece's end). A full piece whose state the graph can
        carry (see `graph_ready`) replays the graph (its outputs live until the next replay), and at the
        region's end an eager pass on no new ids drains the skew; any other piece runs eagerly."""
        if self.graphed is not None and ids.shape[0] == self.piece and graph_ready(self.model, state):
            out = self.graphed.run(ids[None], state)
            drain = last and self.graphed.skewed
            return [out, self._eager(ids[:0], out.state, last=True)] if drain else [out]
        return [self._eager(ids, state, last)]

    def _eager(self, ids: Tensor, state: ModelState | None, last: bool) -> TitansOutput:
        """An eager forward of ids [t]; in a skewed stream in the graph's order (`wavefront_step`), holding
        back the upper layers' last segments until the `last` piece drains them."""
        with torch.no_grad(), autocast(self.model.device, self.precision):
            if self.graphed is not None and self.graphed.skewed:
                return wavefront_step(self.model, ids[None], state, hold=not last)
            return self.model(ids[None], state=state, return_state=not last)

    def _piece(self, start: int, hidden: Tensor, loglik: Tensor, last: bool) -> StreamPiece:
        if self.windows is None:
            starts, pooled = torch.zeros(0, dtype=torch.long), hidden.new_zeros(0, hidden.shape[1])
        else:
            starts, pooled = self.windows.add(start, hidden)
            tail = self.windows.finish() if last else None
            if tail is not None:
                starts, pooled = torch.cat([starts, tail[0]]), torch.cat([pooled, tail[1]])
        return StreamPiece(start, loglik.cpu(), starts.cpu(), pooled.cpu())
