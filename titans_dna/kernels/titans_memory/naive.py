"""Plain-PyTorch references of the Titans neural long-term memory op (arXiv 2501.00663, DESIGN.md).

`naive_recurrent_titans_memory` walks the tokens one by one: with chunk_size=1 it is the paper's exact
recurrence, the ground truth. `naive_chunk_titans_memory` collapses each chunk into a few matmuls with the
gate coefficients of README.md; it is what runs on CPU and what the Triton paths are checked against.
Both write the inner gradient out explicitly and let the outer autograd differentiate through it.
Imports only torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .common import (
    MemoryState,
    check_inputs,
    chunk_gate_coefficients,
    init_state,
    inner_grad_factors,
    mlp_forward,
    state_dtype,
    weighted_outer_sum,
)


def _prepare(q: Tensor, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
             weights: Sequence[Tensor], initial_state: MemoryState | None, chunk_size: int,
             activation: str) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Checked inputs as (W list, S list, [q, k, v, theta, eta, alpha]) head-major ([B, H, T, ...]),
    all in the state dtype."""
    check_inputs(q, k, v, theta, eta, alpha, weights, initial_state, chunk_size, activation)
    dtype = state_dtype(q)
    ws, ss = init_state(weights, dtype, initial_state)
    return ws, ss, [x.transpose(1, 2).to(dtype) for x in (q, k, v, theta, eta, alpha)]


def _finish(outs: list[Tensor], q: Tensor, out_dtype: torch.dtype, ws: list[Tensor], ss: list[Tensor],
            output_final_state: bool) -> tuple[Tensor, MemoryState | None]:
    # outs: per-chunk [B, H, n, D] pieces; q: head-major queries (gives the empty output for T = 0)
    o = torch.cat(outs, dim=2) if outs else torch.zeros_like(q)
    B = q.shape[0]  # a state never updated (T = 0) is still the batch-1 start of init_state
    state = ((tuple(w.expand(B, *w.shape[1:]) for w in ws), tuple(s.expand(B, *s.shape[1:]) for s in ss))
             if output_final_state else None)
    return o.transpose(1, 2).to(out_dtype), state


def naive_recurrent_titans_memory(
    q: Tensor, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
    weights: Sequence[Tensor], initial_state: MemoryState | None = None, chunk_size: int = 1,
    activation: str = "silu", output_final_state: bool = True,
) -> tuple[Tensor, MemoryState | None]:
    """Per-token loop: u_t = grad l_t(W_c), S_t = eta_t S_{t-1} - theta_t u_t, W_t = a_t W_{t-1} + S_t.

    a_t = 1 - alpha_t; W_c are the weights at the start of token t's chunk (chunk_size=1: the weights
    before token t), and the output reads them: o_t = M_{W_c}(q_t).

    Args:
        q, k, v: [B, T, H, D] (q, k l2-normalised by the caller).
        theta, eta, alpha: [B, T, H] gates in [0, 1] (inner learning rate, momentum, forgetting).
        weights: learned W_0 per layer, [H, out, in] (depth 1: [H, D, D]; depth L >= 2: [H, E, D],
            [H, E, E] x (L - 2), [H, D, E]).
        initial_state: (W, S) per layer [B, H, out, in]; None means W = W_0 and S = 0. When given,
            `weights` only fix the shapes.
        chunk_size: tokens sharing one set of chunk-start weights; 1 is the exact recurrence.
        activation: "silu" or "gelu" (exact erf).
        output_final_state: return (W, S) after the last token.
    Returns:
        o [B, T, H, D] in q's dtype, and the final state in float32 (float64 for float64 q) or None.
    """
    out_dtype = q.dtype
    ws, ss, (q, k, v, theta, eta, alpha) = _prepare(q, k, v, theta, eta, alpha, weights, initial_state,
                                                    chunk_size, activation)
    outs = []
    w_start = ws
    for t in range(q.shape[2]):
        if t % chunk_size == 0:
            w_start = ws
        tok = slice(t, t + 1)
        outs.append(mlp_forward(w_start, q[:, :, tok], activation, derivatives=False)[0])
        gs, hs = inner_grad_factors(w_start, k[:, :, tok], v[:, :, tok], activation)
        keep = (1.0 - alpha[:, :, t])[..., None, None]
        mom = eta[:, :, t][..., None, None]
        lr = theta[:, :, tok]
        ss = [mom * s - weighted_outer_sum(g, h, lr) for s, g, h in zip(ss, gs, hs, strict=True)]
        ws = [keep * w + s for w, s in zip(ws, ss, strict=True)]
    return _finish(outs, q, out_dtype, ws, ss, output_final_state)


def _coefficients_per_chunk(theta: Tensor, eta: Tensor, alpha: Tensor, chunk_size: int,
                            ) -> list[tuple[Tensor, ...]]:
    """(A, E, G, m, c) for each chunk of [B, H, T] gates; full chunks in one batched call, then the tail."""
    T = theta.shape[-1]
    n_full = T // chunk_size
    chunks: list[tuple[Tensor, ...]] = []
    if n_full:
        full = chunk_gate_coefficients(*(g[..., : n_full * chunk_size].unflatten(-1, (n_full, chunk_size))
                                         for g in (theta, eta, alpha)))
        chunks = [tuple(x[:, :, i] for x in full) for i in range(n_full)]
    if T % chunk_size:
        chunks.append(chunk_gate_coefficients(*(g[..., n_full * chunk_size:] for g in (theta, eta, alpha))))
    return chunks


def naive_chunk_titans_memory(
    q: Tensor, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
    weights: Sequence[Tensor], initial_state: MemoryState | None = None, chunk_size: int = 64,
    activation: str = "silu", output_final_state: bool = True,
) -> tuple[Tensor, MemoryState | None]:
    """Chunked algebra of `naive_recurrent_titans_memory` with the same chunk_size (same arguments).

    Per chunk c: o = M_{W_c}(q_chunk); with the explicit gradient factors (g_i, h_i) of each layer at W_c,
    W_{c+1} = A W_c + G S_c - (c * g)^T h and S_{c+1} = E S_c - (m * theta * g)^T h (README.md).
    The last chunk may be partial.

    Returns:
        o [B, T, H, D] in q's dtype, and the final state in float32 (float64 for float64 q) or None.
    """
    out_dtype = q.dtype
    ws, ss, (q, k, v, theta, eta, alpha) = _prepare(q, k, v, theta, eta, alpha, weights, initial_state,
                                                    chunk_size, activation)
    coefficients = _coefficients_per_chunk(theta, eta, alpha, chunk_size)
    outs = []
    for n, (A, E, G, m, c) in enumerate(coefficients):
        span = slice(n * chunk_size, (n + 1) * chunk_size)
        outs.append(mlp_forward(ws, q[:, :, span], activation, derivatives=False)[0])
        gs, hs = inner_grad_factors(ws, k[:, :, span], v[:, :, span], activation)
        A, E, G = (x[..., None, None] for x in (A, E, G))
        m_theta = m * theta[:, :, span]
        ws, ss = (
            [A * w + G * s - weighted_outer_sum(g, h, c) for w, s, g, h in zip(ws, ss, gs, hs, strict=True)],
            [E * s - weighted_outer_sum(g, h, m_theta) for s, g, h in zip(ss, gs, hs, strict=True)],
        )
    return _finish(outs, q, out_dtype, ws, ss, output_final_state)
