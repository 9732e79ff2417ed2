"""Schedules of the pretraining loop: learning rate (linear warm-up, cosine decay) and sequence length
(warm-up by doubling, as HyenaDNA's sequence-length warm-up), both pure functions of the step so that a
resumed run recomputes them exactly.
"""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear from ~0 to 1 over ``warmup_steps``, then
    cosine from 1 down to ``min_ratio`` at ``total_steps`` (and flat after).

    Usable as ``torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, ...))``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def seq_len_stages(final_len: int, start_len: int) -> list[int]:
    """Lengths of the warm-up stages: start_len, 2 start_len, ... below ``final_len`` (then ``final_len``)."""
    stages = []
    length = start_len
    while 0 < length < final_len:
        stages.append(length)
        length *= 2
    return stages + [final_len]


def seq_len_at(step: int, final_len: int, start_len: int = 1024, warmup_steps: int = 0) -> int:
    """Training sequence length at ``step``: the warm-up stages share ``warmup_steps`` equally, then
    ``final_len``. With ``warmup_steps == 0`` or ``start_len >= final_len`` it is always ``final_len``.

    Example: final 8192, start 1024, 300 warm-up steps -> 1024 for steps 0-99, 2048 for 100-199,
    4096 for 200-299, 8192 from 300 on.
    """
    stages = seq_len_stages(final_len, start_len)[:-1]
    if warmup_steps <= 0 or not stages or step >= warmup_steps:
        return final_len
    return stages[step * len(stages) // warmup_steps]


def split_windows(x: torch.Tensor, length: int) -> torch.Tensor:
    """Cut each window into consecutive pieces of ``length`` tokens: [B, L] -> [B * (L // length), length].

    The loop always reads full-length windows and cuts them during the warm-up, so tokens per step and
    the data position stay the same whatever the current length (the tail L % length is dropped).
    """
    if length >= x.shape[1]:
        return x
    pieces = x.shape[1] // length
    return x[:, : pieces * length].reshape(x.shape[0] * pieces, length, *x.shape[2:])
