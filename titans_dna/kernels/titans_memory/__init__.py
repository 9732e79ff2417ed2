"""The Titans neural long-term memory op: plain-PyTorch references and a dispatcher over the fast paths.

`titans_memory(...)` picks the Triton chunk kernel (`.chunk`) on CUDA for shapes it supports and the
chunked PyTorch reference otherwise; `last_backend()` tells which path the last call took. `memory_read`
evaluates the memory at a state without writing (one MLP pass; every backend shares it).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Callable, Sequence

from torch import Tensor

from .common import MemoryState, memory_read
from .naive import naive_chunk_titans_memory, naive_recurrent_titans_memory

__all__ = [
    "MemoryState",
    "last_backend",
    "memory_read",
    "naive_chunk_titans_memory",
    "naive_recurrent_titans_memory",
    "titans_memory",
]

logger = logging.getLogger(__name__)
BACKENDS = ("auto", "naive", "triton")
_last_backend: str | None = None
_fallbacks_logged: set[str] = set()


def last_backend() -> str | None:
    """"naive" or "triton": the path the last `titans_memory` call ran (None before any call)."""
    return _last_backend


def _chunk_module():
    """The Triton chunk module, or a string saying why there is none (looked up once, at import: the
    dispatcher stays plain attribute reads, which torch.compile traces)."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if importlib.util.find_spec(f"{__name__}.chunk") is None:
        return "the Triton chunk kernel (titans_memory/chunk.py) is not part of this build"
    # the module exists: import errors inside it are bugs and must surface, not fall back silently
    return importlib.import_module(f"{__name__}.chunk")


_CHUNK = _chunk_module()


def _triton_path(q: Tensor, weights: Sequence[Tensor], chunk_size: int, forced: bool,
                 ) -> tuple[Callable | None, str]:
    """The Triton chunk function when it can run these inputs, else (None, why not).

    Forced calls may also run on CPU under TRITON_INTERPRET=1 (how the kernel tests run); "auto" never
    picks the interpreter, which is far slower than the reference.
    """
    interpret = forced and os.environ.get("TRITON_INTERPRET") == "1"
    if not (q.is_cuda or interpret):
        return None, "inputs are not on a CUDA device (set TRITON_INTERPRET=1 to force the interpreter)"
    if isinstance(_CHUNK, str):
        return None, _CHUNK
    if not _CHUNK.triton_supports(q, weights, chunk_size):
        return None, "the Triton chunk kernel does not support this shape"
    return _CHUNK.chunk_titans_memory, ""


def titans_memory(
    q: Tensor, k: Tensor, v: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
    weights: Sequence[Tensor], initial_state: MemoryState | None = None, chunk_size: int = 64,
    activation: str = "silu", output_final_state: bool = True, backend: str = "auto",
) -> tuple[Tensor, MemoryState | None]:
    """Titans memory op, shapes and semantics as `naive_recurrent_titans_memory` (README.md).

    Args:
        backend: "auto" (Triton on CUDA for supported shapes, else the chunked reference, with one info
            message per reason), "naive" (always the chunked reference) or "triton" (error if it cannot run).
    Returns:
        o [B, T, H, D] in q's dtype and the final state (or None).
    """
    global _last_backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    fn, name = naive_chunk_titans_memory, "naive"
    if backend != "naive":
        fast, why = _triton_path(q, weights, chunk_size, forced=backend == "triton")
        if fast is not None:
            fn, name = fast, "triton"
        elif backend == "triton":
            raise RuntimeError(f"titans_memory(backend='triton') cannot run: {why}")
        elif why not in _fallbacks_logged:
            _fallbacks_logged.add(why)
            logger.info("titans_memory: using the PyTorch reference (naive_chunk) because %s", why)
    out = fn(q, k, v, theta, eta, alpha, weights, initial_state=initial_state, chunk_size=chunk_size,
             activation=activation, output_final_state=output_final_state)
    _last_backend = name
    return out
