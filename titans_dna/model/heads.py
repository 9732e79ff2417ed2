"""Task heads on the backbone: masked pooling and a sequence classifier with optional RC conjoining."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from titans_dna.data.tokenizer import reverse_complement_ids

if TYPE_CHECKING:
    from titans_dna.model.titans_dna import TitansDNA

POOLINGS = ("mean", "max", "first", "last")


def check_pooling(how: str) -> None:
    if how not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}; got {how!r}")


def pool(hidden: Tensor, mask: Tensor | None, how: str) -> Tensor:
    """Pool token states over valid (right-padded) positions.

    Args:
        hidden: [B, T, d]; mask: [B, T] bool (None: all valid); how: "mean", "max", "first" or "last".
    Returns:
        [B, d]. "first" and "last" are the first and last valid tokens.
    """
    check_pooling(how)
    if mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    m = mask.unsqueeze(-1)
    if how == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    if how == "max":
        return hidden.masked_fill(~m, float("-inf")).amax(1)
    if how == "first":
        return hidden[:, 0]
    last = (mask.sum(1) - 1).clamp(min=0)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def reverse_complement_batch(input_ids: Tensor, mask: Tensor) -> Tensor:
    """Reverse complement of each right-padded row's valid part, padding kept at the right: [B, T]."""
    T = input_ids.shape[1]
    rc = reverse_complement_ids(input_ids)  # the whole row flips, so its padding moves to the left ...
    shift = (~mask).sum(1, keepdim=True)
    index = (torch.arange(T, device=input_ids.device)[None, :] + shift) % T  # ... and rotates back right
    return rc.gather(1, index)


class SequenceClassifier(nn.Module):
    """Backbone -> masked pooling -> linear logits [B, num_classes].

    rc_conjoin runs each sequence and its reverse complement (in one batch) and averages the logits, so the
    prediction is strand-symmetric (Caduceus's post-hoc conjoining).
    """

    def __init__(self, backbone: TitansDNA, num_classes: int, pooling: str = "mean",
                 rc_conjoin: bool = False) -> None:
        super().__init__()
        check_pooling(pooling)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}")
        self.backbone = backbone
        self.pooling = pooling
        self.rc_conjoin = rc_conjoin
        self.head = nn.Linear(backbone.config.d_model, num_classes, device=backbone.device,
                              dtype=backbone.dtype)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """input_ids [B, T] long, attention_mask [B, T] bool (right padding) -> logits [B, num_classes]."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        mask = attention_mask.bool()
        if self.rc_conjoin:
            input_ids = torch.cat([input_ids, reverse_complement_batch(input_ids, mask)])
            mask = torch.cat([mask, mask])
        hidden = self.backbone(input_ids, attention_mask=mask).hidden_states
        logits = self.head(pool(hidden, mask, self.pooling))
        if self.rc_conjoin:
            forward_strand, reverse_strand = logits.chunk(2)
            logits = (forward_strand + reverse_strand) / 2
        return logits
