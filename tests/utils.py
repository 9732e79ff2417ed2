"""Helpers shared by the kernel tests: a norm-wise comparison and random inputs for the titans_memory op."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def relative_error(ref: Tensor, out: Tensor) -> float:
    """||out - ref|| / ||ref|| over all elements, in float64; the absolute error when ref is all zero."""
    ref, out = ref.detach().double(), out.detach().double()
    diff = (out - ref).norm().item()
    scale = ref.norm().item()
    return diff / scale if scale > 0 else diff


def assert_close(name: str, ref: Tensor, out: Tensor, tol: float) -> float:
    """Assert no NaN/inf, equal shapes and a norm-wise relative error <= tol; returns the error."""
    assert ref.shape == out.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(ref).all(), f"{name}: reference has NaN/inf"
    assert torch.isfinite(out).all(), f"{name}: output has NaN/inf"
    err = relative_error(ref, out)
    assert err <= tol, f"{name}: relative error {err:.3e} > tolerance {tol:.1e}"
    return err


def memory_inputs(B: int, T: int, H: int, D: int, depth: int = 2, expansion: int = 2,
                  dtype: torch.dtype = torch.float64, with_state: bool = False,
                  requires_grad: bool = False) -> dict[str, Tensor]:
    """Named random leaf tensors for the titans_memory op (layout: kernels/titans_memory/README.md).

    Keys: q, k, v [B, T, H, D] (q, k l2-normalised), theta, eta, alpha [B, T, H], W0_1..W0_L [H, out, in],
    and with `with_state` also W_1..W_L and S_1..S_L [B, H, out, in] for the initial state. Gates stay
    inside (0, 1) and weights are scaled by 1/sqrt(fan_in), so a few hundred tokens remain well behaved.
    """
    E = D * expansion
    dims = [(D, D)] if depth == 1 else [(E, D)] + [(E, E)] * (depth - 2) + [(D, E)]
    x: dict[str, Tensor] = {
        "q": F.normalize(torch.randn(B, T, H, D, dtype=dtype), dim=-1),
        "k": F.normalize(torch.randn(B, T, H, D, dtype=dtype), dim=-1),
        "v": torch.randn(B, T, H, D, dtype=dtype),
        "theta": 0.05 + 0.3 * torch.rand(B, T, H, dtype=dtype),
        "eta": 0.05 + 0.9 * torch.rand(B, T, H, dtype=dtype),
        "alpha": 0.01 + 0.2 * torch.rand(B, T, H, dtype=dtype),
    }
    for i, (o, n) in enumerate(dims, start=1):
        x[f"W0_{i}"] = torch.randn(H, o, n, dtype=dtype) / n**0.5
        if with_state:
            x[f"W_{i}"] = torch.randn(B, H, o, n, dtype=dtype) / n**0.5
            x[f"S_{i}"] = 0.1 * torch.randn(B, H, o, n, dtype=dtype) / n**0.5
    return {name: t.requires_grad_(requires_grad) for name, t in x.items()}


def memory_args(x: dict[str, Tensor]) -> tuple[tuple, dict]:
    """Positional and keyword arguments of the op from `memory_inputs`."""
    depth = sum(name.startswith("W0_") for name in x)
    args = tuple(x[n] for n in ("q", "k", "v", "theta", "eta", "alpha"))
    weights = [x[f"W0_{i}"] for i in range(1, depth + 1)]
    state = None
    if "W_1" in x:
        state = (tuple(x[f"W_{i}"] for i in range(1, depth + 1)),
                 tuple(x[f"S_{i}"] for i in range(1, depth + 1)))
    return (*args, weights), {"initial_state": state}
