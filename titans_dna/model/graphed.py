"""CUDA-graph fast path for batch-1 streaming (train/streaming.py).

Streaming runs a chromosome through the model in pieces of a few thousand tokens at batch 1, where every
segment of every layer is some 50 small kernels: the GPU waits on Python and kernel launches (~3.4 ms per
256-token MAC segment per layer on an H200), not on arithmetic. `GraphedPieces` captures one forward of a
full piece, with the stream state in static buffers, as a CUDA graph and replays it for every full piece:
one launch per piece.

`step` is the forward that the graph captures: ``model(ids, state=state, return_state=True)`` without the
input checks, whose padding test synchronises the host with the device (which capture forbids).
`wavefront_step` is the same forward in wavefront order, the layers on one CUDA stream each, so the graph runs
up to n_layers layer-segments at once (the default; 3x faster on a whole genome, BENCHMARKS.md). Between
pieces it can stay skewed (`SkewedState`): layer l a segment behind layer l - 1, so a replay never fills
or drains its waves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from titans_dna.model.titans_dna import ModelState, TitansDNA, TitansOutput
from titans_dna.train.classifiers import autocast

RECOMPILE_LIMIT = 64  # compiled layer graphs per process (one per model config, device and precision)
WARMUP_RUNS = 2  # on a side stream before capture (the CUDA graphs recipe): lazy initialisation stays out


@contextlib.contextmanager
def isolated_capture(device: torch.device) -> Iterator[None]:
    """Around CUDA graph captures: Python's automatic garbage collection is paused, and PyTorch's cached
    cuBLAS workspaces (one per handle and stream) are dropped before and after.

    Garbage collection: `torch.cuda.graph` collects before it begins a capture, but a collection that starts
    during one can free CUDA objects that only a reference cycle kept (a graphed callable replaced by a
    recapture holds two graphs), and that call invalidates the capture. On an H200 the first wavefront
    runner of the graphed test run failed its capture so in 3 runs of 3; with collection paused, it passed.

    Workspaces: the captured matmuls then use workspaces allocated during the capture, in the graph's
    private pool, which lives as long as the graph. Otherwise a graph bakes in the address of a workspace
    cached earlier by eager work on the capture stream: freed when any graph captured on a stream of that
    address is reset (pytorch/pytorch#193402; torch's streams come from a pool and recur), and meanwhile
    shared with eager matmuls. Likewise eager work after the capture would inherit the graph's workspace.
    Inductor's CUDA graph trees clear the cache so too.
    """
    collecting = gc.isenabled()
    gc.disable()
    torch.cuda.synchronize(device)  # no queued kernel still uses a workspace about to be freed
    torch._C._cuda_clearCublasWorkspaces()
    try:
        yield
    finally:
        torch.cuda.synchronize(device)
        torch._C._cuda_clearCublasWorkspaces()
        if collecting:
            gc.enable()


def step(model: TitansDNA, ids: Tensor, state: ModelState | None) -> TitansOutput:
    """``model(ids, state=state, return_state=True)`` for ids [B, T] without padding, and without the
    input checks: no host-device synchronisation, so a CUDA graph can capture it."""
    return model._forward(ids, torch.ones_like(ids, dtype=torch.bool), state, return_state=True)


class Wavefront:
    """The (layer, segment) steps of a pass in wavefront order, each layer's on its own CUDA stream.

    A layer-segment depends on the layer below (forward) or above (backward) on the same segment, and on its
    own layer's neighbouring segment; the steps of one wave are independent, so on separate streams up to
    n_layers of them run at once. Without streams (CPU, eager) the same order runs on the current stream.
    """

    def __init__(self, streams: list[torch.cuda.Stream] | None, n_layers: int, n_segments: int) -> None:
        self.streams, self.n_layers, self.n_segments = streams, n_layers, n_segments
        self._done: dict[tuple[int, int], torch.cuda.Event] = {}

    def steps(self, reverse: bool, pending: bool = False, hold: bool = False) -> Iterator[tuple[int, int]]:
        """(layer, segment) pairs: forward, layer l on segment w - l at wave w; reverse, the top layer first
        and the last segment first.

        A skewed forward (`wavefront_step` from a `SkewedState`, or with ``hold``): with `pending`, layer l
        starts at segment -l (its input for it was left by the previous pass); with `hold`, it stops l
        segments short of the end (those inputs wait for the next pass). Both on, every wave of the pass runs
        every layer.
        """
        L, n = self.n_layers, self.n_segments
        if reverse and (pending or hold):
            raise ValueError("only a forward pass can be skewed")
        for wave in range(n if hold else n + L - 1):
            for depth in range(L):
                layer = L - 1 - depth if reverse else depth
                s = n - 1 - (wave - depth) if reverse else wave - depth
                if (-layer if pending else 0) <= s < (n - layer if hold else n):
                    yield layer, s

    @contextlib.contextmanager
    def step(self, layer: int, s: int, after: tuple[int, int] | None) -> Iterator[None]:
        """Run the body on `layer`'s stream once step `after` (another layer's, or None) has finished."""
        if self.streams is None:
            yield
            return
        stream = self.streams[layer]
        with torch.cuda.stream(stream):
            if after is not None:
                stream.wait_event(self._done.pop(after))
            yield
            self._done[layer, s] = stream.record_event()

    @contextlib.contextmanager
    def run(self) -> Iterator[None]:
        """A pass: the streams start after the work queued so far, and the current stream waits for them at
        the end."""
        current = torch.cuda.current_stream() if self.streams else None
        for stream in self.streams or ():
            stream.wait_stream(current)
        try:
            yield
        finally:
            for stream in self.streams or ():
                current.wait_stream(stream)
            self._done.clear()


@dataclasses.dataclass
class SkewedState(ModelState):
    """The state of a skewed stream (`wavefront_step` with ``hold``): layer l has read l segments fewer than
    layer 0, and ``pending[l - 1]`` [B, segment_len, d_model] is layer l's input for its next segment (the
    output of layer l - 1 on it). Internal to streaming: the model's forward cannot continue it."""

    pending: list[Tensor]


def wavefront_step(model: TitansDNA, ids: Tensor, state: ModelState | None,
                   streams: list[torch.cuda.Stream] | None = None,
                   layers: Sequence[Callable] | None = None, hold: bool = False) -> TitansOutput:
    """`step` in wavefront order (`Wavefront`): layer l runs segment s at wave l + s. With one CUDA stream per
    layer (`streams`) the layers of a wave run at once: at batch 1 each of their small kernels fills a few
    SMs, and a graph of the piece overlaps n_layers of them where `step` runs one. Per segment the arithmetic
    is `step`'s; only kernels' row counts differ.

    Skewed (a `SkewedState` in, or ``hold``): a pass that starts from a `SkewedState` first runs each layer
    on its pending segment; with ``hold`` layer l leaves the piece's last l segments pending and the pass
    returns a `SkewedState`. A stream of pieces so skewed runs n_layers layer-segments in every wave, where a
    piece that starts and ends level fills and drains (n + n_layers - 1 waves for n segments). The outputs
    are the top layer's: a held pass's lag n_layers - 1 segments behind its input.

    `ids` [B, T]: whole segments of `segment_len` tokens when ``hold`` (else the last may be shorter; T = 0
    only drains a `SkewedState`). `layers`: `piece_layers(model, ...)` (the default: uncompiled). Under
    autocast the linear weights are cast once per pass, not once per layer-segment (`autocast_linears`).
    """
    C, L = model.config.segment_len, len(model.layers)
    pending = state.pending if isinstance(state, SkewedState) else None
    if hold and ids.shape[1] % C:
        raise ValueError(f"a held piece is whole segments of {C} tokens; got {ids.shape[1]}")
    if hold and pending is None and ids.shape[1] < L * C:
        raise ValueError(f"the first held piece needs >= n_layers = {L} segments; got {ids.shape[1]} tokens")
    mask = torch.ones(ids.shape[0], C, dtype=torch.bool, device=ids.device)
    n = -(-ids.shape[1] // C)
    inputs = {(0, s): x for s, x in enumerate(model.embedding(ids).split(C, dim=1)[:n])}  # (layer, segment)
    inputs.update({(layer, -layer): x for layer, x in enumerate(pending or (), start=1)})
    layer_states = list(state.layers) if state is not None else [None] * L
    layers = piece_layers(model) if layers is None else layers
    casts = [autocast_linears(layer, ids.device) for layer in model.layers]
    # Tensors handed from one stream to another stay referenced until the end: freed, their blocks could be
    # reused by the producing stream while the consuming one still reads them.
    handed_over, top = list(inputs.values()), []
    waves = Wavefront(streams, L, n)
    with waves.run():
        for index, s in waves.steps(reverse=False, pending=pending is not None, hold=hold):
            x = inputs.pop((index, s))
            produced_here = index and (pending is None or s > -index)
            with waves.step(index, s, after=(index - 1, s) if produced_here else None):
                y, layer_states[index] = layers[index](casts[index], (x, mask[:, :x.shape[1]],
                                                                      layer_states[index], True))
                handed_over.append(y)
            if index + 1 < L:
                inputs[index + 1, s] = y
            else:
                top.append(y)
    if not hold:
        return model.head(torch.cat(top, dim=1), ModelState(layer_states))
    return model.head(torch.cat(top, dim=1),
                      SkewedState(layer_states, [inputs.pop((layer, n - layer)) for layer in range(1, L)]))


def autocast_linears(layer: nn.Module, device: torch.device) -> dict[str, Tensor]:
    """Under autocast, the layer's nn.Linear parameters in the autocast dtype, by name (else empty).

    Autocast casts a float32 weight at every call, one kernel per linear and layer-segment (some 10 of a
    segment's kernels); given these in place of the parameters, the linears find their inputs in the
    autocast dtype already and cast nothing. Same numbers: a cast is a cast wherever it runs.
    """
    if not torch.is_autocast_enabled(device.type):
        return {}
    dtype = torch.get_autocast_dtype(device.type)
    return {f"{name}.{key}": p.to(dtype) for name, module in layer.named_modules()
            if isinstance(module, nn.Linear) for key, p in module.named_parameters(recurse=False)}


def piece_layers(model: TitansDNA, backend: str | Callable | None = None) -> list[Callable]:
    """Per layer the function (params, (x, mask, state, return_state)) -> layer output, with `params` standing
    in for the layer's parameters of those names (`torch.func.functional_call`); through torch.compile with
    `backend` (None: eager).

    Compiled ("inductor"): at batch 1 a layer-segment is a chain of small kernels, and in a graph replay their
    number, not their arithmetic, sets the time; inductor fuses the elementwise work between the matmuls
    (convolution, SiLU, norms, gates, rotary, masks) and the memory op stays one opaque custom op. "aot_eager"
    traces the same graphs without inductor (the CPU tests).
    """
    calls = [functools.partial(torch.func.functional_call, layer) for layer in model.layers]
    return calls if backend is None else [compile_whole(call, backend) for call in calls]


def compiled_layers(model: TitansDNA, backend: str | Callable = "inductor") -> list[Callable]:
    """The model's layers through torch.compile (`compile_whole`), each called as the layer itself."""
    return [compile_whole(layer, backend) for layer in model.layers]


def compile_whole(fn: Callable, backend: str | Callable) -> Callable:
    """torch.compile of `fn` as one graph with static shapes (compiling took ~30 s per process on an H200)."""
    # Dynamo keeps its compiled graphs per code object (TitansLayer.forward), and each model's config is a
    # constant of its graphs: past the default limit of 8 graphs, fullgraph=True fails outright, so a process
    # streaming with a dozen models (tests, notebooks) would stop working.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)


def graph_ready(model: TitansDNA, state: ModelState | None) -> bool:
    """Whether a full piece leaves the structure of `state` (its tensors' shapes and dtypes) as it is, which
    a graph needs: not the stream start (None), and MAG/MAL attention tails already at window - 1 rows."""
    window = model.config.window
    return state is not None and all(layer.attn is None or layer.attn.shape[1] == window - 1
                                     for layer in state.layers)


def _map_tensors(fn: Callable[[Tensor], Any], value: Any) -> Any:
    """`value` (a state or a part of one) with every tensor t replaced by fn(t), visited in a fixed order."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tensors(fn, v) for v in value)
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value, **{f.name: _map_tensors(fn, getattr(value, f.name))
                                             for f in dataclasses.fields(value)})
    return value  # None: a field the state does not use


def _leaves(state: ModelState) -> list[Tensor]:
    """The tensors of `state` in `_map_tensors` order."""
    found: list[Tensor] = []
    _map_tensors(found.append, state)
    return found


def _signature(state: ModelState) -> ModelState:
    """`state` with each tensor replaced by its (shape, dtype, device): equal for states a graph can swap."""
    return _map_tensors(lambda t: (t.shape, t.dtype, t.device), state)


def _load(buffers: ModelState, state: ModelState) -> None:
    """Copy `state` into the tensors of `buffers`, a state of the same signature."""
    for buffer, value in zip(_leaves(buffers), _leaves(state), strict=True):
        buffer.copy_(value)


def can_skew(model: TitansDNA, piece_len: int) -> bool:
    """Whether a stream of `piece_len`-token pieces can run skewed (`wavefront_step` with ``hold``): two
    layers or more, and its first piece, which sets the skew up, gives the top layer a segment."""
    return 1 < len(model.layers) <= piece_len // model.config.segment_len


class GraphedPieces:
    """One forward of a [1, piece_len] piece captured as a CUDA graph and replayed for each full piece
    (`wavefront`: in `wavefront_step` order, one stream per layer; else `step`; `compiled`: through
    `piece_layers(model, "inductor")`, in wavefront order, on one stream unless `wavefront`). In wavefront
    order the pieces run skewed where they can (`skewed` and `can_skew`): the graph takes and returns a
    `SkewedState` and its outputs lag n_layers - 1 segments behind its input (`wavefront_step`).

    The graph reads the token ids and the state from static buffers and ends by copying the new state into
    the state buffers, so every replay advances the stream. `run` returns static outputs: hidden states,
    logits and a `ModelState` over the state buffers, valid until the next `run` overwrites them.
    """

    def __init__(self, model: TitansDNA, piece_len: int, precision: str, wavefront: bool = True,
                 compiled: bool = False, skewed: bool = True) -> None:
        if model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the model on a CUDA device; it is on {model.device} "
                             "(stream eagerly: cuda_graph=False)")
        segment = model.config.segment_len
        if piece_len < 1 or piece_len % segment:
            # whole segments leave no pending inputs, so every piece sees the same shapes
            raise ValueError(f"piece_len must be a multiple of segment_len={segment} (> 0), got {piece_len}")
        self.model, self.piece_len, self.precision = model, piece_len, precision
        self.skewed = skewed and (wavefront or compiled) and can_skew(model, piece_len)
        # the graph records its kernels on these streams; they live as long as it does
        self._streams = [torch.cuda.Stream(model.device) for _ in model.layers] if wavefront else None
        self._layers = piece_layers(model, "inductor") if compiled else None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._ids: Tensor | None = None
        self._out: TitansOutput | None = None  # static outputs; .state holds the state buffers

    def run(self, ids: Tensor, state: ModelState) -> TitansOutput:
        """`step` on ids [1, piece_len] from a `graph_ready` state, as a graph replay (captured on the first
        call)."""
        if tuple(ids.shape) != (1, self.piece_len):
            raise ValueError(f"ids must be [1, {self.piece_len}]; got {tuple(ids.shape)}")
        if isinstance(state, SkewedState) != self.skewed:
            raise ValueError(f"this graph runs {'skewed' if self.skewed else 'level'} pieces; the state is "
                             f"{'skewed' if isinstance(state, SkewedState) else 'level'}")
        if not graph_ready(self.model, state):
            raise ValueError("a piece from this state changes the state's structure (the stream start, or a "
                             "MAG/MAL attention tail short of window - 1 rows): run it eagerly")
        if self._out is None:
            self._capture(ids, state)
        if state is not self._out.state:  # not the last replay's state (say an eager piece's): load it
            if _signature(state) != _signature(self._out.state):
                raise ValueError("the state's shapes or dtypes differ from those the graph was captured with")
            _load(self._out.state, state)
        self._ids.copy_(ids)
        self._graph.replay()
        return self._out

    def _step(self, ids: Tensor, state: ModelState) -> TitansOutput:
        with torch.no_grad(), autocast(self.model.device, self.precision, cache_enabled=False):
            if self._streams is not None or self._layers is not None:
                return wavefront_step(self.model, ids, state, self._streams, self._layers, hold=self.skewed)
            return step(self.model, ids, state)

    def _capture(self, ids: Tensor, state: ModelState) -> None:
        """Warm up on a side stream, then capture `step` from static buffers (copies of ids and state; `run`
        loads the true state into them before every replay that does not continue the last one)."""
        static_ids, static_state = ids.clone(), _map_tensors(torch.clone, state)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):  # step is pure: the static state stays as it is
                out = self._step(static_ids, static_state)
        torch.cuda.current_stream().wait_stream(side)
        if _signature(out.state) != _signature(static_state):
            raise RuntimeError("a full piece changed the state's structure, which graph_ready ruled out")
        graph = torch.cuda.CUDAGraph()
        with isolated_capture(ids.device), torch.cuda.graph(graph):
            out = self._step(static_ids, static_state)
            _load(static_state, out.state)
        self._graph, self._ids = graph, static_ids
        self._out = TitansOutput(out.hidden_states, out.logits, static_state)
