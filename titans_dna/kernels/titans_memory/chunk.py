"""Triton training path of the Titans memory op: forward + backward through torch.autograd.Function.

The forward (chunk_fwd.py) walks each (batch, head) chain over its chunks with the state in float32 and
saves the state every ~sqrt(n_chunks) chunks; the backward (chunk_bwd.py) recomputes each segment from its
checkpoint and runs the reverse recurrence. Same signature and semantics as
naive.naive_chunk_titans_memory (conventions in README.md), which the tests hold it against.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .chunk_bwd import titans_memory_bwd
from .chunk_fwd import interpreting, titans_memory_coeffs, titans_memory_fwd
from .common import MemoryState, check_inputs

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_supports(q: Tensor, weights: Sequence[Tensor], chunk_size: int) -> bool:
    """Whether the Triton kernels handle this call: CUDA tensors (or CPU under TRITON_INTERPRET=1),
    float32/bf16/fp16 inputs, memory depth 1 or 2, head dim a power of two in 16..128, hidden width a
    power of two up to 512, chunk_size 1..128 (one chunk's rows sit in one tile), and a chunk tile
    (rows rounded up to a power of two >= 16, times D) of at most 8192 elements for bf16/fp16 and 4096 for
    float32: the backward's shared memory outgrows an SM's 227 KiB beyond that (sm_90, Triton 3.6)."""
    if not (q.is_cuda or (interpreting() and q.device.type == "cpu")):
        return False
    if q.dtype not in _DTYPES or q.dim() != 4 or len(weights) not in (1, 2):
        return False
    D = q.shape[-1]
    hidden = weights[0].shape[-2] if len(weights) == 2 else D

    def pow2(x: int, hi: int) -> bool:
        return 16 <= x <= hi and x & (x - 1) == 0

    if not (pow2(D, 128) and pow2(hidden, 512) and 1 <= chunk_size <= 128):
        return False
    rows = max(16, 1 << (chunk_size - 1).bit_length())
    return rows * D <= (4096 if q.dtype == torch.float32 else 8192)


def _start_state(weights: Sequence[Tensor], initial_state: MemoryState | None, batch: int,
                 ) -> tuple[list[Tensor], list[Tensor]]:
    """Fresh float32 [B, H, out, in] buffers the kernel updates in place."""
    if initial_state is not None:
        return ([w.detach().float().contiguous().clone() for w in initial_state[0]],
                [s.detach().float().contiguous().clone() for s in initial_state[1]])
    # clone: for batch 1 (or float32 weights) expand().contiguous() would alias W_0 itself
    ws = [w.detach().float().unsqueeze(0).expand(batch, *w.shape).clone(memory_format=torch.contiguous_format)
          for w in weights]
    return ws, [torch.zeros_like(w) for w in ws]


def forward_only(q: Tensor, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
                 weights: Sequence[Tensor], initial_state: MemoryState | None, chunk_size: int,
                 activation: str) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """The forward without checkpoints or autograd: o and the final (W, S) lists. Inputs contiguous."""
    ws, ss = _start_state(weights, initial_state, q.shape[0])
    if q.shape[1] == 0:
        return q.new_empty(q.shape), ws, ss
    coeffs = titans_memory_coeffs(theta, eta, alpha, chunk_size)
    o, _ = titans_memory_fwd(q, k, v, coeffs, ws, ss, chunk_size, activation, save=False)
    return o, ws, ss


class ChunkTitansMemoryFunction(torch.autograd.Function):
    """Inputs: q, k, v, theta, eta, alpha, chunk_size, activation, depth, has_initial_state, then the
    `depth` weight tensors W_0 and, with an initial state, its depth W's and depth S's.
    Outputs: o, then the final W's and S's."""

    @staticmethod
    def forward(ctx, q, k, v, theta, eta, alpha, chunk_size, activation, depth, has_init, *tensors):
        weights = tensors[:depth]
        init = (tensors[depth:2 * depth], tensors[2 * depth:]) if has_init else None
        ws, ss = _start_state(weights, init, q.shape[0])
        coeffs = titans_memory_coeffs(theta, eta, alpha, chunk_size)
        o, ckpts = titans_memory_fwd(q, k, v, coeffs, ws, ss, chunk_size, activation, save=True)
        ctx.save_for_backward(q, k, v, theta, eta, alpha, *coeffs, *ckpts)
        ctx.setup = (chunk_size, activation, depth, has_init)
        ctx.dtypes = [t.dtype for t in tensors]
        return (o, *ws, *ss)

    @staticmethod
    def backward(ctx, do, *dstate):
        q, k, v, theta, eta, alpha, cw, aeg, *ckpts = ctx.saved_tensors
        chunk_size, activation, depth, has_init = ctx.setup
        dws = [d.float().contiguous().clone() for d in dstate[:depth]]
        dss = [d.float().contiguous().clone() for d in dstate[depth:]]
        grads = titans_memory_bwd(q, k, v, theta, eta, alpha, (cw, aeg), do.contiguous(), ckpts, dws, dss,
                                  chunk_size, activation)
        if has_init:
            init_dtypes = ctx.dtypes[depth:]
            tensor_grads = [None] * depth + [d.to(t) for d, t in zip(dws + dss, init_dtypes, strict=True)]
        else:
            tensor_grads = [d.sum(0).to(t) for d, t in zip(dws, ctx.dtypes, strict=True)]
        return (*grads, None, None, None, None, *tensor_grads)


def chunk_titans_memory(
    q: Tensor, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
    weights: Sequence[Tensor], initial_state: MemoryState | None = None, chunk_size: int = 64,
    activation: str = "silu", output_final_state: bool = True,
) -> tuple[Tensor, MemoryState | None]:
    """Chunked Titans memory on Triton, differentiable in every input (conventions in README.md).

    Args:
        q, k, v: [B, T, H, D] (q, k l2-normalised by the caller), float32, bf16 or fp16.
        theta, eta, alpha: [B, T, H] gates in [0, 1] (inner learning rate, momentum, forgetting).
        weights: learned W_0 per layer: depth 1 [H, D, D]; depth 2 [H, E, D], [H, D, E].
        initial_state: (W, S) per layer [B, H, out, in]; None means W = W_0 and S = 0 (then the
            gradient goes to `weights`, else to the state).
        chunk_size: tokens that share the chunk-start weights, 1..128.
        activation: "silu" or "gelu" (exact erf).
        output_final_state: return (W, S) after the last token; gradients flowing into it are used.
    Returns:
        o [B, T, H, D] in q's dtype, and the final state (float32) or None.
    """
    check_inputs(q, k, v, theta, eta, alpha, weights, initial_state, chunk_size, activation)
    if not triton_supports(q, weights, chunk_size):
        raise ValueError(
            f"chunk_titans_memory: unsupported call q {tuple(q.shape)} {q.dtype} on {q.device}, weights "
            f"{[tuple(w.shape) for w in weights]}, chunk_size {chunk_size} (see triton_supports); "
            "use naive_chunk_titans_memory")
    depth = len(weights)
    tensors = list(weights) + ([*initial_state[0], *initial_state[1]] if initial_state is not None else [])
    q, k, v, theta, eta, alpha = (x.contiguous() for x in (q, k, v, theta, eta, alpha))
    needs_grad = any(t.requires_grad for t in [q, k, v, theta, eta, alpha, *tensors])
    if q.shape[1] == 0 or not (torch.is_grad_enabled() and needs_grad):
        # nothing to differentiate: the forward without checkpoints
        o, ws, ss = forward_only(q, k, v, theta, eta, alpha, weights, initial_state, chunk_size, activation)
        return o, ((tuple(ws), tuple(ss)) if output_final_state else None)
    out = ChunkTitansMemoryFunction.apply(q, k, v, theta, eta, alpha, chunk_size, activation, depth,
                                          initial_state is not None, *tensors)
    state = (tuple(out[1:1 + depth]), tuple(out[1 + depth:])) if output_final_state else None
    return out[0], state
