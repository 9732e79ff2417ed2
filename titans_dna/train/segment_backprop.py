"""Training on one long sequence at batch 1, one layer-segment at a time (issue 6).

Every layer is sequential over its segments (a segment's memory read needs the previous segment's write), so
at batch 1 an autograd step with segment checkpointing issues some 50 small kernels per layer-segment and pass
from Python, and the GPU idles (BENCHMARKS.md: busy 10 % of a 4k step). `segment_backprop` computes the same
loss and parameter gradients in an order whose repeated unit is one function of tensors, which a CUDA graph
replays:

1. Forward without autograd, keeping each layer's input and stream state at every segment start.
2. For s = last .. first and l = top .. bottom: run layer l on segment s again with autograd, from its saved
   input and state, and backpropagate the gradient of its output (from layer l + 1 on segment s, or the loss
   on segment s) and of its end state (from layer l on segment s + 1). What comes back is the gradient of its
   input (for layer l - 1) and of its start state (for segment s - 1); parameter gradients accumulate.

Step 2 is the backward of segment checkpointing, in an explicit order. On CUDA each layer's full-segment step
(from a state of the same shapes) is captured once by `torch.cuda.make_graphed_callables` and replayed for
both passes; the first segment (no state yet), a partial last segment and CPU runs go eagerly. Memory: the
saved inputs and states, O(n_layers x T x d_model) plus one memory state per layer-segment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from titans_dna.model.blocks import BlockState
from titans_dna.model.graphed import _map_tensors, _signature
from titans_dna.model.titans_dna import TitansDNA, TitansLayer
from titans_dna.train.classifiers import autocast
from titans_dna.train.objectives import LMBatch, weighted_ce_sum


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
    """One layer on one full segment from an explicit state, as a function of tensors:
    (x [1, C, d], *carried start-state leaves) -> (out [1, C, d], *carried end-state leaves)."""

    def __init__(self, layer: TitansLayer, template: BlockState, precision: str) -> None:
        super().__init__()
        self.layer, self.template, self.precision = layer, template, precision

    def forward(self, x: Tensor, *leaves: Tensor) -> tuple[Tensor, ...]:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        with autocast(x.device, self.precision, cache_enabled=False):
            out, state = self.layer(x, mask, with_leaves(self.template, leaves), True)
        return (out, *carried_leaves(state))


class SegmentRunner:
    """Runs each layer on a segment: eagerly, or (CUDA, full segment, captured state shapes) through the
    layer's graphed `LayerSegment`, captured on its first such call."""

    def __init__(self, model: TitansDNA, precision: str, cuda_graphs: bool) -> None:
        self.model, self.precision, self.cuda_graphs = model, precision, cuda_graphs
        self.graphed: dict[int, tuple[object, nn.Module]] = {}  # layer -> (state signature, graphed callable)

    def __call__(self, index: int, x: Tensor, state: BlockState | None) -> tuple[Tensor, BlockState]:
        """(out, end state) of layer `index` on segment x [1, t, d] from `state` (None: stream start). With
        grad enabled the result is differentiable in x and the carried leaves of `state`."""
        layer = self.model.layers[index]
        full = x.shape[1] == self.model.config.segment_len
        if state is None or not full or not (self.cuda_graphs and x.is_cuda):
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            with autocast(x.device, self.precision):
                return layer(x, mask, state, True)
        leaves = carried_leaves(state)
        signature = _signature(state)
        if index not in self.graphed or self.graphed[index][0] != signature:
            sample = (x.detach().clone().requires_grad_(),
                      *(t.detach().clone().requires_grad_() for t in leaves))
            # the first capture comes in the forward pass, under no_grad: a graph captured there would
            # save nothing for a backward, and make_graphed_callables would capture no backward graph
            with torch.enable_grad():
                graphed = torch.cuda.make_graphed_callables(LayerSegment(layer, state, self.precision),
                                                            sample, allow_unused_input=True)
            self.graphed[index] = signature, graphed
        outs = self.graphed[index][1](x, *leaves)
        return outs[0], with_leaves(state, outs[1:])


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
                     scale: float = 1.0) -> Tensor:
    """Accumulate into the parameters' .grad the gradient of `scale` times the weighted LM loss of one
    sequence and return that loss (a 0-dim tensor, detached, unscaled): the loss
    `weighted_lm_loss(model(batch.inputs).logits, batch)` and its backward, segment by segment (module
    docstring).

    Args:
        model: a causal or MLM TitansDNA in train mode.
        batch: an `LMBatch` of one sequence ([1, T]) without padding.
        precision: autocast precision ("fp32" | "bf16" | "fp16" | "auto").
        cuda_graphs: replay each layer's full-segment step from a CUDA graph (None: on for a CUDA model).
        runner: a `SegmentRunner` to reuse across steps (keeps its graphs); None makes one.
        scale: the gradient's factor (1 / sequences per step when accumulating a batch one at a time).
    """
    ids = batch.inputs
    if ids.shape[0] != 1:
        raise ValueError(f"segment_backprop trains one sequence at a time; got a batch of {ids.shape[0]}")
    if cuda_graphs is None:
        cuda_graphs = ids.is_cuda
    runner = runner or SegmentRunner(model, precision, cuda_graphs)
    if runner.cuda_graphs:
        # A graphed backward returns its parameter gradients in static buffers, and autograd adopts a
        # gradient tensor as .grad when .grad is unset: the next replay would overwrite it. Set, it is added
        # to.
        for p in model.parameters():
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
    C = model.config.segment_len
    spans = [(start, min(start + C, ids.shape[1])) for start in range(0, ids.shape[1], C)]
    weight_sum = batch.weights.sum().clamp_min(1e-8)
    with _without_checkpointing(model):
        with torch.no_grad():  # 1. forward, keeping each layer's inputs and segment-start states
            x = model.embedding(ids)
            inputs, states = [], []
            for index in range(len(model.layers)):
                inputs.append(x)
                states.append([None])
                outs = []
                for start, stop in spans:
                    out, state = runner(index, x[:, start:stop], states[index][-1])
                    # graphed outputs are static buffers, overwritten by the next replay
                    outs.append(out.clone())
                    states[index].append(_map_tensors(torch.clone, state))
                x = torch.cat(outs, dim=1)
        grad_embedding = torch.zeros_like(inputs[0])
        grad_state: list[list[Tensor | None] | None] = [None] * len(model.layers)
        loss = torch.zeros((), device=ids.device)
        for s, (start, stop) in reversed(list(enumerate(spans))):  # 2. backward, segment by segment
            grad_x = None
            for index in reversed(range(len(model.layers))):
                x = inputs[index][:, start:stop].detach().requires_grad_()
                state = states[index][s]
                if state is not None:
                    state = with_leaves(state, [t.detach().requires_grad_() for t in carried_leaves(state)])
                out, end = runner(index, x, state)
                roots, grads = [out], [grad_x]
                if index == len(model.layers) - 1:
                    segment = segment_loss(model, out, batch, start, stop, precision) / weight_sum
                    roots[0], grads[0] = segment * scale, None
                    loss += segment.detach()
                if grad_state[index] is not None:  # not the last segment: the next one's start-state gradient
                    for leaf, grad in zip(carried_leaves(end), grad_state[index], strict=True):
                        if grad is not None and leaf.requires_grad:
                            roots.append(leaf)
                            grads.append(grad)
                torch.autograd.backward(roots, grads)
                # Copies: a graphed backward leaves these in its static buffers, and the layer's next forward
                # replay (segment s - 1, before they are used) may reuse that memory for its temporaries.
                grad_x = x.grad.clone()
                grad_state[index] = None if state is None else [
                    None if t.grad is None else t.grad.clone() for t in carried_leaves(state)]
            grad_embedding[:, start:stop] = grad_x
        model.embedding(ids).backward(grad_embedding)
    return loss


def segment_loss(model: TitansDNA, out: Tensor, batch: LMBatch, start: int, stop: int,
                 precision: str) -> Tensor:
    """The weighted cross-entropy summed over positions start..stop-1 from the top layer's output there,
    out [1, t, d]."""
    with autocast(out.device, precision):
        logits = model.head(out).logits
    return weighted_ce_sum(logits, batch.targets[:, start:stop], batch.weights[:, start:stop])
