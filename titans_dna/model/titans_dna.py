"""`TitansDNA`: embeddings, N x [RMSNorm, Titans block, residual; RMSNorm, SwiGLU, residual], final norm,
tied LM head. Also the user-facing conveniences: `embed`, `save_pretrained` / `from_pretrained`.

Padding is right padding (valid tokens first, as `DNATokenizer.batch_encode` makes it); a sequence may be
fed whole or in pieces with `state` carried (see blocks.py for what stays exact).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from titans_dna.data.atomic import atomic_path, atomic_write_text
from titans_dna.model.blocks import BLOCK_CLASSES, BlockState
from titans_dna.model.config import TitansConfig
from titans_dna.model.layers import RMSNorm, SwiGLU

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"


@dataclass
class ModelState:
    """Stream state of the whole model: one `BlockState` per layer."""

    layers: list[BlockState]


@dataclass
class TitansOutput:
    hidden_states: Tensor  # [B, T, d_model], after the final norm
    logits: Tensor  # [B, T, vocab_size]
    state: ModelState | None = None  # with return_state=True: pass it with the next piece of the sequence


class TitansLayer(nn.Module):
    """Pre-norm residual layer: x + block(norm(x)), then x + SwiGLU(norm(x))."""

    def __init__(self, config: TitansConfig) -> None:
        super().__init__()
        self.config = config
        self.block_norm = RMSNorm(config.d_model)
        self.block = BLOCK_CLASSES[config.block](config)
        self.mlp_norm = RMSNorm(config.d_model)
        self.mlp = SwiGLU(config.d_model, config.mlp_hidden)
        self.dropout = nn.Dropout(config.dropout)

    def _mlp_branch(self, x: Tensor) -> Tensor:
        return self.dropout(self.mlp(self.mlp_norm(x)))

    def forward(self, x: Tensor, mask: Tensor, state: BlockState | None,
                return_state: bool) -> tuple[Tensor, BlockState | None]:
        out, state = self.block(self.block_norm(x), mask, state, return_state)
        x = x + self.dropout(out)
        if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return x + checkpoint(self._mlp_branch, x, use_reentrant=False), state
        return x + self._mlp_branch(x), state


class TitansDNA(nn.Module):
    """The Titans DNA backbone with a tied LM head.

    `forward` gives hidden states, logits and the stream state; `embed`, `save_pretrained` and
    `from_pretrained` are the user conveniences.
    """

    def __init__(self, config: TitansConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.layers = nn.ModuleList(TitansLayer(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model)
        self.lm_head = (None if config.tie_embeddings
                        else nn.Linear(config.d_model, config.vocab_size, bias=False))

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                state: ModelState | None = None, return_state: bool = False) -> TitansOutput:
        """Args:
            input_ids: [B, T] long token ids.
            attention_mask: [B, T] bool, True on tokens, False on right padding (None: no padding).
            state: the `ModelState` returned with the previous piece of the same sequences (None: start).
            return_state: also return the state after this piece.
        Returns:
            `TitansOutput` with hidden_states [B, T, d_model], logits [B, T, vocab_size] and the state.
        """
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [B, T] with T >= 1; got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                             f"{tuple(input_ids.shape)}")
        mask = attention_mask.bool()
        if (mask[:, 1:] & ~mask[:, :-1]).any():
            raise ValueError("attention_mask must be right padding (all tokens before any padding)")
        if state is not None and len(state.layers) != len(self.layers):
            raise ValueError(f"state has {len(state.layers)} layers; the model has {len(self.layers)}")
        return self._forward(input_ids, mask, state, return_state)

    def _forward(self, input_ids: Tensor, mask: Tensor, state: ModelState | None,
                 return_state: bool) -> TitansOutput:
        """`forward` on checked inputs. No host-device synchronisation, so CUDA graphs can capture it
        (model/graphed.py)."""
        x = self.embedding(input_ids)
        layer_states = []
        for i, layer in enumerate(self.layers):
            x, layer_state = layer(x, mask, None if state is None else state.layers[i], return_state)
            layer_states.append(layer_state)
        return self.head(x, ModelState(layer_states) if return_state else None)

    def head(self, x: Tensor, state: ModelState | None = None) -> TitansOutput:
        """The output of the last layer's residual stream x [B, T, d_model]: final norm and LM head."""
        hidden = self.norm(x)
        logits = self.lm_head(hidden) if self.lm_head is not None else hidden @ self.embedding.weight.T
        return TitansOutput(hidden, logits, state)

    def embed(self, seqs: str | os.PathLike | list[str], pooling: str = "mean", rc_average: bool = False,
              batch_size: int = 32, per_token: bool = False) -> Tensor | list[Tensor]:
        """Embeddings of DNA sequences: [n, d_model] (per_token: a list of [L_i, d_model]).

        `seqs` is one sequence, a list of them, or a FASTA/GenBank/EMBL path (one embedding per record).
        Runs under no_grad in eval mode on the model's device, any length (streamed in pieces).
        See `titans_dna.model.embed.embed_sequences`.
        """
        from titans_dna.model.embed import embed_sequences

        return embed_sequences(self, seqs, pooling=pooling, rc_average=rc_average, batch_size=batch_size,
                               per_token=per_token)

    def num_parameters(self) -> int:
        """Number of distinct parameters (the tied LM head counts once)."""
        return sum(p.numel() for p in self.parameters())

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component, summed over layers: embedding, memory, attention, gate, mlp, norms."""
        counts: dict[str, int] = defaultdict(int)
        for name, p in self.named_parameters():
            parts = name.split(".")
            key = parts[0] if parts[0] != "layers" else parts[3] if parts[2] == "block" else parts[2]
            counts["norms" if key.endswith("norm") else key] += p.numel()
        return dict(counts)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write config.json and model.safetensors into `directory`, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: t.detach().contiguous().cpu() for name, t in self.state_dict().items()}
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        atomic_write_text(directory / CONFIG_NAME, json.dumps(self.config.to_dict(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike,
                        device: str | torch.device = "cpu") -> TitansDNA:
        """Load a model saved by `save_pretrained`: a directory, or the name of one shipped in
        titans_dna/pretrained/. Weights keep the dtype they were saved in."""
        directory = Path(path_or_name)
        if not (directory / CONFIG_NAME).is_file():
            shipped = PRETRAINED_DIR / str(path_or_name)
            if not (shipped / CONFIG_NAME).is_file():
                names = sorted(found.parent.name for found in PRETRAINED_DIR.glob(f"*/{CONFIG_NAME}"))
                raise FileNotFoundError(f"{path_or_name!s} is neither a directory with {CONFIG_NAME} nor a "
                                        f"shipped model; shipped models: {', '.join(names) or 'none'}")
            directory = shipped
        config = TitansConfig.from_dict(json.loads((directory / CONFIG_NAME).read_text()))
        tensors = load_file(str(directory / WEIGHTS_NAME), device=str(device))
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(tensors, strict=True, assign=True)
        return model.to(device)
