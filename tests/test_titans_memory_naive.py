"""The two plain-PyTorch paths of the titans_memory op against each other, autograd and gradcheck."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from utils import assert_close, memory_args, memory_inputs

import titans_dna.kernels.titans_memory as tm
from titans_dna.kernels.titans_memory.common import (
    activation_and_derivative,
    chunk_gate_coefficients,
    inner_grad_factors,
    mlp_forward,
    weighted_outer_sum,
)
from titans_dna.kernels.titans_memory.naive import naive_chunk_titans_memory, naive_recurrent_titans_memory

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}

# (depth, expansion, activation, T, head dim, chunk, initial state): awkward T, partial last chunks,
# a chunk larger than T, each depth/expansion/activation with and without a state
CASES = [
    (1, 1, "silu", 63, 16, 16, False),
    (1, 1, "gelu", 75, 32, 8, True),
    (2, 2, "silu", 130, 16, 32, True),
    (2, 4, "gelu", 63, 32, 16, False),
    (2, 2, "gelu", 75, 16, 64, False),
    (3, 2, "gelu", 75, 16, 7, True),
    (3, 4, "silu", 130, 16, 64, False),
]


@pytest.fixture(autouse=True)
def _one_thread():
    # tensors here are tiny: extra OpenMP threads only spin against each other and other jobs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _compare(prefix: str, ref: tuple, out: tuple, tol: float) -> float:
    """Compare (o, (W, S)) pairs tensor by tensor; returns the largest relative error."""
    (o_ref, (w_ref, s_ref)), (o, (w, s)) = ref, out
    errs = [assert_close(f"{prefix} o", o_ref, o, tol)]
    for i, (a, b, c, d) in enumerate(zip(w_ref, w, s_ref, s, strict=True), start=1):
        errs += [assert_close(f"{prefix} W_{i}", a, b, tol), assert_close(f"{prefix} S_{i}", c, d, tol)]
    return max(errs)


@pytest.mark.parametrize("depth,expansion,activation,T,D,chunk,with_state", CASES)
def test_chunk_one_is_exact_recurrence(seed, depth, expansion, activation, T, D, chunk, with_state):
    x = memory_inputs(2, T, 2, D, depth, expansion, with_state=with_state)
    args, kw = memory_args(x)
    ref = naive_recurrent_titans_memory(*args, **kw, chunk_size=1, activation=activation)
    out = naive_chunk_titans_memory(*args, **kw, chunk_size=1, activation=activation)
    _compare("chunk=1", ref, out, TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("depth,expansion,activation,T,D,chunk,with_state", CASES)
def test_chunk_matches_recurrent(seed, dtype, depth, expansion, activation, T, D, chunk, with_state):
    # reference: the per-token loop with chunk-start gradients, always in float64
    x = memory_inputs(2, T, 2, D, depth, expansion, with_state=with_state)
    args, kw = memory_args(x)
    ref = naive_recurrent_titans_memory(*args, **kw, chunk_size=chunk, activation=activation)
    args, kw = memory_args({name: t.to(dtype) for name, t in x.items()})
    o, state = naive_chunk_titans_memory(*args, **kw, chunk_size=chunk, activation=activation)
    assert o.dtype == dtype and state[0][0].dtype == dtype
    print(f"max relative error {_compare(f'chunk={chunk} {dtype}', ref, (o, state), TOL[dtype]):.2e}")


@pytest.mark.parametrize("activation", ["silu", "gelu"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_inner_gradient_matches_autograd(seed, depth, activation):
    x = memory_inputs(3, 9, 2, 8, depth, expansion=3)
    ws = [x[f"W0_{i}"].unsqueeze(0).repeat(3, 1, 1, 1).requires_grad_() for i in range(1, depth + 1)]
    k, v = x["k"].transpose(1, 2), x["v"].transpose(1, 2)
    weight = torch.rand(3, 2, 9, dtype=torch.float64)  # per-token weights: checks each token's gradient
    loss = (weight * 0.5 * (mlp_forward(ws, k, activation)[0] - v).pow(2).sum(-1)).sum()
    expected = torch.autograd.grad(loss, ws)
    gs, hs = inner_grad_factors([w.detach() for w in ws], k, v, activation)
    for i, (e, g, h) in enumerate(zip(expected, gs, hs, strict=True), start=1):
        assert_close(f"dl/dW_{i}", e, weighted_outer_sum(g, h, weight), 1e-13)


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_activation_and_derivative(seed, activation):
    z = 4 * torch.randn(200, dtype=torch.float64, requires_grad=True)
    act, dact = activation_and_derivative(z, activation)
    torch_act = F.silu(z) if activation == "silu" else F.gelu(z, approximate="none")
    assert_close("act", torch_act, act, 1e-14)
    assert_close("act'", torch.autograd.grad(torch_act.sum(), z)[0], dact, 1e-14)


def test_gate_coefficients_match_products(seed):
    b = 11
    theta, eta, alpha = torch.rand(3, b, dtype=torch.float64).unbind(0)
    A, E, G, m, c = chunk_gate_coefficients(theta, eta, alpha)
    a = 1 - alpha

    def prod(x, lo, hi):  # product over tokens lo..hi-1 (empty = 1)
        return x[lo:hi].prod()

    G_ref = sum(prod(a, t + 1, b) * prod(eta, 0, t + 1) for t in range(b))
    m_ref = torch.stack([prod(eta, i + 1, b) for i in range(b)])
    c_ref = torch.stack([theta[i] * sum(prod(a, t + 1, b) * prod(eta, i + 1, t + 1) for t in range(i, b))
                         for i in range(b)])
    for name, ref, out in [("A", a.prod(), A), ("E", eta.prod(), E), ("G", G_ref, G), ("m", m_ref, m),
                           ("c", c_ref, c)]:
        assert_close(name, ref, out, 1e-14)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("op,chunk,activation", [
    (naive_chunk_titans_memory, 2, "silu"),
    (naive_chunk_titans_memory, 3, "gelu"),
    (naive_recurrent_titans_memory, 1, "gelu"),
])
def test_gradcheck(seed, op, chunk, activation, with_state):
    x = memory_inputs(1, 5, 1, 3, depth=2, expansion=2, with_state=with_state, requires_grad=True)
    names = list(x)

    def fn(*tensors):
        args, kw = memory_args(dict(zip(names, tensors, strict=True)))
        o, (ws, ss) = op(*args, **kw, chunk_size=chunk, activation=activation)
        return (o, *ws, *ss)

    assert torch.autograd.gradcheck(fn, tuple(x.values()), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("depth,expansion,activation,T,D,chunk,with_state", [CASES[1], CASES[2], CASES[5]])
def test_gradients_chunk_match_recurrent(seed, depth, expansion, activation, T, D, chunk, with_state):
    x = memory_inputs(2, T, 2, D, depth, expansion, with_state=with_state, requires_grad=True)
    args, kw = memory_args(x)
    grads = []
    cotangents = None
    for op in (naive_recurrent_titans_memory, naive_chunk_titans_memory):
        o, (ws, ss) = op(*args, **kw, chunk_size=chunk, activation=activation)
        outs = (o, *ws, *ss)
        cotangents = cotangents or [torch.randn_like(t) for t in outs]
        grads.append(torch.autograd.grad(outs, list(x.values()), cotangents, allow_unused=True))
    for name, ref, out in zip(x, *grads, strict=True):
        if name.startswith("W0_") and with_state:
            assert ref is None and out is None, f"{name}: W_0 only fixes shapes when a state is given"
        else:
            assert_close(f"d{name}", ref, out, 1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("op", [naive_chunk_titans_memory, naive_recurrent_titans_memory])
def test_zero_gates_freeze_memory(seed, op, dtype):
    """Padding (theta = eta = alpha = 0) after 21 real tokens: W stays, momentum drops, nothing is NaN."""
    T, real, chunk = 40, 21, 8
    x = memory_inputs(2, T, 2, 8, depth=2, with_state=True, dtype=dtype, requires_grad=True)
    pad = torch.zeros(2, T - real, 2, dtype=dtype)
    gates = {n: torch.cat([x[n][:, :real], pad], dim=1) for n in ("theta", "eta", "alpha")}
    args, kw = memory_args({**x, **gates})
    o, (ws, ss) = op(*args, **kw, chunk_size=chunk)
    prefix, kw_prefix = memory_args({n: t[:, :real] if t.dim() == 4 and t.shape[1] == T else
                                     (t[:, :real] if t.dim() == 3 else t) for n, t in x.items()})
    o_ref, (ws_ref, _) = op(*prefix, **kw_prefix, chunk_size=chunk)
    assert_close("o (real tokens)", o_ref, o[:, :real], 1e-12 if dtype == torch.float64 else 1e-6)
    for i, (w, w_ref, s) in enumerate(zip(ws, ws_ref, ss, strict=True), start=1):
        assert_close(f"W_{i}", w_ref, w, 1e-12 if dtype == torch.float64 else 1e-6)
        assert s.abs().max() < 1e-30, f"S_{i} must be dropped by eta = 0"
    grads = torch.autograd.grad((o.sum() + sum(w.sum() for w in ws)), list(x.values()), allow_unused=True)
    for name, g in zip(x, grads, strict=True):
        assert g is None or torch.isfinite(g).all(), f"d{name} has NaN/inf"


def test_all_zero_gates_keep_initial_weights(seed):
    x = memory_inputs(1, 70, 2, 8, depth=3)
    args, kw = memory_args({**x, **{n: torch.zeros_like(x[n]) for n in ("theta", "eta", "alpha")}})
    o, (ws, ss) = naive_chunk_titans_memory(*args, **kw, chunk_size=16)
    for i, (w, s) in enumerate(zip(ws, ss, strict=True), start=1):
        assert torch.equal(w, x[f"W0_{i}"].expand_as(w)) and not s.any(), f"layer {i} changed"
    assert torch.isfinite(o).all()


def test_long_run_stays_finite(seed):
    """4096 tokens with the default gate levels: finite, and float32 tracks float64."""
    B, T, H, D = 1, 4096, 2, 32
    x = memory_inputs(B, T, H, D, depth=2, expansion=2, dtype=torch.float64)
    x["theta"] = 0.02 * torch.sigmoid(torch.randn(B, T, H, dtype=torch.float64))  # ~0.01
    x["eta"] = torch.sigmoid(2.2 + 0.5 * torch.randn(B, T, H, dtype=torch.float64))  # ~0.9
    x["alpha"] = torch.sigmoid(-4.6 + 0.5 * torch.randn(B, T, H, dtype=torch.float64))  # ~0.01
    args, kw = memory_args(x)
    ref = naive_chunk_titans_memory(*args, **kw, chunk_size=64)
    args, kw = memory_args({n: t.float().requires_grad_() for n, t in x.items()})
    out = naive_chunk_titans_memory(*args, **kw, chunk_size=64)
    print(f"max relative error float32 vs float64: {_compare('long', ref, out, 1e-5):.2e}")
    out[0].sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in args[:6])


def test_dispatcher(seed, monkeypatch, caplog):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(tm, "_fallbacks_logged", set())
    x = memory_inputs(1, 20, 2, 8, depth=2, dtype=torch.float32)
    args, kw = memory_args(x)
    expected = naive_chunk_titans_memory(*args, **kw, chunk_size=8)[0]
    with caplog.at_level(logging.INFO, logger=tm.__name__):
        for backend in ("auto", "auto", "naive"):
            o, state = tm.titans_memory(*args, **kw, chunk_size=8, backend=backend, output_final_state=False)
            assert tm.last_backend() == "naive" and state is None
            assert torch.equal(o, expected)
    assert sum("PyTorch reference" in r.message for r in caplog.records) == 1
    with pytest.raises(RuntimeError, match="CUDA"):
        tm.titans_memory(*args, **kw, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        tm.titans_memory(*args, **kw, backend="cuda")


def test_bad_inputs_name_shapes():
    x = memory_inputs(1, 4, 2, 8, depth=2)
    args, kw = memory_args(x)
    with pytest.raises(ValueError, match=r"\[H, E, D\]"):
        naive_chunk_titans_memory(*args[:6], [args[6][0]] * 2)
    with pytest.raises(ValueError, match="theta"):
        naive_chunk_titans_memory(args[0], args[1], args[2], args[3][:, :2], *args[4:])
    with pytest.raises(ValueError, match="activation"):
        naive_recurrent_titans_memory(*args, activation="relu")


def test_low_precision_inputs_keep_fp32_state(seed):
    x = memory_inputs(1, 33, 2, 16, depth=2, dtype=torch.float32)
    args, kw = memory_args(x)
    ref = naive_chunk_titans_memory(*args, **kw, chunk_size=16)
    args, kw = memory_args({n: t.bfloat16() for n, t in x.items()})
    o, (ws, ss) = naive_chunk_titans_memory(*args, **kw, chunk_size=16)
    assert o.dtype == torch.bfloat16 and all(t.dtype == torch.float32 for t in (*ws, *ss))
    assert_close("o bf16", ref[0], o, 2e-2)
