"""Streaming inference (titans_dna/train/streaming.py, stream_writers.py, `--stream` in the CLI): a region run
piece by piece with the state carried equals the same region run as one forward, for the per-position
log-likelihoods, the per-window embeddings and the pooled embedding; files appear whole or not at all.
The CUDA-graph path (model/graphed.py) is checked here as far as a CPU allows: the forward it captures
never waits on the device and carries the state exactly through static buffers."""

from __future__ import annotations

import functools
import random

import h5py
import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from utils import relative_error

import titans_dna.train.streaming as streaming
from titans_dna.cli import main
from titans_dna.data.bed import Interval
from titans_dna.data.genome import Genome
from titans_dna.data.tokenizer import BASE_IDS
from titans_dna.kernels.titans_memory.common import state_dtype
from titans_dna.model import ModelState, TitansConfig, TitansDNA
from titans_dna.model.blocks import BlockState, MACBlock, MAGBlock, MALBlock
from titans_dna.model.graphed import (
    SkewedState,
    Wavefront,
    _leaves,
    _load,
    _map_tensors,
    _signature,
    autocast_linears,
    can_skew,
    graph_ready,
    piece_layers,
    wavefront_step,
)
from titans_dna.model.graphed import step as graph_step
from titans_dna.model.heads import pool
from titans_dna.train.inference import log_likelihood
from titans_dna.train.stream_writers import stream_embed_file, stream_score_file
from titans_dna.train.streaming import BinPooler, RegionStream

POOLINGS = ("mean", "max", "first", "last")
EXACT = dict(rtol=0.0, atol=1e-10)
F32 = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models: a second intra-op thread only adds synchronisation (3x slower on a busy 2-core box)."""
    before = torch.get_num_threads()
    yield torch.set_num_threads(1)
    torch.set_num_threads(before)


def tiny_model(dtype: torch.dtype = torch.float64, block: str = "mac", window: int = 12) -> TitansDNA:
    # window < segment_len (mag/mal reach across pieces); chunk 4, segment 16: many boundaries in 300 bp
    config = TitansConfig(d_model=32, n_layers=2, n_heads=2, head_dim=16, block=block, chunk_size=4,
                          segment_len=16, n_persistent=2, window=window)
    return TitansDNA(config).to(dtype).eval()


def whole(model: TitansDNA, genome: Genome, region: Interval) -> tuple[torch.Tensor, ...]:
    """(ids [L], hidden [L, d], log p(x_i | x_<i) [L] with NaN at 0 and on non-bases) from ONE forward."""
    ids = genome.fetch_ids(region.chrom, region.start, region.end, region.strand)[0]
    ids = torch.from_numpy(ids.copy()).long()
    with torch.no_grad():
        out = model(ids[None])
    logp = torch.log_softmax(out.logits[0], dim=-1)
    ll = torch.full(ids.shape, float("nan"), dtype=logp.dtype)
    ll[1:] = logp[:-1].gather(1, ids[1:, None])[:, 0]
    ll[~torch.isin(ids, torch.tensor(BASE_IDS))] = float("nan")
    return ids, out.hidden_states[0], ll


def windows_of(hidden: torch.Tensor, stride: int, how: str) -> torch.Tensor:
    ones = torch.ones(1, hidden.shape[0], dtype=torch.bool)
    return torch.cat([pool(hidden[None, i:i + stride], ones[:, i:i + stride], how)
                      for i in range(0, hidden.shape[0], stride)])


@pytest.mark.parametrize("width", [1, 5, 16, 1000])
def test_bin_pooler_in_random_pieces_equals_one_shot(width, seed):
    values = torch.randn(203, 3, dtype=torch.float64)
    cuts = sorted(random.Random(seed).sample(range(1, 203), 9))
    for how in POOLINGS:
        pooler, starts, pooled = BinPooler(how, width), [], []
        for lo, hi in zip([0, *cuts], [*cuts, 203], strict=True):
            s, p = pooler.add(lo, values[lo:hi])
            starts.append(s)
            pooled.append(p)
        tail = pooler.finish()
        if tail is not None:
            starts.append(tail[0])
            pooled.append(tail[1])
        assert torch.equal(torch.cat(starts), torch.arange(0, 203, width))
        torch.testing.assert_close(torch.cat(pooled), windows_of(values, width, how), **EXACT)


@pytest.mark.parametrize("block", ["mac", "mal"])
def test_stream_equals_whole_sequence(block, monkeypatch, seed):
    """Pieces of 2 segments (32 tokens), genome reads of 64 bases, windows of 37 bp straddling pieces."""
    monkeypatch.setattr(streaming, "READ_BASES", 80)
    model = tiny_model(block=block)
    rng = random.Random(seed)
    genome = Genome({"chrA": "".join(rng.choice("ACGTacgtN") for _ in range(331))})
    for region in (Interval("chrA", 0, 331), Interval("chrA", 7, 290, "-")):
        ids, hidden, ll = whole(model, genome, region)
        for how in POOLINGS:
            stream = RegionStream(model, genome, region, stride=37, pooling=how, piece_segments=2)
            pieces = list(stream)
            assert len(pieces) == -(-len(region) // 32)
            torch.testing.assert_close(stream.embedding, windows_of(hidden, len(region), how)[0], **EXACT)
            windows = torch.cat([p.windows for p in pieces])
            torch.testing.assert_close(windows, windows_of(hidden, 37, how), **EXACT)
            assert torch.equal(torch.cat([p.window_starts for p in pieces]), torch.arange(0, len(region), 37))
        streamed = torch.cat([p.loglik for p in pieces])
        torch.testing.assert_close(streamed, ll, equal_nan=True, **EXACT)
        total, scored = log_likelihood(model, ids[None], torch.ones_like(ids[None], dtype=bool))
        assert stream.scored == int(scored) == int((~ll.isnan()).sum())
        assert stream.log_likelihood == pytest.approx(float(ll.nansum()), abs=1e-9)
        assert stream.log_likelihood == pytest.approx(float(total), rel=1e-6)  # inference scores in float32


def initial_state(model: TitansDNA, batch: int = 1) -> ModelState:
    """The stream start as an explicit state, equal in effect to ``state=None``: memory W = W_0 and S = 0
    ([B, H, out, in] in the op's state dtype), zero conv tails, empty MAG/MAL attention tails (None keeps
    no rows either) and no pending inputs."""
    c, device, dtype = model.config, model.device, model.dtype

    def rows(n: int) -> torch.Tensor:
        return torch.zeros(batch, n, c.d_model, device=device, dtype=dtype)

    layers = []
    for layer in model.layers:
        block = layer.block
        ws = tuple(w.to(state_dtype(w)).expand(batch, *w.shape).clone() for w in block.memory.weights)
        layers.append(BlockState(
            memory=(ws, tuple(torch.zeros_like(w) for w in ws)),
            conv_x=rows(c.conv_width - 1),
            conv_y=rows(c.conv_width - 1) if isinstance(block, MACBlock) else None,
            attn=rows(0) if isinstance(block, (MAGBlock, MALBlock)) else None,
            pending=rows(0),
            pending_mask=torch.zeros(batch, 0, dtype=torch.bool, device=device),
        ))
    return ModelState(layers)


class NoSync(TorchFunctionMode):
    """Fails on the tensor calls that make the host wait for the device (which CUDA graph capture forbids)."""

    CALLS = {torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
             torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy,
             torch.Tensor.nonzero, torch.nonzero, torch.Tensor.masked_select, torch.masked_select}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        index = args[1] if func is torch.Tensor.__getitem__ else ()
        masked = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                     for i in (index if isinstance(index, tuple) else (index,)))
        if func in self.CALLS or masked:
            raise AssertionError(f"host-device sync: {getattr(func, '__name__', func)}")
        return func(*args, **(kwargs or {}))


def assert_states_close(state, ref) -> None:
    assert _signature(state) == _signature(ref)
    for a, b in zip(_leaves(state), _leaves(ref), strict=True):
        assert relative_error(b, a) < 1e-10


@pytest.mark.parametrize("block", ["mac", "mag", "mal", "lmm"])
@pytest.mark.parametrize("graphed", [graph_step, wavefront_step], ids=["step", "wavefront"])
def test_sync_free_step_equals_forward(block, graphed, seed):
    """`step` (and its wavefront order over 3-segment pieces) from the explicit start state, piece by piece,
    equals the forward piece by piece from state=None (outputs and states) and the whole sequence in one call,
    and never waits on the device (the forward's input checks do)."""
    model = tiny_model(block=block)
    ids = torch.randint(0, model.config.vocab_size, (1, 4 * 48))
    with torch.no_grad():
        whole = model(ids)
        state, ref_state, hidden, logits = initial_state(model), None, [], []
        for piece in ids.split(48, dim=1):
            with NoSync():
                out = graphed(model, piece, state)
            ref = model(piece, state=ref_state, return_state=True)
            assert relative_error(ref.hidden_states, out.hidden_states) < 1e-10
            assert relative_error(ref.logits, out.logits) < 1e-10
            assert_states_close(out.state, ref.state)
            state, ref_state = out.state, ref.state
            hidden.append(out.hidden_states)
            logits.append(out.logits)
        assert relative_error(whole.hidden_states, torch.cat(hidden, dim=1)) < 1e-10
        assert relative_error(whole.logits, torch.cat(logits, dim=1)) < 1e-10
        with pytest.raises(AssertionError, match="host-device sync"), NoSync():
            model(ids)


@pytest.mark.parametrize("pending, hold", [(False, True), (True, True), (True, False)],
                         ids=["fill", "skewed", "drain"])
def test_skewed_waves_keep_the_order_a_layer_needs(pending, hold):
    """Layer l's segments run in order, each after layer l - 1's on it where that runs in the same pass; a
    pass that both starts and ends skewed runs every layer in every wave (n waves of L steps)."""
    L, n = 3, 5
    steps = list(Wavefront(None, L, n).steps(reverse=False, pending=pending, hold=hold))
    expected = [(layer, s) for layer in range(L)
                for s in range(-layer if pending else 0, n - layer if hold else n)]
    assert sorted(steps) == sorted(expected)
    at = {step: i for i, step in enumerate(steps)}
    for (layer, s), i in at.items():
        for need in ((layer - 1, s), (layer, s - 1)):
            if need in at:
                assert at[need] < i, ((layer, s), need)
    if pending and hold:
        assert len(steps) == n * L and [layer for layer, _ in steps] == list(range(L)) * n
    with pytest.raises(ValueError, match="forward"):
        list(Wavefront(None, L, n).steps(reverse=True, pending=True))


@pytest.mark.parametrize("block", ["mac", "mag", "mal", "lmm"])
def test_skewed_pieces_equal_whole_sequence(block, seed):
    """Skewed passes: a first piece that sets the skew up (from state=None), held pieces (layer l l segments
    behind), then the drain (a shorter last piece, or no new tokens). The outputs, concatenated, equal the
    whole sequence and the drained state the whole sequence's; the held states keep one signature (a graph
    can carry them) and never make the host wait for the device."""
    model = tiny_model(block=block)
    C, L = model.config.segment_len, len(model.layers)
    for tail in (0, 21):
        ids = torch.randint(0, model.config.vocab_size, (1, 4 * 3 * C + tail))
        with torch.no_grad():
            whole = model(ids, return_state=True)
            pieces = list(ids.split(3 * C, dim=1)) + ([] if tail else [ids[:, :0]])
            state, hidden, signature = None, [], None
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                with NoSync():
                    out = wavefront_step(model, piece, state, hold=not last)
                if not last:
                    assert isinstance(out.state, SkewedState) and len(out.state.pending) == L - 1
                    if i:  # from the second piece on, what a graph replays
                        signature = signature or _signature(out.state)
                        assert _signature(out.state) == signature
                    assert out.hidden_states.shape[1] == piece.shape[1] - (0 if i else (L - 1) * C)
                state = out.state
                hidden.append(out.hidden_states)
        assert relative_error(whole.hidden_states, torch.cat(hidden, dim=1)) < 1e-10
        assert not isinstance(state, SkewedState)
        assert_states_close(state, whole.state)
    with pytest.raises(ValueError, match="whole segments"):
        wavefront_step(model, ids[:, :C + 1], None, hold=True)
    with pytest.raises(ValueError, match="n_layers"):
        wavefront_step(model, ids[:, :(L - 1) * C], None, hold=True)


@pytest.mark.parametrize("backend", [None, "aot_eager"])
def test_wavefront_casts_the_linears_once_per_piece(backend, seed):
    """Under bf16 autocast the wavefront gives every layer its nn.Linear parameters cast once per piece
    (`autocast_linears`), eagerly or traced by torch.compile: the same numbers as `step`, where autocast
    casts them at every call, bit for bit."""
    model = tiny_model(torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (1, 3 * model.config.segment_len))
    casts = autocast_linears(model.layers[0], ids.device)
    assert casts == {}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        casts = autocast_linears(model.layers[0], ids.device)
        linears = [m for m in model.layers[0].modules() if isinstance(m, torch.nn.Linear)]
        assert len(casts) == sum(len(list(m.parameters())) for m in linears) > 0
        assert all(t.dtype == torch.bfloat16 for t in casts.values())
        state = graph_step(model, ids, None).state
        ref = graph_step(model, ids, state)
        layers = None if backend is None else piece_layers(model, backend)
        out = wavefront_step(model, ids, state, layers=layers)
    assert torch.equal(out.logits, ref.logits)
    assert_states_close(out.state, ref.state)


@pytest.mark.parametrize("block, window", [("mac", 12), ("mal", 12), ("mag", 48)])
def test_static_buffers_carry_the_stream(block, window, seed):
    """A graph replay emulated on the CPU: pieces run eagerly until `graph_ready`, then `step` reads the
    state from static buffers and its new state is copied back into them. The state keeps its shapes over
    every such piece, and the outputs equal the whole sequence. Pieces of 32 tokens: a 48-token window fills
    its attention tail (47 rows) only after two pieces."""
    model = tiny_model(block=block, window=window)
    ids = torch.randint(0, model.config.vocab_size, (1, 6 * 32))
    assert graph_ready(model, initial_state(model)) == (block == "mac")
    with torch.no_grad():
        whole = model(ids)
        state, buffers, hidden, eager = None, None, [], 0
        for piece in ids.split(32, dim=1):
            if buffers is None and graph_ready(model, state):
                buffers = _map_tensors(torch.clone, state)
            if buffers is None:
                out = model(piece, state=state, return_state=True)
                eager += 1
            else:
                out = graph_step(model, piece, buffers)
                assert _signature(out.state) == _signature(buffers)
                _load(buffers, out.state)
            state = out.state
            hidden.append(out.hidden_states)
        assert eager == (2 if window > 32 else 1)
    assert relative_error(whole.hidden_states, torch.cat(hidden, dim=1)) < 1e-10


class CpuGraph:
    """GraphedPieces without CUDA: the same static buffers (each run overwrites the last run's outputs and
    state), `step` in place of a replay."""

    def __init__(self, model: TitansDNA, piece_len: int, precision: str, wavefront: bool,
                 compiled: bool = False, skewed: bool = True) -> None:
        self.model, self.out, self.runs = model, None, 0
        self.skewed = skewed and (wavefront or compiled) and can_skew(model, piece_len)
        layers = piece_layers(model, "aot_eager") if compiled else None
        wave = functools.partial(wavefront_step, layers=layers, hold=self.skewed)
        self.step = wave if wavefront or compiled else graph_step

    @torch.no_grad()
    def run(self, ids: torch.Tensor, state):
        if self.out is None:
            self.out = _map_tensors(torch.clone, self.step(self.model, ids, state))
        if state is not self.out.state:
            _load(self.out.state, state)
        new = self.step(self.model, ids, self.out.state)
        self.out.hidden_states.copy_(new.hidden_states)
        self.out.logits.copy_(new.logits)
        _load(self.out.state, new.state)
        self.runs += 1
        return self.out


@pytest.mark.parametrize("block", ["mac", "mal"])
@pytest.mark.parametrize("mode", ["layers", "level", "wavefront", "compiled"])
@pytest.mark.parametrize("length", [300, 320], ids=["short-last", "full-last"])
def test_graphed_stream_equals_eager_stream(block, mode, length, monkeypatch, seed):
    """RegionStream with the graph path (CpuGraph standing in for the CUDA graph; "compiled": the layers
    traced by torch.compile, whole graphs, without inductor): pieces of 32 tokens, the first eager, the
    same log-likelihoods, windows and embedding as eagerly. "wavefront" and "compiled" run skewed ("level":
    the wavefront not skewed): the outputs lag a segment, and the end drains them, after a shorter last piece
    (eager) or a full one (a replay, then the drain on no new tokens)."""
    monkeypatch.setattr(streaming, "GraphedPieces", CpuGraph)
    model = tiny_model(block=block)
    genome = Genome({"chrA": "".join(random.Random(seed).choice("ACGTN") for _ in range(length))})
    region = Interval("chrA", 0, length)
    streams = [RegionStream(model, genome, region, stride=37, piece_segments=2, cuda_graph=graph,
                            wavefront=mode in ("level", "wavefront"), compiled=mode == "compiled",
                            skewed=mode != "level")
               for graph in (False, True)]
    eager, graphed = (list(stream) for stream in streams)
    assert streams[1].graphed.runs == length // 32 - 1
    assert streams[1].graphed.skewed == (mode in ("wavefront", "compiled"))
    for key in ("loglik", "windows"):
        torch.testing.assert_close(torch.cat([getattr(p, key) for p in graphed]),
                                   torch.cat([getattr(p, key) for p in eager]), equal_nan=True, **EXACT)
    assert torch.equal(torch.cat([p.window_starts for p in graphed]), torch.arange(0, length, 37))
    torch.testing.assert_close(streams[1].embedding, streams[0].embedding, **EXACT)
    assert streams[1].log_likelihood == pytest.approx(streams[0].log_likelihood, rel=1e-12)


def test_streams_of_a_model_share_one_graph(monkeypatch, seed):
    """Every stream of a model replays the one graph captured first (a capture per stream leaked GPU memory);
    a later stream, on other bases, loads its own state into the shared buffers and matches eager streaming.
    Weights in new storage get a new graph."""
    monkeypatch.setattr(streaming, "GraphedPieces", CpuGraph)
    model = tiny_model()
    rng = random.Random(seed)
    genome = Genome({name: "".join(rng.choice("ACGT") for _ in range(200)) for name in ("chrA", "chrB")})
    first, second = (RegionStream(model, genome, Interval(name, 0, 200), piece_segments=2, cuda_graph=True)
                     for name in ("chrA", "chrB"))
    assert first.graphed is second.graphed
    list(first)
    graphed = list(second)
    eager = list(RegionStream(model, genome, Interval("chrB", 0, 200), piece_segments=2, cuda_graph=False))
    torch.testing.assert_close(torch.cat([p.loglik for p in graphed]), torch.cat([p.loglik for p in eager]),
                               equal_nan=True, **EXACT)
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
    assert RegionStream(model, genome, Interval("chrA", 0, 200), piece_segments=2,
                        cuda_graph=True).graphed is not first.graphed


def test_cuda_graph_needs_a_cuda_model():
    model = tiny_model(torch.float32)
    genome = Genome({"chrA": "ACGT" * 40})
    region = Interval("chrA", 0, 160)
    assert RegionStream(model, genome, region, piece_segments=2).graphed is None  # auto: eager on CPU
    with pytest.raises(ValueError, match="CUDA graphs need the model on a CUDA device"):
        RegionStream(model, genome, region, piece_segments=2, cuda_graph=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("block, precision", [("mac", "fp32"), ("mac", "bf16"), ("mal", "bf16")])
@pytest.mark.parametrize("mode", ["layers", "wavefront", "compiled"])
def test_cuda_graph_stream_equals_eager_stream(block, precision, mode, seed):
    """On a GPU: the captured graph (Triton memory path; layers on their own streams with "wavefront", and
    through inductor with "compiled"; both skewed) streams the same numbers as the eager pieces, over 14 full
    pieces of 4 segments and a shorter last one: float32 element by element, bf16 norm-wise (a compiled
    graph rounds elsewhere than eager kernels, so single elements of a bf16 run may stray further)."""
    model = tiny_model(torch.float32, block=block).cuda()
    genome = Genome({"chrA": "".join(random.Random(seed).choice("ACGTN") for _ in range(1000))})
    region = Interval("chrA", 0, 1000)
    streams = [RegionStream(model, genome, region, stride=37, piece_segments=4, precision=precision,
                            cuda_graph=graph, wavefront=mode != "layers", compiled=mode == "compiled")
               for graph in (False, True)]
    eager, graphed = (list(stream) for stream in streams)
    assert streams[1].graphed.skewed == (mode != "layers")
    pairs = {key: (torch.cat([getattr(p, key) for p in graphed]), torch.cat([getattr(p, key) for p in eager]))
             for key in ("loglik", "windows")}
    pairs["embedding"] = streams[1].embedding, streams[0].embedding
    assert torch.equal(pairs["loglik"][0].isnan(), pairs["loglik"][1].isnan())
    tol = 1e-5 if precision == "fp32" else 1e-2
    for key, (out, ref) in pairs.items():
        if precision == "fp32":
            torch.testing.assert_close(out, ref, equal_nan=True, **F32)
        assert relative_error(ref.nan_to_num(), out.nan_to_num()) < tol, key
    assert streams[1].log_likelihood == pytest.approx(streams[0].log_likelihood, rel=tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_streams_leave_no_memory_behind(seed):
    """Streams after the first (which captures the model's graph) hold no more GPU memory when done."""
    model = tiny_model(torch.float32).cuda()
    genome = Genome({"chrA": "".join(random.Random(seed).choice("ACGT") for _ in range(1000))})
    held = []
    for _ in range(4):
        list(RegionStream(model, genome, Interval("chrA", 0, 1000), piece_segments=2, cuda_graph=True))
        torch.cuda.synchronize()
        held.append(torch.cuda.memory_allocated())
    assert held[1:] == [held[1]] * 3, held


def test_files_hold_the_stream(tmp_path, seed):
    """HDF5 embeddings, HDF5 and bedGraph tracks (binned), genome coordinates on both strands."""
    model = tiny_model(torch.float32)
    rng = random.Random(seed)
    chr_b = [rng.choice("ACGTN") for _ in range(90)]
    for j in range(12):  # one base in every 7-bp bin of chrB:10-90(-) is scored (stream offset 7j + 1)
        chr_b[88 - 7 * j] = rng.choice("ACGT")
    genome = Genome({"chrA": "".join(rng.choice("ACGT") for _ in range(250)), "chrB": "".join(chr_b)})
    regions = [Interval("chrA", 0, 250), Interval("chrB", 10, 90, "-")]
    kw = dict(piece_segments=3, progress=False)
    stream_embed_file(model, genome, regions, tmp_path / "emb.h5", stride=30, **kw)
    stream_score_file(model, genome, regions, tmp_path / "ll.h5", stride=7, **kw)
    stream_score_file(model, genome, regions, tmp_path / "ll.bedGraph", stride=7, **kw)
    with h5py.File(tmp_path / "emb.h5") as emb, h5py.File(tmp_path / "ll.h5") as ll:
        assert list(emb["names"].asstr()) == list(ll["names"].asstr()) == ["chrA", "chrB:10-90(-)"]
        assert list(emb["window_offsets"]) == [0, 9, 12] and list(ll["track_offsets"]) == [0, 36, 48]
        for i, region in enumerate(regions):
            ids, hidden, per_base = whole(model, genome, region)
            window = slice(*emb["window_offsets"][i:i + 2])
            np.testing.assert_allclose(emb["windows"][window], windows_of(hidden, 30, "mean"), **F32)
            np.testing.assert_allclose(emb["embeddings"][i], hidden.mean(0), **F32)
            bins = [per_base[j:j + 7] for j in range(0, len(ids), 7)]
            expected = torch.stack([b[~b.isnan()].mean() for b in bins])
            np.testing.assert_allclose(ll["track"][slice(*ll["track_offsets"][i:i + 2])], expected, **F32)
            assert ll["log_likelihood"][i] == pytest.approx(float(per_base.nansum()), rel=1e-5)
        # chrB's reverse strand: its first window is the genome's last 30 bases of the region
        assert (emb["window_start"][9], emb["window_end"][9], emb["window_start"][11]) == (60, 90, 10)
        track = ll["track"][:]
    lines = [line.split("\t") for line in (tmp_path / "ll.bedGraph").read_text().splitlines()]
    assert len(lines) == 48  # every bin has a scored base
    assert lines[0][:3] == ["chrA", "0", "7"] and lines[-1][:3] == ["chrB", "10", "13"]
    np.testing.assert_allclose([float(v) for *_, v in lines[:36]], track[:36], rtol=1e-5)


def test_outputs_are_atomic(tmp_path):
    """An error in the second region leaves the previous output untouched and no temporary file behind."""

    class Failing(Genome):
        def fetch_ids(self, chrom, start, end, strand="+"):
            if chrom == "chrB":
                raise OSError("disk went away")
            return super().fetch_ids(chrom, start, end, strand)

    model = tiny_model(torch.float32)
    genome = Failing({"chrA": "ACGT" * 30, "chrB": "ACGT" * 30})
    regions = [Interval("chrA", 0, 120), Interval("chrB", 0, 120)]
    for name, write in (("emb.h5", stream_embed_file), ("ll.h5", stream_score_file),
                        ("ll.bedGraph", stream_score_file)):
        (tmp_path / name).write_text("previous")
        with pytest.raises(OSError, match="disk went away"):
            write(model, genome, regions, tmp_path / name, progress=False)
        assert (tmp_path / name).read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.h5", "ll.bedGraph", "ll.h5"]


def test_cli_stream_on_phage_lambda(data_dir, tmp_path, capsys):
    """`embed --stream` and `score --stream` over a 3 kb slice of phage lambda (FASTA and BED input); the
    streamed log-likelihood equals the plain `score` command's."""
    lam = data_dir / "genomes" / "phage_lambda_NC_001416.fa"
    name = next(iter(Genome(lam).records))
    seq = Genome(lam).fetch(name, 20000, 23000)
    (tmp_path / "slice.fa").write_text(f">lambda_slice\n{seq}\n")
    (tmp_path / "slice.bed").write_text(f"{name}\t20000\t23000\n")
    torch.manual_seed(0)
    model = TitansDNA(TitansConfig(d_model=32, n_layers=2, n_heads=2, head_dim=16, chunk_size=8,
                                   segment_len=32, n_persistent=2))
    model.save_pretrained(tmp_path / "model")
    common = ["--checkpoint", str(tmp_path / "model"), "--device", "cpu", "--no-progress"]
    assert main(["embed", str(tmp_path / "slice.fa"), "--out", str(tmp_path / "emb.h5"), "--stream",
                 "--stride", "500", "--piece-segments", "4", "--no-cuda-graph", *common]) == 0
    assert main(["score", "--bed", str(tmp_path / "slice.bed"), "--reference", str(lam), "--stream",
                 "--out", str(tmp_path / "ll.h5"), "--stride", "100", *common]) == 0
    assert main(["score", str(tmp_path / "slice.fa"), "--out", str(tmp_path / "plain.tsv"), *common]) == 0
    with h5py.File(tmp_path / "emb.h5") as emb, h5py.File(tmp_path / "ll.h5") as ll:
        assert emb["windows"].shape == (6, 32) and emb["embeddings"].shape == (1, 32)
        assert list(emb["window_end"]) == list(range(500, 3001, 500))
        assert ll["track"].shape == (30,) and np.isfinite(ll["track"][:]).all()
        assert list(ll["chrom"].asstr()) == [name] and ll["start"][0] == 20000 and ll["end"][0] == 23000
        streamed = float(ll["log_likelihood"][0])
    header, row = (tmp_path / "plain.tsv").read_text().splitlines()
    plain = float(dict(zip(header.split("\t"), row.split("\t"), strict=True))["log_likelihood"])
    assert streamed == pytest.approx(plain, rel=1e-5)
    assert "records streamed" in capsys.readouterr().out
