"""Attention with learned persistent tokens, through torch SDPA with explicit boolean masks.

Positions: rotary embeddings on queries and keys with local positions (inside a MAC segment, or inside a
query block and its window), so only relative offsets matter and a stream can continue anywhere. The
persistent tokens carry no position (their scores use the unrotated query): every query sees all of
them. Shapes: inputs [B, T, d_model]; heads [B, H, T, D]; masks [B or 1, 1, T_q, T_k], True = attend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from titans_dna.model.config import TitansConfig
from titans_dna.model.layers import rotary


class PersistentAttention(nn.Module):
    """Multi-head attention whose keys/values start with N_p learned persistent tokens (P in the paper)."""

    def __init__(self, config: TitansConfig) -> None:
        super().__init__()
        self.config = config
        d, HD = config.d_model, config.n_heads * config.head_dim
        self.q_proj = nn.Linear(d, HD, bias=False)
        self.k_proj = nn.Linear(d, HD, bias=False)
        self.v_proj = nn.Linear(d, HD, bias=False)
        self.o_proj = nn.Linear(HD, d, bias=False)
        self.persistent = nn.Parameter(torch.randn(config.n_persistent, d) * 0.02)

    def _heads(self, x: Tensor) -> Tensor:
        # [B, T, H * D] -> [B, H, T, D]
        return x.unflatten(-1, (self.config.n_heads, self.config.head_dim)).transpose(1, 2)

    def _attend(self, q: Tensor, q_pos: Tensor, k: Tensor, k_pos: Tensor, v: Tensor,
                allowed: Tensor) -> Tensor:
        """Queries q [B, H, Tq, D] at positions q_pos [Tq] over the persistent tokens, then keys/values
        k, v [B, H, Tk, D] at positions k_pos [Tk]; allowed [B|1, 1, Tq, Tk]. Returns [B, Tq, d_model].

        Rotary applies to the sequence keys only. A query's score with a persistent token must not depend on
        the query's position (else a stream cut elsewhere would change it), so the scores are one matmul over
        doubled features: [rot(q), q] . [rot(k), 0] for sequence keys and [rot(q), q] . [0, p] for persistent.
        """
        B, D = q.shape[0], q.shape[-1]
        q_rot, k = rotary(q, q_pos), rotary(k, k_pos)
        if self.config.n_persistent == 0:
            out = F.scaled_dot_product_attention(q_rot, k, v, attn_mask=allowed)
        else:
            kp = self._heads(self.k_proj(self.persistent)[None]).expand(B, -1, -1, -1)
            vp = self._heads(self.v_proj(self.persistent)[None]).expand(B, -1, -1, -1)
            keys = torch.cat([torch.cat([torch.zeros_like(kp), kp], dim=-1),
                              torch.cat([k, torch.zeros_like(k)], dim=-1)], dim=2)
            prefix = allowed.new_ones(*allowed.shape[:-1], self.config.n_persistent)
            out = F.scaled_dot_product_attention(torch.cat([q_rot, q], dim=-1), keys,
                                                 torch.cat([vp, v], dim=2),
                                                 attn_mask=torch.cat([prefix, allowed], dim=-1),
                                                 scale=D ** -0.5)
        return self.o_proj(out.transpose(1, 2).flatten(-2))


class MACAttention(PersistentAttention):
    """MAC's attention over [P || h || x] for one segment; the queries are the segment tokens x."""

    def forward(self, x: Tensor, h: Tensor, mask: Tensor) -> Tensor:
        """x, h: [B, C, d_model] (segment and its memory read); mask [B, C] bool. Returns y [B, C, d_model].

        Causal: token i sees all of P, and h_j, x_j for j <= i. Bidirectional: all of P, h and x except
        padding (each token always sees itself, so padded rows stay finite).
        """
        C = x.shape[1]
        pos = torch.arange(C, device=x.device)
        q = self._heads(self.q_proj(x))
        hx = torch.cat([h, x], dim=1)
        k, v = self._heads(self.k_proj(hx)), self._heads(self.v_proj(hx))
        eye = torch.eye(C, dtype=torch.bool, device=x.device)
        if self.config.causal:
            seen = torch.ones(C, C, dtype=torch.bool, device=x.device).tril()[None, None]
        else:
            seen = (mask[:, None, None, :] | eye)
        return self._attend(q, pos, k, torch.cat([pos, pos]), v, torch.cat([seen, seen], dim=-1))


class SlidingWindowAttention(PersistentAttention):
    """Sliding-window attention with the persistent prefix (MAG and MAL).

    Causal: query i sees keys i - window < j <= i. Bidirectional: also every key of its own segment (and a
    causal window into the past), so segment-aligned pieces stream exactly. Queries run in blocks of
    segment_len, each against its block and the window before it: memory O(T * (segment_len + window)).
    """

    def forward(self, x: Tensor, mask: Tensor, tail: Tensor | None = None) -> Tensor:
        """x [B, T, d_model], mask [B, T] bool; tail [B, n, d_model]: the stream's previous inputs
        (n <= window - 1; None at the start). Returns [B, T, d_model]."""
        c = self.config
        full = x if tail is None else torch.cat([tail, x], dim=1)
        n, T = full.shape[1] - x.shape[1], x.shape[1]
        # tail rows are real tokens of the stream: right padding means no valid query follows a padded key
        valid = torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=1)
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(full)), self._heads(self.v_proj(full))
        outs = []
        for start in range(0, T, c.segment_len):
            stop = min(start + c.segment_len, T)
            lo = max(0, n + start - (c.window - 1))
            qi = torch.arange(n + start, n + stop, device=x.device)
            kj = torch.arange(lo, n + stop, device=x.device)
            rel = qi[:, None] - kj[None, :]
            allowed = ((rel >= 0) & (rel < c.window))[None, None]
            if not c.causal:
                same_segment = (kj >= n + start)[None, None, None, :] & valid[:, None, None, lo:n + stop]
                allowed = allowed | same_segment
            outs.append(self._attend(q[:, :, start:stop], qi - lo, k[:, :, lo:n + stop], kj - lo,
                                     v[:, :, lo:n + stop], allowed))
        return torch.cat(outs, dim=1)
