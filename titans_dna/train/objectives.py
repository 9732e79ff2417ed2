"""Pretraining objectives: causal next-token and masked language modelling (BERT's 80/10/10).

Both turn a batch of token windows into an :class:`LMBatch` (what the model reads, what it predicts, and a
per-position loss weight), so the training loop has one loss for both: a weighted cross-entropy where
weight 0 drops a position (PAD, optionally N, unmasked MLM positions) and soft-masked (lowercase, repeat)
bases count ``soft_mask_weight`` times a normal base.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from titans_dna.data.tokenizer import BASE_IDS, MASK_ID, N_ID

IGNORE_INDEX = -100  # cross_entropy's default ignore value; used where a position has no target
OBJECTIVES = ("causal", "mlm")


@dataclass
class LMBatch:
    """One objective-ready batch.

    Attributes:
        inputs: [B, T] long, the ids the model reads (MLM: with [MASK]/random/kept substitutions).
        targets: [B, T] long, the id to predict per position, ``IGNORE_INDEX`` where there is none.
        weights: [B, T] float32, loss weight per position (0 where ``targets`` is ignored).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor

    def to(self, device: torch.device | str) -> LMBatch:
        return LMBatch(self.inputs.to(device), self.targets.to(device), self.weights.to(device))


def target_weights(
    targets: torch.Tensor,
    soft_mask: torch.Tensor | None = None,
    ignore_n: bool = True,
    soft_mask_weight: float = 1.0,
) -> torch.Tensor:
    """Loss weight of each target id: 0 for PAD / specials / ``IGNORE_INDEX`` (and N when ``ignore_n``),
    ``soft_mask_weight`` for soft-masked bases, 1 otherwise.

    Args:
        targets: [B, T] long target ids (``IGNORE_INDEX`` allowed).
        soft_mask: [B, T] bool, True where the target base was lowercase in the FASTA; None = no masking.
        ignore_n: drop N targets (an N carries no sequence information to learn).
        soft_mask_weight: factor for soft-masked bases (e.g. 0.1 to down-weight repeats, 0 to drop them).

    Returns:
        [B, T] float32 weights.
    """
    base_ids = torch.tensor(BASE_IDS, device=targets.device)
    counted = torch.isin(targets, base_ids)
    if not ignore_n:
        counted |= targets == N_ID
    weights = counted.float()
    if soft_mask is not None and soft_mask_weight != 1.0:
        weights = torch.where(soft_mask.bool(), weights * soft_mask_weight, weights)
    return weights


def causal_batch(
    ids: torch.Tensor,
    soft_mask: torch.Tensor | None = None,
    ignore_n: bool = True,
    soft_mask_weight: float = 1.0,
) -> LMBatch:
    """Next-token prediction: position t predicts ids[t + 1]; the last position has no target.

    The model reads the whole window (T tokens, not T - 1) so that windows stay multiples of the memory's
    chunk and the MAC segment; one target per window is the price.

    Args:
        ids: [B, T] long token ids (PAD where a window is short).
        soft_mask: [B, T] bool soft-mask of ``ids`` (or None).
    """
    targets = torch.full_like(ids, IGNORE_INDEX)
    targets[:, :-1] = ids[:, 1:]
    target_soft = None
    if soft_mask is not None:
        target_soft = torch.zeros_like(soft_mask, dtype=torch.bool)
        target_soft[:, :-1] = soft_mask[:, 1:]
    weights = target_weights(targets, target_soft, ignore_n, soft_mask_weight)
    targets = torch.where(weights > 0, targets, IGNORE_INDEX)
    return LMBatch(ids, targets, weights)


def mlm_batch(
    ids: torch.Tensor,
    soft_mask: torch.Tensor | None = None,
    mask_prob: float = 0.15,
    ignore_n: bool = True,
    soft_mask_weight: float = 1.0,
    generator: torch.Generator | None = None,
) -> LMBatch:
    """BERT masking: each eligible base is chosen with probability ``mask_prob``; of the chosen, 80% become
    [MASK], 10% a random base (A/C/G/T) and 10% stay; only chosen positions have a target.

    Eligible are A/C/G/T (and N unless ``ignore_n``); PAD and special tokens are never chosen. With
    ``soft_mask_weight == 0`` soft-masked bases are still corrupted but carry no loss.

    Args:
        ids: [B, T] long token ids.
        soft_mask: [B, T] bool or None.
        generator: a torch.Generator on ``ids.device`` (reproducible masks; its state is checkpointed).

    Returns:
        LMBatch with corrupted inputs, original ids as targets at chosen positions.
    """
    eligible = target_weights(ids, None, ignore_n) > 0
    draw = torch.rand(ids.shape, generator=generator, device=ids.device)
    chosen = eligible & (draw < mask_prob)
    # A second uniform draw splits the chosen positions 80 / 10 / 10.
    how = torch.rand(ids.shape, generator=generator, device=ids.device)
    base_ids = torch.tensor(BASE_IDS, device=ids.device)
    random_bases = base_ids[torch.randint(0, 4, ids.shape, generator=generator, device=ids.device)]
    inputs = torch.where(chosen & (how < 0.8), MASK_ID, ids)
    inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), random_bases, inputs)

    targets = torch.where(chosen, ids, IGNORE_INDEX)
    weights = target_weights(targets, soft_mask, ignore_n, soft_mask_weight)
    return LMBatch(inputs, targets, weights)


def make_batch(
    objective: str,
    ids: torch.Tensor,
    soft_mask: torch.Tensor | None = None,
    mask_prob: float = 0.15,
    ignore_n: bool = True,
    soft_mask_weight: float = 1.0,
    generator: torch.Generator | None = None,
) -> LMBatch:
    """Dispatch on ``objective`` ("causal" or "mlm"); see :func:`causal_batch` and :func:`mlm_batch`."""
    if objective == "causal":
        return causal_batch(ids, soft_mask, ignore_n, soft_mask_weight)
    if objective == "mlm":
        return mlm_batch(ids, soft_mask, mask_prob, ignore_n, soft_mask_weight, generator)
    raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")


def weighted_lm_loss(logits: torch.Tensor, batch: LMBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted token cross-entropy.

    Args:
        logits: [B, T, V] (any float dtype; the loss is computed in float32).
        batch: targets and weights [B, T].

    Returns:
        ``(loss, weight_sum)``: the weighted mean cross-entropy (nats per counted token; 0 when nothing
        is counted) and the total weight, for averaging over several batches or ranks.
    """
    weight_sum = batch.weights.sum()
    loss = weighted_ce_sum(logits, batch.targets, batch.weights) / weight_sum.clamp_min(1e-8)
    return loss, weight_sum


def weighted_ce_sum(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i weights_i * cross-entropy_i over the positions of logits [..., V] (float32), targets and weights
    [...]: `weighted_lm_loss` before its division by the total weight."""
    ce = F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX,
                         reduction="none")
    return (ce * weights.flatten()).sum()
