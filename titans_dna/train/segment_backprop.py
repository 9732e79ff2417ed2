"""Training on long sequences, one layer-segment at a time (issue 6).

Every layer is sequential over its segments (a segment's memory read needs the previous segment's write), so
at batch 1 an autograd step with segment checkpointing issues some 50 small kernels per layer-segment and pass
from Python, and the GPU idles (BENCHMARKS.md: busy 10 % of a 4k step). `segment_backprop` computes the same
loss and parameter gradients in an order whose repeated unit is one function of tensors, which a CUDA graph
replays:

1. Forward without autograd, keeping each layer's input and stream state at every segment start (every step
   start, below).
2. For s = last .. first and l = top .. bottom: run layer l on segment s again with autograd, from its saved
   input and state, and backpropagate the gradient of its output (from layer l + 1 on segment s, or the loss
   on segment s) and of its end state (from layer l on segment s + 1). What comes back is the gradient of its
   input (for layer l - 1) and of its start state (for segment s - 1); parameter gradients accumulate.

Step 2 is the backward of segment checkpointing, in an explicit order. On CUDA each layer's full-segment step
(from a state of the same shapes) is captured once by `torch.cuda.make_graphed_callables` and replayed for
both passes; the first segment (no state yet), a partial last segment and CPU runs go eagerly. Optionally the
layers of the full segments run through torch.compile (`SegmentRunner`, compiled), graphed or not. Both passes
run as a wavefront (`Wavefront`): the steps of one wave do not depend on each other; optionally, with CUDA
graphs, each layer runs on its own stream, so the small kernels of up to n_layers layer-segments share the
card (`SegmentRunner`).
A step may cover several consecutive segments of a layer (`segments_per_step`, K; the layer carries its
state through them as in the whole forward): the repeated unit is then one layer on K segments, so the host's
work per step (Python, the graph's launch, input copies, gradient accumulation) is paid once per K segments,
at the cost of K segments' activations in flight per layer.
Memory: the saved inputs and states, O(n_layers x T x d_model) plus one memory state per layer-step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from titans_dna.model.blocks import BlockState
from titans_dna.model.graphed import (
    Wavefront,
    _map_tensors,
    _signature,
    compiled_layers,
    isolated_capture,
)
from titans_dna.model.titans_dna import TitansDNA, TitansLayer
from titans_dna.train.classifiers import autocast
from titans_dna.train.objectives import LMBatch, weighted_ce_sum

Span = tuple[int, int]  # [start, stop) of a step (one or more segments) in the sequence


def _carried(t: Tensor) -> bool:
    """Whether a state tensor is carried from segment to segment (the empty `pending` buffers of a full
    segment and their masks are not)."""
    return t.is_floating_point() and t.numel() > 0


def carried_leaves(state: BlockState) -> list[Tensor]:
    """The carried tensors of a block state, in a fixed order."""
    found: list[Tensor] = []
    _map_tensors(lambda t: found.append(t) if _carried(t) else None, state)
    return found


def with_leaves(template: BlockState, leaves: tuple[Tensor, ...] | list[Tensor]) -> BlockState:
    """`template` with its carried tensors replaced by `leaves` (in `carried_leaves` order)."""
    given = iter(leaves)
    return _map_tensors(lambda t: next(given) if _carried(t) else t, template)


class LayerSegment(nn.Module):
    """One layer on one full step (one or more segments) from an explicit state, as a function of tensors:
    (x [B, C, d], *carried start-state leaves) -> (out [B, C, d], *carried end-state leaves).

    `layer` is a TitansLayer or its torch.compile wrapper, a module over the same parameters: graphing
    finds the parameters whose gradients its backward returns through the module tree."""

    def __init__(self, layer: TitansLayer | nn.Module, template: BlockState, precision: str) -> None:
        super().__init__()
        self.layer, self.template, self.precision = layer, template, precision

    def forward(self, x: Tensor, *leaves: Tensor) -> tuple[Tensor, ...]:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        with autocast(x.device, self.precision, cache_enabled=False):
            out, state = self.layer(x, mask, with_leaves(self.template, leaves), True)
        return (out, *carried_leaves(state))


class SegmentRunner:
    """Runs each layer on a step of `segments_per_step` segments: eagerly, or (CUDA, full step, captured
    state shapes) through the layer's graphed `LayerSegment`, captured on its first such call. With graphs
    and `wavefront` (the default), each layer also gets its own CUDA stream (`streams`), on which
    `segment_backprop` runs that layer's steps, so up to n_layers graph replays share the card. Each graph
    is captured on a stream of its own (`capture_stream`): captured on a shared one, graphs replayed at once
    raced on their common cuBLAS workspace. Captures run under `isolated_capture` (no garbage collection,
    fresh cuBLAS workspaces). Graphed steps, on one stream or as a wavefront, equal the eager ones bit for
    bit (BENCHMARKS.md).

    With `compiled`, full segments from a state (the repeated step, graphed or not) run the layer through
    torch.compile (`compiled_layers`, with `compile_backend`): inductor fuses the small elementwise kernels
    between the matmuls, which at batch 1 set a graph replay's time. The first segment and a partial last one
    stay eager: each would be another static-shape graph to compile for one call per step.
    """

    def __init__(self, model: TitansDNA, precision: str, cuda_graphs: bool, wavefront: bool = True,
                 compiled: bool = False, compile_backend: str | Callable = "inductor",
                 segments_per_step: int = 1) -> None:
        if segments_per_step < 1:
            raise ValueError(f"segments_per_step must be >= 1; got {segments_per_step}")
        self.model, self.precision, self.cuda_graphs = model, precision, cuda_graphs
        self.step_len = segments_per_step * model.config.segment_len
        self.graphed: dict[int, tuple[object, nn.Module]] = {}  # layer -> (state signature, graphed callable)
        self.streams = ([torch.cuda.Stream(model.device) for _ in model.layers]
                        if wavefront and cuda_graphs and model.device.type == "cuda" else None)
        self.layers = compiled_layers(model, compile_backend) if compiled else list(model.layers)

    def __call__(self, index: int, x: Tensor, state: BlockState | None) -> tuple[Tensor, BlockState]:
        """(out, end state) of layer `index` on a step x [B, t, d] from `state` (None: stream start). With
        grad enabled the result is differentiable in x and the carried leaves of `state`."""
        layer = self.layers[index]
        if state is None or x.shape[1] != self.step_len:
            return self._eager(self.model.layers[index], x, state)
        if not (self.cuda_graphs and x.is_cuda):
            return self._eager(layer, x, state)
        leaves = carried_leaves(state)
        signature = _signature(state)
        if index not in self.graphed or self.graphed[index][0] != signature:
            sample = (x.detach().clone().requires_grad_(),
                      *(t.detach().clone().requires_grad_() for t in leaves))
            # the first capture comes in the forward pass, under no_grad: a graph captured there would
            # save nothing for a backward, and make_graphed_callables would capture no backward graph
            with (torch.enable_grad(), capture_stream(torch.cuda.Stream(x.device)),
                  isolated_capture(x.device)):
                graphed = torch.cuda.make_graphed_callables(LayerSegment(layer, state, self.precision),
                                                            sample, allow_unused_input=True)
            self.graphed[index] = signature, graphed
        outs = self.graphed[index][1](x, *leaves)
        return outs[0], with_leaves(state, outs[1:])

    def _eager(self, layer: Callable, x: Tensor, state: BlockState | None) -> tuple[Tensor, BlockState]:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        with autocast(x.device, self.precision):
            return layer(x, mask, state, True)


@contextlib.contextmanager
def capture_stream(stream: torch.cuda.Stream) -> Iterator[None]:
    """CUDA graphs made meanwhile by `make_graphed_callables` are captured on `stream`.

    It captures on `torch.cuda.graph`'s default side stream, one for the whole process, and PyTorch keeps one
    cuBLAS workspace per (handle, stream): every layer's graphs then bake in the same workspace address. The
    matmuls of two layers replayed at once on their own streams overwrite each other's workspace (wrong
    gradients, BENCHMARKS.md), and destroying one graph frees the workspace that the others still use
    (pytorch/pytorch#193402). A stream of its own per capture avoids the first. `isolated_capture` drops the
    workspace cache around every capture as well, yet it does not replace this: with it alone the wavefront
    stayed exact, but the GPU test run aborted in a graphed backward (H200, BENCHMARKS.md).
    """
    before = torch.cuda.graph.default_capture_stream
    torch.cuda.graph.default_capture_stream = stream
    try:
        yield
    finally:
        torch.cuda.graph.default_capture_stream = before


def handed_over(t: Tensor) -> Tensor:
    """t, made by another layer's stream, marked as used by the current one: freed by its maker, its memory is
    not reused before the current stream's queued work is done."""
    if t.is_cuda:
        t.record_stream(torch.cuda.current_stream())
    return t


@contextlib.contextmanager
def _without_checkpointing(model: TitansDNA) -> Iterator[None]:
    """Segment backprop is segment checkpointing already: the layers' own checkpointing stays off meanwhile
    (every module of the model shares the one config object)."""
    config, before = model.config, model.config.gradient_checkpointing
    config.gradient_checkpointing = False
    try:
        yield
    finally:
        config.gradient_checkpointing = before


def segment_backprop(model: TitansDNA, batch: LMBatch, precision: str = "fp32",
                     cuda_graphs: bool | None = None, runner: SegmentRunner | None = None,
                     scale: float = 1.0, compiled: bool = False, segments_per_step: int = 1) -> Tensor:
    """Accumulate into the parameters' .grad the gradient of `scale` times the weighted LM loss of a batch
    and return that loss (a 0-dim tensor, detached, unscaled): the loss
    `weighted_lm_loss(model(batch.inputs).logits, batch)` and its backward, segment by segment (module
    docstring).

    Args:
        model: a causal or MLM TitansDNA in train mode.
        batch: an `LMBatch` of sequences of one length ([B, T]) without padding; a batch's sequences share
            every kernel, so B sequences cost about what one does at batch 1.
        precision: autocast precision ("fp32" | "bf16" | "fp16" | "auto").
        cuda_graphs: replay each layer's full-segment step from a CUDA graph (None: on for a CUDA model).
        runner: a `SegmentRunner` to reuse across steps (keeps its graphs and compiled layers); None makes
            one from `cuda_graphs` and `compiled`.
        scale: the gradient's factor (1 / micro-batches per step when accumulating).
        compiled: full layer-segments run through torch.compile with inductor (`SegmentRunner`).
        segments_per_step: consecutive segments that one step of a layer covers (`SegmentRunner`); with
            `runner` given, the runner's.
    """
    ids = batch.inputs
    if cuda_graphs is None:
        cuda_graphs = ids.is_cuda
    runner = runner or SegmentRunner(model, precision, cuda_graphs, compiled=compiled,
                                     segments_per_step=segments_per_step)
    step = runner.step_len
    spans = [(start, min(start + step, ids.shape[1])) for start in range(0, ids.shape[1], step)]
    waves = Wavefront(runner.streams, len(model.layers), len(spans))
    with _without_checkpointing(model):
        x, inputs, states = _forward(model, runner, waves, ids, spans)
        grad_embedding = torch.zeros_like(x)
        loss = _backward(model, runner, waves, batch, spans, inputs, states, grad_embedding, precision, scale)
        model.embedding(ids).backward(grad_embedding)
    return loss


def _forward(model: TitansDNA, runner: SegmentRunner, waves: Wavefront, ids: Tensor,
             spans: list[Span]) -> tuple[Tensor, list[list[Tensor | None]], list[list[BlockState | None]]]:
    """Step 1 without autograd: the embedded ids, and per layer and segment its input and start state."""
    L, n = len(model.layers), len(spans)
    inputs: list[list[Tensor | None]] = [[None] * n for _ in range(L)]
    states: list[list[BlockState | None]] = [[None] * (n + 1) for _ in range(L)]
    with torch.no_grad():
        x = model.embedding(ids)
        # copies, not views of x: a compiled layer's graph is specialised to its input's strides (even a batch
        # dimension of 1 has one), and these then share the other layers' graphs
        inputs[0] = [x[:, start:stop].clone(memory_format=torch.contiguous_format) for start, stop in spans]
        with waves.run():
            for index, s in waves.steps(reverse=False):
                with waves.step(index, s, after=(index - 1, s) if index else None):
                    out, state = runner(index, inputs[index][s], states[index][s])
                    # graphed outputs are static buffers, overwritten by the next replay
                    states[index][s + 1] = _map_tensors(torch.clone, state)
                    if index + 1 < L:
                        inputs[index + 1][s] = out.clone()
    return x, inputs, states


def _backward(model: TitansDNA, runner: SegmentRunner, waves: Wavefront, batch: LMBatch, spans: list[Span],
              inputs: list[list[Tensor | None]], states: list[list[BlockState | None]],
              grad_embedding: Tensor, precision: str, scale: float) -> Tensor:
    """Step 2, from the top layer and the last segment: parameter gradients accumulate, the embedding's
    input gradient goes into grad_embedding [B, T, d]; returns the loss."""
    L = len(model.layers)
    params = [step_parameters(model, index) for index in range(L)]
    weight_sum = batch.weights.sum().clamp_min(1e-8)
    grad_x: dict[tuple[int, int], Tensor] = {}  # (layer, segment) -> gradient of its input
    grad_state: list[list[Tensor | None] | None] = [None] * L
    loss = torch.zeros((), device=grad_embedding.device)
    with waves.run():
        for index, s in waves.steps(reverse=True):
            start, stop = spans[s]
            with waves.step(index, s, after=(index + 1, s) if index + 1 < L else None):
                x = inputs[index][s].detach().requires_grad_()
                state = states[index][s]
                if state is not None:
                    state = with_leaves(state, [t.detach().requires_grad_() for t in carried_leaves(state)])
                out, end = runner(index, x, state)
                if index == L - 1:
                    segment = segment_loss(model, out, batch, start, stop, precision) / weight_sum
                    roots, grads = [segment * scale], [None]
                    loss += segment.detach()
                else:
                    roots, grads = [out], [handed_over(grad_x.pop((index + 1, s)))]
                if grad_state[index] is not None:  # the start-state gradient of segment s + 1
                    for leaf, grad in zip(carried_leaves(end), grad_state[index], strict=True):
                        if grad is not None and leaf.requires_grad:
                            roots.append(leaf)
                            grads.append(grad)
                leaves = [] if state is None else carried_leaves(state)
                found = torch.autograd.grad(roots, [x, *leaves, *params[index]], grads, allow_unused=True)
                accumulate(params[index], found[1 + len(leaves):])
                # Copies: a graphed backward leaves these in its static buffers, and the layer's next
                # forward replay (segment s - 1, before they are used) may reuse that memory.
                grad_x[index, s] = found[0].clone()
                grad_state[index] = None if state is None else [
                    None if g is None else g.clone() for g in found[1:1 + len(leaves)]]
                if index == 0:
                    grad_embedding[:, start:stop] = grad_x.pop((0, s))
    return loss


def step_parameters(model: TitansDNA, index: int) -> list[Tensor]:
    """The trainable parameters that a backward step of layer `index` reaches: the layer's, and for the top
    layer also the head's (final norm, LM head or the tied embedding)."""
    found = [p for p in model.layers[index].parameters() if p.requires_grad]
    if index == len(model.layers) - 1:
        found += [p for name, p in model.named_parameters()
                  if p.requires_grad and not name.startswith("layers.")]
    return found


def accumulate(params: list[Tensor], grads: tuple[Tensor | None, ...]) -> None:
    """p.grad += g on the current stream, the step's own.

    Not left to autograd's AccumulateGrad nodes: one adopts the incoming tensor as .grad when .grad is unset,
    and a graphed backward returns its gradients in static buffers that the layer's next replay overwrites;
    and nodes kept alive with the graphs run on the stream they were made on, not the step's (PyTorch warns
    of the mismatch).
    """
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.add_(g)


def segment_loss(model: TitansDNA, out: Tensor, batch: LMBatch, start: int, stop: int,
                 precision: str) -> Tensor:
    """The weighted cross-entropy summed over positions start..stop-1 from the top layer's output there,
    out [B, t, d]."""
    with autocast(out.device, precision):
        logits = model.head(out).logits
    return weighted_ce_sum(logits, batch.targets[:, start:stop], batch.weights[:, start:stop])
