"""The memory layer (titans_dna/model/titans_memory.py): it runs through the op, its gates start where
DESIGN.md says, padding never writes, and reads leave the memory as it is."""

from __future__ import annotations

import pytest
import torch

import titans_dna.model.titans_memory as layer_module
from titans_dna.kernels.titans_memory import last_backend, titans_memory
from titans_dna.model import TitansConfig, TitansDNA, TitansMemory


def make_layer(**overrides) -> TitansMemory:
    defaults = dict(d_model=32, n_heads=2, head_dim=16, chunk_size=4, segment_len=8)
    config = TitansConfig(**{**defaults, **overrides})
    return TitansMemory(config).double()


@pytest.mark.parametrize("block", ["mac", "lmm"])
def test_model_runs_the_memory_through_the_op(block, monkeypatch, seed):
    calls = []
    op, read = layer_module.titans_memory, layer_module.memory_read

    def recording_op(*args, **kwargs):
        calls.append(kwargs["backend"])
        return op(*args, **kwargs)

    def recording_read(*args, **kwargs):
        calls.append("read")
        return read(*args, **kwargs)

    monkeypatch.setattr(layer_module, "titans_memory", recording_op)
    monkeypatch.setattr(layer_module, "memory_read", recording_read)
    config = TitansConfig(d_model=32, n_layers=1, n_heads=2, head_dim=16, block=block, chunk_size=4,
                          segment_len=8, memory_backend="naive")
    model = TitansDNA(config).double()
    model(torch.randint(7, 11, (1, 20)))
    segments = 3
    # MAC: read h (one MLP pass, no op), then write y through the op; LMM: one write
    assert calls == (["read", "naive"] * segments if block == "mac" else ["naive"])
    assert last_backend() == "naive"


def test_autocast_runs_the_op_on_half_inputs_with_float32_gates(monkeypatch, seed):
    """Under bf16 autocast the op gets q, k, v in bf16 (its matmuls follow autocast, as a linear layer's) and
    the gates in float32; the model's output stays within bf16 rounding of the float32 model's."""
    seen = []
    op = layer_module.titans_memory

    def recording_op(*args, **kwargs):
        seen.append([t.dtype for t in args[:6]])
        return op(*args, **kwargs)

    monkeypatch.setattr(layer_module, "titans_memory", recording_op)
    config = TitansConfig(d_model=32, n_layers=2, n_heads=2, head_dim=16, chunk_size=4, segment_len=8,
                          memory_backend="naive")
    model = TitansDNA(config).eval()
    ids = torch.randint(7, 11, (1, 40))
    with torch.no_grad():
        ref = model(ids).logits
        assert seen[-1] == [torch.float32] * 6
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids).logits
    assert seen[-1] == [torch.bfloat16] * 3 + [torch.float32] * 3
    assert ((out.float() - ref).norm() / ref.norm()).item() < 2e-2


@pytest.mark.parametrize("depth,activation", [(1, "silu"), (2, "silu"), (3, "gelu")])
def test_read_is_the_op_output_with_nothing_written(depth, activation, seed):
    """memory_read gives what the op outputs with all gates zero (no write), value and gradients."""
    layer = make_layer(memory_depth=depth, memory_activation=activation)
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    valid = torch.ones(2, 10, dtype=torch.bool)
    _, memory = layer.write(layer.features(x, valid, None), None)
    q = layer.query(torch.randn(2, 9, 32, dtype=torch.float64), None).detach().requires_grad_()
    zeros = q.new_zeros(q.shape[:3])
    c = layer.config
    for state in (None, memory):
        op_state = None if state is None else (state[0], tuple(torch.zeros_like(s) for s in state[1]))
        want, _ = titans_memory(q, q, q, zeros, zeros, zeros, list(layer.weights), initial_state=op_state,
                                chunk_size=c.chunk_size, activation=c.memory_activation,
                                output_final_state=False, backend="naive")
        got = layer.read(q, state)
        torch.testing.assert_close(got, want, rtol=0.0, atol=1e-12)
        params = [q, *layer.weights] + ([] if state is None else list(state[0]))
        g_want = torch.autograd.grad(want.sin().sum(), params, retain_graph=True)
        g_got = torch.autograd.grad(got.sin().sum(), params, retain_graph=True)
        for a, b in zip(g_got, g_want, strict=True):
            torch.testing.assert_close(a, b, rtol=0.0, atol=1e-12)


def test_gates_start_at_the_design_values():
    layer = make_layer(theta_max=0.2)
    x = torch.zeros(1, 5, 32, dtype=torch.float64)
    inputs = layer.features(x, torch.ones(1, 5, dtype=torch.bool), None)
    # theta starts at a tenth of its bound, which is theta_max / chunk_size per token
    expected_theta = 0.02 / layer.config.chunk_size
    torch.testing.assert_close(inputs.theta, torch.full_like(inputs.theta, expected_theta))
    torch.testing.assert_close(inputs.eta, torch.full_like(inputs.eta, 0.9 * layer.config.eta_max))
    torch.testing.assert_close(inputs.alpha, torch.full_like(inputs.alpha, 0.01))
    q = inputs.q.norm(dim=-1)
    torch.testing.assert_close(q[q > 0], torch.ones_like(q[q > 0]))


def test_gates_stay_inside_zero_one_and_padding_gets_zero():
    layer = make_layer()
    x = 1e3 * torch.randn(2, 9, 32, dtype=torch.float64)  # saturates the sigmoids
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    inputs = layer.features(x, mask, None)
    c = layer.config
    bounds = ((inputs.theta, c.theta_max / c.chunk_size), (inputs.eta, c.eta_max), (inputs.alpha, 1.0))
    for gate, bound in bounds:
        valid = gate[mask]
        assert valid.min() >= 1e-6 * bound and valid.max() <= (1 - 1e-6) * bound
        assert (gate[~mask] == 0).all()


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_padding_never_writes_and_reads_do_not_change_the_memory(depth, seed):
    layer = make_layer(memory_depth=depth)
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    valid = torch.ones(2, 12, dtype=torch.bool)
    _, memory = layer.write(layer.features(x, valid, None), None)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    padded = layer.features(torch.randn(2, 7, 32, dtype=torch.float64), pad, None)
    _, after = layer.write(padded, memory)
    for w_before, w_after in zip(memory[0], after[0], strict=True):
        torch.testing.assert_close(w_after, w_before, rtol=0.0, atol=1e-12)
    # a read is M_W(q) token by token, whatever the chunking
    q = layer.query(torch.randn(2, 10, 32, dtype=torch.float64), None)
    whole = layer.read(q, memory)
    for t in (0, 3, 9):
        torch.testing.assert_close(whole[:, t], layer.read(q[:, t:t + 1], memory)[:, 0], rtol=0.0, atol=1e-12)


def test_causal_layer_reads_chunk_start_weights(seed):
    """Tokens of the first chunk read W_0; the second chunk reads the memory after the first."""
    layer = make_layer()
    x = torch.randn(1, 8, 32, dtype=torch.float64)
    mask = torch.ones(1, 8, dtype=torch.bool)
    inputs = layer.features(x, mask, None)
    out, tail, memory = layer(x, mask)
    torch.testing.assert_close(out[:, :4], layer.readout(layer.read(inputs.q[:, :4], None)),
                               rtol=0.0, atol=1e-12)
    _, first_chunk = layer.write(inputs.span(0, 4), None)
    torch.testing.assert_close(out[:, 4:], layer.readout(layer.read(inputs.q[:, 4:], first_chunk)),
                               rtol=0.0, atol=1e-12)
    assert tail.shape == (1, 3, 32)
    torch.testing.assert_close(tail, x[:, -3:])


def test_chunk_key_overlap_counts_what_a_chunks_keys_share():
    """r_t = sum over t's chunk (chunks from position 0, padding left out) of |k_t . k_j|: 1 for orthogonal
    keys, the number of copies for identical ones, also in a partial last chunk."""
    eye = torch.eye(4, dtype=torch.float64)
    same = torch.tensor([0.6, -0.8, 0.0, 0.0], dtype=torch.float64)
    k = torch.stack([eye[0], eye[1], eye[2], -eye[3],  # chunk 0: orthogonal (a sign changes nothing)
                     same, same, same, eye[0],  # chunk 1: three copies and one key 0.6 from them
                     same, same, same])[None, :, None, :]  # partial chunk 2, the last key padding
    mask = torch.ones(1, 11, dtype=torch.bool)
    mask[0, 10] = False
    r = layer_module.chunk_key_overlap(k, mask, 4)[0, :, 0]
    expected = [1, 1, 1, 1, 3.6, 3.6, 3.6, 2.8, 2, 2, 0]
    torch.testing.assert_close(r, torch.tensor(expected, dtype=torch.float64).clamp_min(1e-6))


def test_key_normalized_step_shares_theta_max_over_overlapping_keys(seed):
    layer = make_layer(inner_step="key_normalized", theta_max=0.8)
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 7:] = False
    inputs = layer.features(x, mask, None)
    share, eta, _ = layer.gate_values(layer.gates(x), mask)
    r = layer_module.chunk_key_overlap(inputs.k, mask, layer.config.chunk_size)
    torch.testing.assert_close(inputs.theta, 0.8 * share * (1 - eta) / r)
    assert (inputs.theta[~mask] == 0).all()
    assert inputs.theta.max() <= 0.8 and (r[mask] >= 1 - 1e-12).all()
