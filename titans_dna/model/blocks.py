"""The four Titans blocks (DESIGN.md, "Blocks"): MAC, MAG, MAL and LMM, each with explicit stream state.

Every block maps x [B, T, d_model] (the normed residual stream) to [B, T, d_model]. Streaming: a block
commits its state at boundaries `unit` tokens apart from the stream start (MAC: segments; the others: chunks
when causal, segments when bidirectional) and buffers the inputs after the last boundary (`pending`). The next
piece re-runs those pending inputs from the committed state and emits only its own positions, so in causal
mode a sequence processed whole or in pieces of any length gives the same outputs; in bidirectional mode
pieces must be segment-aligned (a state with pending inputs is refused).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from titans_dna.kernels.titans_memory import MemoryState
from titans_dna.model.attention import MACAttention, SlidingWindowAttention
from titans_dna.model.config import TitansConfig
from titans_dna.model.layers import RMSNorm, keep_tail
from titans_dna.model.titans_memory import TitansMemory


@dataclass
class BlockState:
    """A block's stream state at its last committed boundary (None fields: start of the stream)."""

    memory: MemoryState | None = None  # op state (W, S), each [B, H, out, in]
    conv_x: Tensor | None = None  # [B, conv_width - 1, d] memory-conv tail of the block input
    conv_y: Tensor | None = None  # [B, conv_width - 1, d] MAC: memory-conv tail of the attention output
    attn: Tensor | None = None  # [B, <= window - 1, d] sliding-window attention input tail (mag/mal)
    pending: Tensor | None = None  # [B, p, d] inputs after the boundary, re-run with the next piece
    pending_mask: Tensor | None = None  # [B, p] bool


class _Block(nn.Module):
    """Streaming and gradient checkpointing shared by all blocks; subclasses define `_span`, which runs a
    span starting at a committed boundary: (x, mask, state) -> (out, state after the span)."""

    def __init__(self, config: TitansConfig, unit: int) -> None:
        super().__init__()
        self.config = config
        self.unit = unit
        self.memory = TitansMemory(config)

    def forward(self, x: Tensor, mask: Tensor, state: BlockState | None = None,
                return_state: bool = False) -> tuple[Tensor, BlockState | None]:
        """x [B, T, d_model], mask [B, T] bool -> (out [B, T, d_model], state or None)."""
        carry = BlockState() if state is None else dataclasses.replace(state, pending=None, pending_mask=None)
        p = 0
        if state is not None and state.pending is not None and state.pending.shape[1]:
            if not self.config.causal:
                raise ValueError(f"bidirectional streaming needs pieces aligned to segment_len="
                                 f"{self.config.segment_len}; the previous piece left "
                                 f"{state.pending.shape[1]} tokens of a partial segment")
            p = state.pending.shape[1]
            x, mask = torch.cat([state.pending, x], dim=1), torch.cat([state.pending_mask, mask], dim=1)
        if not return_state:
            return self._process(x, mask, carry)[0][:, p:], None
        n = x.shape[1] // self.unit * self.unit
        outs = []
        if n:
            out, carry = self._process(x[:, :n], mask[:, :n], carry)
            outs.append(out)
        if n < x.shape[1]:  # the partial unit runs from the committed state, which stays as it is
            outs.append(self._process(x[:, n:], mask[:, n:], carry)[0])
        carry = dataclasses.replace(carry, pending=x[:, n:], pending_mask=mask[:, n:])
        return torch.cat(outs, dim=1)[:, p:], carry

    def _process(self, x: Tensor, mask: Tensor, state: BlockState) -> tuple[Tensor, BlockState]:
        if not (self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()):
            return self._span(x, mask, state)
        # one segment at a time: backward keeps only segment inputs and states, recomputing the rest
        outs, C = [], self.config.segment_len
        for start in range(0, x.shape[1], C):
            out, state = checkpoint(self._span, x[:, start:start + C], mask[:, start:start + C], state,
                                    use_reentrant=False)
            outs.append(out)
        return torch.cat(outs, dim=1), state


class MACBlock(_Block):
    """Memory as Context. Per segment s of C tokens x: h = M_{s-1}(q(x)) (read before any update);
    y = Attn([P || h || x]) at the segment positions; write y into the memory; o = y * sigmoid(W_g norm(read
    of the memory by y)). Causal: that read is the op's chunk-causal output of the same call that writes y.
    Bidirectional: it reads M_s, after the whole segment."""

    def __init__(self, config: TitansConfig) -> None:
        super().__init__(config, unit=config.segment_len)
        self.attention = MACAttention(config)
        self.gate = nn.Sequential(RMSNorm(config.n_heads, config.head_dim), nn.Flatten(-2),
                                  nn.Linear(config.n_heads * config.head_dim, config.d_model, bias=False))

    def _span(self, x: Tensor, mask: Tensor, state: BlockState) -> tuple[Tensor, BlockState]:
        memory, tail_x, tail_y = state.memory, state.conv_x, state.conv_y
        outs, C = [], self.config.segment_len
        for start in range(0, x.shape[1], C):
            xs, ms = x[:, start:start + C], mask[:, start:start + C]
            h = self.memory.readout(self.memory.read(self.memory.query(xs, tail_x), memory))
            y = self.attention(xs, h, ms)
            inputs = self.memory.features(y, ms, tail_y)
            o, memory = self.memory.write(inputs, memory)
            if not self.config.causal:
                o = self.memory.read(inputs.q, memory)
            outs.append(y * torch.sigmoid(self.gate(o)))
            tail_x, tail_y = self.memory.conv_tail(tail_x, xs), self.memory.conv_tail(tail_y, y)
        return torch.cat(outs, dim=1), BlockState(memory=memory, conv_x=tail_x, conv_y=tail_y)


def _memory_unit(config: TitansConfig) -> int:
    return config.chunk_size if config.causal else config.segment_len


class MAGBlock(_Block):
    """Memory as Gate: sliding-window attention (persistent prefix) and the memory read the same input;
    o = norm(attention) * sigmoid(norm(memory)), the paper's normalised branches and non-linearity."""

    def __init__(self, config: TitansConfig) -> None:
        super().__init__(config, unit=_memory_unit(config))
        self.attention = SlidingWindowAttention(config)
        self.attention_norm = RMSNorm(config.d_model)
        self.memory_norm = RMSNorm(config.d_model)

    def _span(self, x: Tensor, mask: Tensor, state: BlockState) -> tuple[Tensor, BlockState]:
        a = self.attention(x, mask, state.attn)
        m, conv_x, memory = self.memory(x, mask, state.conv_x, state.memory)
        out = self.attention_norm(a) * torch.sigmoid(self.memory_norm(m))
        attn_tail = keep_tail(state.attn, x, self.config.window - 1)
        return out, BlockState(memory=memory, conv_x=conv_x, attn=attn_tail)


class MALBlock(_Block):
    """Memory as Layer: the memory, then sliding-window attention (persistent prefix) over its output."""

    def __init__(self, config: TitansConfig) -> None:
        super().__init__(config, unit=_memory_unit(config))
        self.attention = SlidingWindowAttention(config)

    def _span(self, x: Tensor, mask: Tensor, state: BlockState) -> tuple[Tensor, BlockState]:
        m, conv_x, memory = self.memory(x, mask, state.conv_x, state.memory)
        out = self.attention(m, mask, state.attn)
        attn_tail = keep_tail(state.attn, m, self.config.window - 1)
        return out, BlockState(memory=memory, conv_x=conv_x, attn=attn_tail)


class LMMBlock(_Block):
    """The long-term memory alone (no attention)."""

    def __init__(self, config: TitansConfig) -> None:
        super().__init__(config, unit=_memory_unit(config))

    def _span(self, x: Tensor, mask: Tensor, state: BlockState) -> tuple[Tensor, BlockState]:
        out, conv_x, memory = self.memory(x, mask, state.conv_x, state.memory)
        return out, BlockState(memory=memory, conv_x=conv_x)


BLOCK_CLASSES: dict[str, type[_Block]] = {"mac": MACBlock, "mag": MAGBlock, "mal": MALBlock, "lmm": LMMBlock}
