"""Triton streaming / inference path of the Titans memory op: the chunk forward with state in and out,
no checkpoints and no autograd (for generation, embedding and long-sequence inference).

It launches the same persistent kernel as the training forward (chunk_fwd.py) without its checkpoint
stores, so a whole sequence or its pieces in any split at chunk boundaries give the same output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .chunk import forward_only, triton_supports
from .common import MemoryState, check_inputs


def fused_recurrent_titans_memory(
    q: Tensor, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
    weights: Sequence[Tensor], initial_state: MemoryState | None = None, chunk_size: int = 64,
    activation: str = "silu", output_final_state: bool = True,
) -> tuple[Tensor, MemoryState | None]:
    """Forward-only chunked Titans memory (arguments and returns as chunk_titans_memory).

    Args:
        q, k, v: [B, T, H, D]; theta, eta, alpha: [B, T, H]; weights: W_0 per layer [H, out, in];
        initial_state: (W, S) per layer [B, H, out, in] or None (W_0, S = 0); chunk_size 1..128.
    Returns:
        o [B, T, H, D] in q's dtype and the final state (float32) or None.
    Raises:
        NotImplementedError when gradients are required: this path keeps no checkpoints, so it has no
        backward; use chunk_titans_memory for training.
    """
    check_inputs(q, k, v, theta, eta, alpha, weights, initial_state, chunk_size, activation)
    if not triton_supports(q, weights, chunk_size):
        raise ValueError(
            f"fused_recurrent_titans_memory: unsupported call q {tuple(q.shape)} {q.dtype} on {q.device}, "
            f"weights {[tuple(w.shape) for w in weights]}, chunk_size {chunk_size} (see triton_supports)")
    tensors = [q, k, v, theta, eta, alpha, *weights]
    if initial_state is not None:
        tensors += [*initial_state[0], *initial_state[1]]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise NotImplementedError("fused_recurrent_titans_memory keeps no checkpoints and has no backward; "
                                  "use chunk_titans_memory for training (or call under torch.no_grad())")
    o, ws, ss = forward_only(q, k, v, theta, eta, alpha, weights, initial_state, chunk_size, activation)
    return o, ((tuple(ws), tuple(ss)) if output_final_state else None)
