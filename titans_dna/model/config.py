"""`TitansConfig`: every hyperparameter of the backbone in one small dataclass, checked at construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

BLOCKS = ("mac", "mag", "mal", "lmm")
ACTIVATIONS = ("silu", "gelu")
BACKENDS = ("auto", "naive", "triton")
INNER_STEPS = ("chunk_sum", "key_normalized")
MAX_MEMORY_DEPTH = 4


@dataclass
class TitansConfig:
    vocab_size: int = 16  # embedding rows (tokenizer ids 0..11, padded to 16); the LM head predicts all rows
    d_model: int = 256  # residual stream width; must equal n_heads * head_dim
    n_layers: int = 4  # number of [block, SwiGLU MLP] layers
    n_heads: int = 4  # heads of both attention and the memory
    head_dim: int = 64  # per-head width of attention and of the memory keys/values (even, for RoPE)
    block: str = "mac"  # "mac" memory as context | "mag" gate | "mal" layer | "lmm" memory only
    memory_depth: int = 2  # layers of the memory MLP: 1 = matrix memory, 2..4 = residual MLP
    memory_expansion: int = 2  # memory MLP hidden width = head_dim * memory_expansion
    memory_activation: str = "silu"  # "silu" or "gelu": smooth, the outer backward needs act''''
    chunk_size: int = 64  # tokens that share the chunk-start memory weights (1 = exact per-token recurrence)
    segment_len: int = 256  # MAC segment C (a multiple of chunk_size); also the MLM visibility unit
    n_persistent: int = 16  # learned persistent tokens prefixed to every attention
    conv_width: int = 4  # depthwise causal convolution on the memory's q, k, v
    theta_max: float = 0.1  # bound of the inner step (summed over a chunk, or per key: see inner_step)
    inner_step: str = "chunk_sum"  # per-token theta: "chunk_sum" <= theta_max / chunk_size | "key_normalized"
    # theta_max shared by a chunk's overlapping keys (TitansMemory.inner_step)
    eta_max: float = 0.9  # bound of the momentum gate: eta near 1 integrates the update twice and diverges
    alpha_max: float = 1.0  # bound of the forgetting gate per token (1: the paper's); half-life >= ln 2 / it
    window: int = 256  # sliding-window attention span of mag/mal (keys i - window < j <= i)
    mlp_ratio: float = 4.0  # SwiGLU hidden = 2/3 * mlp_ratio * d_model rounded up to 64 (params of a 4x MLP)
    causal: bool = True  # True: next-token model; False: bidirectional inside a segment (MLM)
    memory_backend: str = "auto"  # titans_memory backend: "auto" | "naive" | "triton"
    dropout: float = 0.0  # dropout on block and MLP outputs (training only)
    tie_embeddings: bool = True  # LM head reuses the embedding matrix
    gradient_checkpointing: bool = False  # recompute each segment in backward (long sequences)

    def __post_init__(self) -> None:
        errors = []
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "memory_expansion",
                     "chunk_size", "segment_len", "conv_width", "window"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                errors.append(f"{name} must be a positive int (got {value!r})")
        if errors:  # later checks do arithmetic on these
            raise ValueError("invalid TitansConfig: " + "; ".join(errors))
        if self.n_heads * self.head_dim != self.d_model:
            errors.append(f"n_heads * head_dim must equal d_model (got {self.n_heads} * {self.head_dim} != "
                          f"{self.d_model}); the head dim must divide d_model")
        if self.head_dim % 2:
            errors.append(f"head_dim must be even for rotary embeddings (got {self.head_dim})")
        if self.segment_len % self.chunk_size:
            errors.append(f"segment_len must be a multiple of chunk_size (got segment_len="
                          f"{self.segment_len}, chunk_size={self.chunk_size})")
        if self.block not in BLOCKS:
            errors.append(f"block must be one of {BLOCKS} (got {self.block!r})")
        if self.memory_activation not in ACTIVATIONS:
            errors.append(f"memory_activation must be one of {ACTIVATIONS} (got {self.memory_activation!r})")
        if self.inner_step not in INNER_STEPS:
            errors.append(f"inner_step must be one of {INNER_STEPS} (got {self.inner_step!r})")
        if self.memory_backend not in BACKENDS:
            errors.append(f"memory_backend must be one of {BACKENDS} (got {self.memory_backend!r})")
        if not (isinstance(self.memory_depth, int) and 1 <= self.memory_depth <= MAX_MEMORY_DEPTH):
            errors.append(f"memory_depth must be an int in 1..{MAX_MEMORY_DEPTH} (got {self.memory_depth!r})")
        if not (isinstance(self.n_persistent, int) and self.n_persistent >= 0):
            errors.append(f"n_persistent must be an int >= 0 (got {self.n_persistent!r})")
        if not 0.0 < self.theta_max <= 1.0:
            errors.append(f"theta_max must be in (0, 1] (got {self.theta_max!r})")
        if not 0.0 < self.eta_max < 1.0:
            errors.append(f"eta_max must be in (0, 1) (got {self.eta_max!r})")
        if not 0.0 < self.alpha_max <= 1.0:
            errors.append(f"alpha_max must be in (0, 1] (got {self.alpha_max!r})")
        if not self.mlp_ratio > 0:
            errors.append(f"mlp_ratio must be > 0 (got {self.mlp_ratio!r})")
        if not 0.0 <= self.dropout < 1.0:
            errors.append(f"dropout must be in [0, 1) (got {self.dropout!r})")
        if errors:
            raise ValueError("invalid TitansConfig: " + "; ".join(errors))

    @property
    def mlp_hidden(self) -> int:
        """SwiGLU hidden width: 2/3 of mlp_ratio * d_model, rounded up to a multiple of 64."""
        return 64 * -(-int(2 * self.mlp_ratio * self.d_model / 3) // 64)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TitansConfig:
        """A named size ("tiny" ~1M parameters, "small" ~8M, "base" ~40M), fields overridable."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TitansConfig:
        """Inverse of `to_dict`; unknown keys are an error (a typo must not fall back to a default)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TitansConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**values)


# Sizes: tiny runs the CPU tests and the quickstart in seconds; small and base are the pretraining sizes.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=128, n_layers=3, n_heads=2, head_dim=64, chunk_size=16, segment_len=64,
                 n_persistent=4, window=64),
    "small": dict(d_model=256, n_layers=6, n_heads=4, head_dim=64),
    "base": dict(d_model=512, n_layers=8, n_heads=8, head_dim=64),
}
