"""Pieces shared by every path of the titans_memory op: checks, state, memory MLP, inner gradient, gates.

Imports only torch, so the Triton paths and their tests can reuse the same math.
Internal layout is head-major: tokens [B, H, N, D], state [B, H, out, in] (see README.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

MemoryState = tuple[tuple[Tensor, ...], tuple[Tensor, ...]]
ACTIVATIONS = ("silu", "gelu")
MAX_DEPTH = 4

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def state_dtype(x: Tensor) -> torch.dtype:
    """W and S accumulate in float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_inputs(q: Tensor, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
                 weights: Sequence[Tensor], initial_state: MemoryState | None, chunk_size: int,
                 activation: str) -> None:
    """Raise ValueError naming the offending shapes/arguments; conventions in this folder's README.md."""
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one shape [B, T, H, D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, T, H, D = q.shape
    for name, g in (("theta", theta), ("eta", eta), ("alpha", alpha)):
        if g.shape != (B, T, H):
            raise ValueError(f"{name} must be [B, T, H] = {(B, T, H)}; got {tuple(g.shape)}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
    check_memory(q, weights, initial_state, activation)


def check_memory(q: Tensor, weights: Sequence[Tensor], state: MemoryState | None, activation: str) -> None:
    """The checks on queries q [B, T, H, D], the memory's weights, its state and activation (ValueError)."""
    if q.dim() != 4:
        raise ValueError(f"q must be [B, T, H, D]; got {tuple(q.shape)}")
    B, T, H, D = q.shape
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")
    depth = len(weights)
    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"memory depth must be 1..{MAX_DEPTH}; got {depth} weight tensors")
    shapes = [tuple(w.shape) for w in weights]
    if depth == 1:
        ok = shapes[0] == (H, D, D)
    else:
        E = shapes[0][1] if len(shapes[0]) == 3 else -1
        want = [(H, E, D)] + [(H, E, E)] * (depth - 2) + [(H, D, E)]
        ok = shapes == want
    if not ok:
        raise ValueError(f"weights for depth {depth} with H={H}, D={D} must be [H, E, D], [H, E, E]..., "
                         f"[H, D, E] (depth 1: [H, D, D]); got {shapes}")
    if state is not None:
        ws, ss = state
        want_state = [(B, *s) for s in shapes]
        got_w, got_s = [tuple(w.shape) for w in ws], [tuple(s.shape) for s in ss]
        if got_w != want_state or got_s != want_state:
            raise ValueError(f"initial_state must be (W, S) with shapes {want_state}; "
                             f"got W {got_w}, S {got_s}")


def init_state(weights: Sequence[Tensor], dtype: torch.dtype, initial_state: MemoryState | None,
               ) -> tuple[list[Tensor], list[Tensor]]:
    """(W, S) lists in `dtype`: the given state ([B, H, out, in]), or W_0 and S = 0 as [1, H, out, in].

    The batch-1 start broadcasts: a [B, H, out, in] copy of W_0 would be materialised again by every
    matmul that reads it and kept for the backward; the first chunk update gives [B, H, out, in].
    Casts are differentiable, so gradients reach W_0 and the initial state.
    """
    if initial_state is not None:
        return [w.to(dtype) for w in initial_state[0]], [s.to(dtype) for s in initial_state[1]]
    ws = [w.to(dtype).unsqueeze(0) for w in weights]
    return ws, [torch.zeros_like(w) for w in ws]


def activation_and_derivative(z: Tensor, activation: str) -> tuple[Tensor, Tensor]:
    """act(z) and act'(z), written with plain ops so the outer autograd yields act'' through them."""
    if activation == "silu":
        s = torch.sigmoid(z)
        return z * s, s * (1.0 + z * (1.0 - s))
    # exact erf gelu: x Phi(x), derivative Phi(x) + x phi(x)
    cdf = 0.5 * (1.0 + torch.erf(z * _INV_SQRT2))
    pdf = torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
    return z * cdf, cdf + z * pdf


def _linear(x: Tensor, w: Tensor) -> Tensor:
    # rows x [.., N, in] times W [.., out, in] -> [.., N, out]. einsum, not matmul: W shared over the batch
    # ([H, out, in] or [1, H, out, in]) then stays one matrix per head instead of a copy per batch row.
    return torch.einsum("...ni,...oi->...no", x, w)


def _backprop(g: Tensor, w: Tensor) -> Tensor:
    # rows g [.., N, out] times W [.., out, in] -> [.., N, in] (g W), with _linear's broadcasting
    return torch.einsum("...no,...oi->...ni", g, w)


def activation_only(z: Tensor, activation: str) -> Tensor:
    """act(z) alone, as one op that saves only z for the backward (reads and outputs need no act')."""
    return F.silu(z) if activation == "silu" else F.gelu(z)


def mlp_forward(ws: Sequence[Tensor], x: Tensor, activation: str, derivatives: bool = True,
                ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Memory MLP M_W(x) with what the inner gradient needs.

    Args:
        ws: per layer [B, H, out, in] (batch 1 or [H, out, in]: the same weights for every batch row).
        x: [B, H, N, D] rows.
        derivatives: also compute act'(z_l); False for outputs, which need no inner gradient (then
            `dacts` is empty and each activation is one op, which keeps less for the outer backward).
    Returns:
        y [B, H, N, D]; `inputs[l]` = input rows of layer l ([B, H, N, in_l]); `dacts[l]` = act'(z_l)
        for each hidden layer l < L-1 (z_l its pre-activation). Depth 1 is W x, depth >= 2 adds x.
    """
    if len(ws) == 1:
        return _linear(x, ws[0]), [x], []
    inputs, dacts, h = [], [], x
    for w in ws[:-1]:
        inputs.append(h)
        if derivatives:
            h, dact = activation_and_derivative(_linear(h, w), activation)
            dacts.append(dact)
        else:
            h = activation_only(_linear(h, w), activation)
    inputs.append(h)
    return x + _linear(h, ws[-1]), inputs, dacts


def memory_read(q: Tensor, weights: Sequence[Tensor], state: MemoryState | None, activation: str) -> Tensor:
    """M_W(q) [B, T, H, D] for every token: the op's output when no write happens (all gates zero).

    W are the state's weights ([B, H, out, in]), or W_0 = `weights` ([H, out, in]) for every sequence when
    state is None. One MLP evaluation in the state dtype, nothing of the inner loop: no inner gradients,
    no chunk updates (which a zero-gate run of the op computes, and keeps for the backward, only to
    multiply them by zero), and no per-sequence copy of W_0.
    """
    check_memory(q, weights, state, activation)
    dtype = state_dtype(q)
    ws = [w.to(dtype) for w in (weights if state is None else state[0])]
    y = mlp_forward(ws, q.transpose(1, 2).to(dtype), activation, derivatives=False)[0]
    return y.transpose(1, 2).to(q.dtype)


def inner_grad_factors(ws: Sequence[Tensor], k: Tensor, v: Tensor, activation: str,
                       ) -> tuple[list[Tensor], list[Tensor]]:
    """Explicit gradient of l(W) = 1/2 ||M_W(k) - v||^2 per token, as outer-product factors.

    Args:
        ws: per layer [B, H, out, in]; k, v: [B, H, N, D].
    Returns:
        (gs, hs): for layer l, grad_{W_l} l_n = outer(gs[l][n], hs[l][n]) with gs[l] [B, H, N, out_l]
        and hs[l] [B, H, N, in_l]. The residual adds nothing to the weight gradients, only to dM/dk.
    """
    y, hs, dacts = mlp_forward(ws, k, activation)
    g = y - v
    gs = [g]
    for layer in range(len(ws) - 2, -1, -1):
        # back through W_{l+1}: dL/dh_l = g_{l+1} W_{l+1}, then through act at z_l
        g = _backprop(g, ws[layer + 1]) * dacts[layer]
        gs.append(g)
    return gs[::-1], hs


def weighted_outer_sum(g: Tensor, h: Tensor, coeff: Tensor) -> Tensor:
    """sum_n coeff[n] outer(g[n], h[n]) = (coeff * g)^T h.

    g [B, H, N, out], h [B, H, N, in], coeff [B, H, N] -> [B, H, out, in].
    """
    return (g * coeff.unsqueeze(-1)).transpose(-1, -2) @ h


def segsum(x: Tensor) -> Tensor:
    """Segment sums P[t, i] = sum_{i < j <= t} x_j for t >= i, -inf above the diagonal.

    x: [..., n] -> [..., n, n]. Built from a masked cumsum rather than a difference of prefix sums, so
    short segments do not lose precision to cancellation (as mamba2's segsum).
    """
    n = x.shape[-1]
    rows = x.unsqueeze(-1).expand(*x.shape, n)  # rows[..., j, i] = x_j
    lower = torch.ones(n, n, dtype=torch.bool, device=x.device).tril(0)
    out = rows.masked_fill(~lower.tril(-1), 0.0).cumsum(dim=-2)
    return out.masked_fill(~lower, float("-inf"))


def chunk_gate_coefficients(theta: Tensor, eta: Tensor, alpha: Tensor,
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Coefficients that collapse one chunk of the momentum recurrence (DESIGN.md, README.md).

    With a_t = 1 - alpha_t and u_i the per-token gradients at the chunk-start weights:
    W_end = A W_c + G S_c - sum_i c_i u_i and S_end = E S_c - sum_i m_i theta_i u_i.

    Args:
        theta, eta, alpha: [..., b], the chunk's tokens on the last axis (any b >= 1).
    Returns:
        A, E, G: [...]; m, c: [..., b]; in the gates' dtype. Products run in log space with gates clamped
        to the smallest normal number, so exact 0/1 gates (padding) give exact-enough zeros and no NaN.
    """
    tiny = torch.finfo(theta.dtype).tiny
    log_a = torch.log(torch.clamp(1.0 - alpha, min=tiny))
    log_e = torch.log(torch.clamp(eta, min=tiny))
    zero = torch.zeros_like(log_a[..., :1])
    # index 0 stands for "before the chunk", so P[t, 0] is the product over tokens 1..t
    pa = segsum(torch.cat([zero, log_a], dim=-1))
    pe = segsum(torch.cat([zero, log_e], dim=-1))
    after = pa[..., -1, :]  # after[t] = log prod_{j > t} a_j, t = 0..b
    # q[t, i] = log of (prod_{j>t} a_j)(prod_{i<j<=t} eta_j), -inf for t < i
    q = after.unsqueeze(-1) + pe
    A = torch.exp(after[..., 0])
    E = torch.exp(pe[..., -1, 0])
    G = torch.exp(q[..., 1:, 0]).sum(-1)
    m = torch.exp(pe[..., -1, 1:])
    c = theta * torch.exp(q[..., 1:, 1:]).sum(-2)
    return A, E, G, m, c
