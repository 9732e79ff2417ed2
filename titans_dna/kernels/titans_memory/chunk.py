"""Triton training path of the Titans memory op: forward and backward as torch.library custom ops.

The forward (chunk_fwd.py) walks each (batch, head) chain over its chunks with the state in float32 and
saves the state every ~sqrt(n_chunks) chunks; the backward (chunk_bwd.py) recomputes each segment from its
checkpoint and runs the reverse recurrence. Same signature and semantics as
naive.naive_chunk_titans_memory (conventions in README.md), which the tests hold it against.

Each kernel launch sits in a custom op (`titans_dna::memory_forward`, `memory_forward_saved`,
`memory_backward`) with a fake that gives its outputs' shapes, and `register_autograd` joins the saved
forward to the backward: torch.compile cannot trace into a Triton launcher's Python, but keeps a custom op
as one opaque call, so a model calling this op compiles whole (fullgraph), training included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
from torch import Tensor

from .chunk_bwd import titans_memory_bwd
from .chunk_fwd import checkpoint_every, interpreting, titans_memory_coeffs, titans_memory_fwd
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


def _state_lists(initial_state: MemoryState | None) -> tuple[list[Tensor], list[Tensor]]:
    """The ops' (state_w, state_s): a custom op's list argument cannot be None, so no state is two empty
    lists."""
    return ([], []) if initial_state is None else (list(initial_state[0]), list(initial_state[1]))


def forward_only(q: Tensor, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
                 weights: Sequence[Tensor], initial_state: MemoryState | None, chunk_size: int,
                 activation: str) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """The forward without checkpoints or autograd: o and the final (W, S) lists.

    It runs as the custom op `titans_dna::memory_forward`, which torch.compile keeps as one opaque call
    (it cannot trace into a Triton launcher's Python) while fusing everything around it.
    """
    out = memory_forward(q, k, v, theta, eta, alpha, list(weights), *_state_lists(initial_state), chunk_size,
                         activation)
    depth = len(weights)
    return out[0], out[1:1 + depth], out[1 + depth:]


def _run_forward(q: Tensor, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
                 weights: list[Tensor], state_w: list[Tensor], state_s: list[Tensor], chunk_size: int,
                 activation: str, save: bool) -> list[Tensor]:
    """The body of both forward ops: [o, *W, *S], with `save` (and T > 0) followed by what the backward
    needs: cw, aeg (`titans_memory_coeffs`) and the checkpoints of each layer's W, then S (`_checkpoints`)."""
    q, k, v, theta, eta, alpha = (x.contiguous() for x in (q, k, v, theta, eta, alpha))
    ws, ss = _start_state(weights, (state_w, state_s) if state_w else None, q.shape[0])
    if q.shape[1] == 0:
        return [q.new_empty(q.shape), *ws, *ss]
    coeffs = titans_memory_coeffs(theta, eta, alpha, chunk_size)
    o, ckpts = titans_memory_fwd(q, k, v, coeffs, ws, ss, chunk_size, activation, save=save)
    return [o, *ws, *ss, *([*coeffs, *_checkpoints(ckpts, len(weights))] if save else [])]


def _checkpoints(kernel_ckpts: list[Tensor], depth: int) -> list[Tensor]:
    """Each layer's W, then S checkpoints, from the kernels' [W1, W2, S1, S2]: a custom op may not return one
    tensor twice, and for depth 1 the kernels' list is [W1, W1, S1, S1]."""
    return [*kernel_ckpts[:depth], *kernel_ckpts[2:2 + depth]]


def _kernel_checkpoints(ckpts: list[Tensor], depth: int) -> list[Tensor]:
    """The kernels' [W1, W2, S1, S2] from `_checkpoints`' list (depth 1: [W1, W1, S1, S1])."""
    return [ckpts[0], ckpts[depth - 1], ckpts[depth], ckpts[-1]]


@torch.library.custom_op("titans_dna::memory_forward", mutates_args=())
def memory_forward(q: Tensor, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
                   weights: list[Tensor], state_w: list[Tensor], state_s: list[Tensor], chunk_size: int,
                   activation: str) -> list[Tensor]:
    """[o, *W, *S] after the forward from (state_w, state_s) (both empty: W_0 and S = 0)."""
    return _run_forward(q, k, v, theta, eta, alpha, weights, state_w, state_s, chunk_size, activation, False)


@memory_forward.register_fake
def _memory_forward_fake(q, k, v, theta, eta, alpha, weights, state_w, state_s, chunk_size, activation):
    state = [q.new_empty(q.shape[0], *w.shape, dtype=torch.float32) for w in weights]
    return [torch.empty_like(q, memory_format=torch.contiguous_format), *state,
            *(torch.empty_like(w) for w in state)]


@torch.library.custom_op("titans_dna::memory_forward_saved", mutates_args=())
def memory_forward_saved(q: Tensor, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
                         weights: list[Tensor], state_w: list[Tensor], state_s: list[Tensor], chunk_size: int,
                         activation: str) -> list[Tensor]:
    """`memory_forward` with checkpoints for the backward (`_run_forward`, save); T > 0. Differentiable
    (`_backward`)."""
    return _run_forward(q, k, v, theta, eta, alpha, weights, state_w, state_s, chunk_size, activation, True)


@memory_forward_saved.register_fake
def _memory_forward_saved_fake(q, k, v, theta, eta, alpha, weights, state_w, state_s, chunk_size, activation):
    out = _memory_forward_fake(q, k, v, theta, eta, alpha, weights, state_w, state_s, chunk_size, activation)
    B, T, H, _ = q.shape
    n_chunks = triton.cdiv(T, chunk_size)
    n_ck = triton.cdiv(n_chunks, checkpoint_every(n_chunks))
    coeffs = [q.new_empty(B * H, 2, T, dtype=torch.float32),
              q.new_empty(B * H, n_chunks, 4, dtype=torch.float32)]
    ckpts = [q.new_empty(B * H, n_ck, *w.shape[2:], dtype=torch.float32) for w in out[1:]]
    return [*out, *coeffs, *ckpts]


@torch.library.custom_op("titans_dna::memory_backward", mutates_args=())
def memory_backward(q: Tensor, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor, cw: Tensor,
                    aeg: Tensor, do: Tensor, ckpts: list[Tensor], dws: list[Tensor], dss: list[Tensor],
                    chunk_size: int, activation: str) -> list[Tensor]:
    """[dq, dk, dv, dtheta, deta, dalpha, *dW, *dS]: the gradients of the inputs and of the initial state
    (float32) from those of o and of the final state (dws, dss)."""
    q, k, v, theta, eta, alpha = (x.contiguous() for x in (q, k, v, theta, eta, alpha))
    # the kernel turns the final state's gradient into the initial state's in place: on copies
    dws, dss = ([d.float().contiguous().clone() for d in ds] for ds in (dws, dss))
    grads = titans_memory_bwd(q, k, v, theta, eta, alpha, (cw, aeg), do.contiguous(),
                              _kernel_checkpoints(ckpts, len(dws)), dws, dss, chunk_size, activation)
    return [*grads, *dws, *dss]


@memory_backward.register_fake
def _memory_backward_fake(q, k, v, theta, eta, alpha, cw, aeg, do, ckpts, dws, dss, chunk_size, activation):
    dinputs = [x.new_empty(x.shape) for x in (q, k, v, theta, eta, alpha)]
    return dinputs + [d.new_empty(d.shape, dtype=torch.float32) for d in dws + dss]


def _setup_context(ctx, inputs: tuple, output: list[Tensor]) -> None:
    q, k, v, theta, eta, alpha, weights, state_w, state_s, chunk_size, activation = inputs
    depth = len(weights)
    saved = output[1 + 2 * depth:]
    ctx.mark_non_differentiable(*saved)
    # a final W or S that nothing used gets None, not a zero tensor that autograd allocates
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(q, k, v, theta, eta, alpha, *saved)
    ctx.setup = chunk_size, activation, depth, bool(state_w)
    ctx.state_shapes = [t.shape for t in output[1:1 + 2 * depth]]
    # the gradients' dtypes: the initial state's when one was given, else W_0's
    ctx.dtypes = [t.dtype for t in (state_w + state_s if state_w else weights)]


def _backward(ctx, grads: list[Tensor | None]) -> tuple:
    """Gradients of q..alpha, then of the initial state when one was given, else of W_0 (summed over the
    batch), as the forward's dtypes."""
    q, k, v, theta, eta, alpha, cw, aeg, *ckpts = ctx.saved_tensors
    chunk_size, activation, depth, has_init = ctx.setup
    do, *dfinal = grads[:1 + 2 * depth]
    do = torch.zeros_like(q) if do is None else do
    dfinal = [q.new_zeros(shape, dtype=torch.float32) if d is None else d
              for d, shape in zip(dfinal, ctx.state_shapes, strict=True)]
    out = memory_backward(q, k, v, theta, eta, alpha, cw, aeg, do, ckpts, dfinal[:depth], dfinal[depth:],
                          chunk_size, activation)
    dinputs, dinit = out[:6], out[6:]
    if has_init:
        dstate = [d.to(t) for d, t in zip(dinit, ctx.dtypes, strict=True)]
        return (*dinputs, [None] * depth, dstate[:depth], dstate[depth:], None, None)
    dweights = [d.sum(0).to(t) for d, t in zip(dinit[:depth], ctx.dtypes, strict=True)]
    return (*dinputs, dweights, [], [], None, None)


memory_forward_saved.register_autograd(_backward, setup_context=_setup_context)


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
    needs_grad = any(t.requires_grad for t in [q, k, v, theta, eta, alpha, *tensors])
    if q.shape[1] == 0 or not (torch.is_grad_enabled() and needs_grad):
        # nothing to differentiate: the forward without checkpoints
        o, ws, ss = forward_only(q, k, v, theta, eta, alpha, weights, initial_state, chunk_size, activation)
        return o, ((tuple(ws), tuple(ss)) if output_final_state else None)
    out = memory_forward_saved(q, k, v, theta, eta, alpha, list(weights), *_state_lists(initial_state),
                               chunk_size, activation)
    state = (tuple(out[1:1 + depth]), tuple(out[1 + depth:1 + 2 * depth])) if output_final_state else None
    return out[0], state
