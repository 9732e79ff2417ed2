"""`TitansMemory`: the neural long-term memory layer (projections, convs, gates, output) around the op.

The layer owns everything learned in the outer loop; the inner loop (test-time gradient descent with momentum
and forgetting) is the `titans_memory` op in `titans_dna.kernels.titans_memory` (DESIGN.md, "Neural
long-term memory"). Shapes: inputs [B, T, d_model]; per-head tensors [B, T, H, D]; gates [B, T, H].

Streams: a sequence may arrive in pieces. The layer itself is stateless; callers pass the previous stream
inputs (`conv_tail`, the last conv_width - 1 rows, zeros at the start) and the op state at the boundary
where the piece starts, and get both back. The convolution is causal in both modes: bidirectional (MLM)
context comes from attention and from reading the memory after the segment, and a causal conv keeps
segment-aligned MLM streaming exact.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from titans_dna.kernels.titans_memory import MemoryState, memory_read, titans_memory
from titans_dna.model.config import TitansConfig
from titans_dna.model.layers import RMSNorm, depthwise_conv, keep_tail, l2norm

# Gates stay this far from 0 and 1 (DESIGN.md): sigmoid saturates to exactly 1.0 in float32 near x = 17,
# and a forgetting gate of 1 or a momentum of 0 would make the op's log-space products degenerate.
GATE_EPS = 1e-6


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class MemoryInputs(NamedTuple):
    """What the op consumes: q, k, v [B, T, H, D] (q, k unit norm) and gates theta, eta, alpha [B, T, H]."""

    q: Tensor
    k: Tensor
    v: Tensor
    theta: Tensor
    eta: Tensor
    alpha: Tensor

    def span(self, start: int, stop: int) -> MemoryInputs:
        return MemoryInputs(*(t[:, start:stop] for t in self))


class TitansMemory(nn.Module):
    """Multi-head neural memory: q/k/v = SiLU(causal depthwise conv(x W)), l2norm on q and k, per-token
    per-head gates, a learned initial memory W_0, and an output RMSNorm per head followed by W_O.
    """

    def __init__(self, config: TitansConfig) -> None:
        super().__init__()
        self.config = config
        d, H, D = config.d_model, config.n_heads, config.head_dim
        self.q_proj = nn.Linear(d, H * D, bias=False)
        self.k_proj = nn.Linear(d, H * D, bias=False)
        self.v_proj = nn.Linear(d, H * D, bias=False)
        # depthwise conv weights [channels, 1, width], PyTorch's Conv1d default init (fan_in = width)
        bound = 1.0 / math.sqrt(config.conv_width)
        self.conv_q, self.conv_k, self.conv_v = (
            nn.Parameter(torch.empty(H * D, 1, config.conv_width).uniform_(-bound, bound)) for _ in range(3))
        # theta, eta, alpha logits per head; the biases start each gate at a share of its bound: theta at a
        # tenth, eta at 0.9 (DESIGN.md starts the unbounded eta at 0.9) and alpha at 0.01 (sigmoid(0) = 0.5
        # would halve the memory every token).
        self.gates = nn.Linear(d, 3 * H)
        with torch.no_grad():
            self.gates.weight.normal_(0.0, 0.02)
            start = [_logit(0.1), _logit(0.9), _logit(0.01)]
            self.gates.bias.copy_(torch.tensor(start).repeat_interleave(H))
        self.weights = nn.ParameterList(_initial_memory(H, D, config.memory_depth, config.memory_expansion))
        self.norm = RMSNorm(H, D)
        self.out_proj = nn.Linear(H * D, d, bias=False)

    # ---- features of a stream ---------------------------------------------------------------------------
    def _streams(self, x: Tensor, tail: Tensor | None, n: int) -> tuple[Tensor, ...]:
        """The first n of q, k, v of x [B, T, d], each [B, T, H, D]: l2norm(SiLU(causal depthwise conv(xW))).

        The n streams share one input concatenation, matmul, conv, SiLU and norm over their concatenated
        weights: at batch 1 (streaming) a segment costs what its number of kernel launches costs.
        """
        B, T, _ = x.shape
        c = self.config
        if tail is None:  # start of the stream: zero inputs before it (projections have no bias)
            tail = x.new_zeros(B, c.conv_width - 1, x.shape[-1])
        projs = (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight)[:n]
        convs = (self.conv_q, self.conv_k, self.conv_v)[:n]
        weight, taps = (projs[0], convs[0]) if n == 1 else (torch.cat(projs), torch.cat(convs))
        y = F.silu(depthwise_conv(F.linear(torch.cat([tail, x], dim=1), weight), taps))
        return l2norm(y.view(B, T, n, c.n_heads, c.head_dim)).unbind(2)

    def conv_tail(self, tail: Tensor | None, x: Tensor) -> Tensor:
        """The conv tail after the stream has also seen x: its last conv_width - 1 inputs [B, w - 1, d]."""
        if tail is None:
            tail = x.new_zeros(x.shape[0], self.config.conv_width - 1, x.shape[-1])
        return keep_tail(tail, x, self.config.conv_width - 1)

    def query(self, x: Tensor, tail: Tensor | None) -> Tensor:
        """Unit-norm queries [B, T, H, D] of x [B, T, d] (MAC reads its segment input with these)."""
        return self._streams(x, tail, 1)[0]

    def features(self, x: Tensor, mask: Tensor, tail: Tensor | None) -> MemoryInputs:
        """q, k, v and gates of x [B, T, d]; padding (mask False) gets theta = eta = alpha = 0: no write."""
        # Unit-norm values like the keys: the inner loop's growth rate scales with |v|, and with free-scale
        # values pretraining blew the memory to NaN on a CT-repeat + N-gap stretch of chr20 (|v| ~ 3).
        q, k, v = self._streams(x, tail, 3)
        theta_share, eta, alpha = self.gate_values(self.gates(x), mask)
        return MemoryInputs(q, k, v, self.inner_step(theta_share, eta, k, mask), eta, alpha)

    def gate_values(self, logits: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The inner-step gate as a share of its bound in [0, 1], eta and alpha [B, T, H] (float32 or wider)
        from the gate projection's logits [B, T, 3H]; padding (mask False) gets 0 for all three: no write."""
        c, H = self.config, self.config.n_heads
        if logits.dtype in (torch.float16, torch.bfloat16):  # 1 - GATE_EPS rounds to 1 in half precision
            logits = logits.float()
        gates = torch.sigmoid(logits).clamp(GATE_EPS, 1.0 - GATE_EPS)
        if mask is not None:
            gates = gates * mask.unsqueeze(-1).to(logits.dtype)
        theta, eta, alpha = gates[..., :H], gates[..., H: 2 * H], gates[..., 2 * H:]
        # alpha_max bounds the forgetting: a write keeps >= (1 - alpha_max)^D of its weight D tokens later.
        return theta, c.eta_max * eta, c.alpha_max * alpha

    def inner_step(self, share: Tensor, eta: Tensor, k: Tensor, mask: Tensor) -> Tensor:
        """theta [B, T, H], the per-token inner step the op takes, from the gate's share of its bound.

        Every token of a chunk steps from the chunk-start weights, so a chunk of b tokens with near-identical
        keys moves the memory's answer to them by about b theta / (1 - eta) at once; on low-complexity DNA
        theta_max = 0.1 per token (or eta -> 1) diverged to NaN within one 256-token segment of real sequence.
        "chunk_sum" bounds the per-chunk sum: theta <= theta_max / chunk_size, which keeps one pass of the
        write from storing much (BENCHMARKS.md, the recall probe). "key_normalized" bounds by what the chunk's
        keys share: theta = theta_max * share * (1 - eta) / r_t with r_t = sum_j |k_t . k_j| over t's chunk,
        so orthogonal keys each take up to theta_max, n identical keys split it, and momentum (total gain
        1 / (1 - eta)) does not raise it. For a matrix memory the chunk update's eigenvalues then stay within
        theta_max (the rows of D^-1 K sum to at most 1 in absolute value).
        """
        c = self.config
        if c.inner_step == "chunk_sum":
            return (c.theta_max / c.chunk_size) * share
        return c.theta_max * share * (1.0 - eta) / chunk_key_overlap(k, mask, c.chunk_size)

    # ---- the op -----------------------------------------------------------------------------------------
    def write(self, inputs: MemoryInputs, memory: MemoryState | None) -> tuple[Tensor, MemoryState]:
        """Run the op from `memory` (None: W_0, S = 0): chunk-causal reads o [B, T, H, D] and the state
        after the last token."""
        c = self.config
        device = inputs.q.device.type
        if torch.is_autocast_enabled(device):
            # The op's matmuls follow autocast as a linear layer's would; gates and state stay float32.
            # Autocast alone leaves q, k, v in float32 (the depthwise conv multiplies by float32 taps),
            # and the kernels run float32 inputs as six bf16 dots each, for float32 accuracy.
            dtype = torch.get_autocast_dtype(device)
            inputs = inputs._replace(q=inputs.q.to(dtype), k=inputs.k.to(dtype), v=inputs.v.to(dtype))
        o, state = titans_memory(*inputs, list(self.weights), initial_state=memory, chunk_size=c.chunk_size,
                                 activation=c.memory_activation, output_final_state=True,
                                 backend=c.memory_backend)
        return o, state

    def read(self, q: Tensor, memory: MemoryState | None) -> Tensor:
        """M_W(q) [B, T, H, D] for the weights of `memory` (None: W_0), leaving it unchanged.

        What the op outputs when nothing is written, as one MLP pass of the op's own definition
        (`memory_read`): running the op with zero gates would also compute, and keep for the backward, the
        inner gradients and chunk updates it multiplies by zero (MAC reads every segment, so that doubled
        the memory's activation memory and much of its time).
        """
        return memory_read(q, list(self.weights), memory, self.config.memory_activation)

    def readout(self, o: Tensor) -> Tensor:
        """Per-head RMSNorm then W_O: [B, T, H, D] -> [B, T, d_model]."""
        return self.out_proj(self.norm(o).flatten(-2))

    def forward(self, x: Tensor, mask: Tensor, conv_tail: Tensor | None = None,
                memory: MemoryState | None = None) -> tuple[Tensor, Tensor, MemoryState]:
        """The memory as a layer (LMM) on a span that starts at a chunk (causal) or segment boundary.

        Causal: token t reads the weights at the start of its chunk. Bidirectional: each segment is written
        first, then every token of it reads the memory after the whole segment (M_s).

        Args:
            x: [B, T, d_model]; mask: [B, T] bool (False = padding).
            conv_tail, memory: the stream's state where x starts (None = start of stream).
        Returns:
            output [B, T, d_model], the conv tail and the op state after x.
        """
        inputs = self.features(x, mask, conv_tail)
        if self.config.causal:
            o, memory = self.write(inputs, memory)
        else:
            outs = []
            for start in range(0, x.shape[1], self.config.segment_len):
                segment = inputs.span(start, start + self.config.segment_len)
                _, memory = self.write(segment, memory)
                outs.append(self.read(segment.q, memory))
            o = torch.cat(outs, dim=1)
        return self.readout(o), self.conv_tail(conv_tail, x), memory


def _initial_memory(H: int, D: int, depth: int, expansion: int) -> list[nn.Parameter]:
    """Learned W_0 per layer ([H, out, in], `out = x W^T`): depth 1 [H, D, D]; deeper [H, E, D],
    [H, E, E]..., [H, D, E] with E = D * expansion. Fan-in scaled so M(k) starts at the scale of k."""
    if depth == 1:
        shapes = [(D, D)]
    else:
        E = D * expansion
        shapes = [(E, D)] + [(E, E)] * (depth - 2) + [(D, E)]
    return [nn.Parameter(torch.randn(H, out, inp) / math.sqrt(inp)) for out, inp in shapes]


def chunk_key_overlap(k: Tensor, mask: Tensor, chunk: int) -> Tensor:
    """r [B, T, H]: sum over the tokens j of t's chunk (chunks from position 0) of |k_t . k_j|, padding
    excluded; 1 for a chunk of orthogonal unit keys, up to the chunk's length for identical ones."""
    B, T, H, D = k.shape
    pad = -T % chunk
    keys = F.pad(k * mask[..., None, None].to(k.dtype), (0, 0, 0, 0, 0, pad)).view(B, -1, chunk, H, D)
    overlap = torch.einsum("bnihd,bnjhd->bnhij", keys, keys).abs().sum(-1)  # [B, n, H, chunk]
    return overlap.transpose(2, 3).reshape(B, -1, H)[:, :T].clamp_min(1e-6)
