"""Small building blocks shared by the memory, attention and backbone: norms, SwiGLU, conv, rotary."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROPE_BASE = 10000.0


class RMSNorm(nn.Module):
    """RMS norm over the last `dim` features with a learned scale; `shape` (H, D) normalises per head."""

    def __init__(self, *shape: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(*shape))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), eps=self.eps) * self.weight


class SwiGLU(nn.Module):
    """x -> W_down(silu(W_gate x) * W_up x) (Shazeer 2020), no biases."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Unit vectors along the last axis (the memory's q, k and v)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def depthwise_conv(x: Tensor, weight: Tensor) -> Tensor:
    """Valid depthwise convolution along time: x [B, T, C], weight [C, 1, w] -> [B, T - w + 1, C].

    The caller prepends the w - 1 previous inputs (the stream's tail), which makes the convolution causal and
    lets a stream continue exactly where the last piece stopped. Written as w shifted multiply-adds: the
    kernel is tiny, and this beats F.conv1d's depthwise path on CPU by an order of magnitude.
    """
    w = weight.shape[-1]
    T = x.shape[1] - w + 1
    taps = weight[:, 0, :]  # [C, w]
    out = x[:, :T] * taps[:, 0]
    for k in range(1, w):
        out = out + x[:, k:k + T] * taps[:, k]
    return out


def keep_tail(tail: Tensor | None, x: Tensor, n: int) -> Tensor:
    """The last `n` rows of cat(tail, x) along time ([B, <=n, d]); None counts as no rows."""
    both = x if tail is None else torch.cat([tail, x], dim=1)
    return both[:, max(both.shape[1] - n, 0):]


def rotary(x: Tensor, positions: Tensor) -> Tensor:
    """Rotary position embedding (Su et al. 2021), rotate-half layout.

    Args:
        x: [B, H, T, D], D even.
        positions: [T] integer positions; only differences matter to q.k, so callers use local positions
            (inside a segment or window), which keeps the angles small and exact.
    """
    D = x.shape[-1]
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_freq = ROPE_BASE ** (-torch.arange(0, D, 2, device=x.device, dtype=dtype) / D)
    angles = positions.to(dtype)[:, None] * inv_freq[None, :]  # [T, D/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
