"""How long the memory keeps what it writes, read from its forgetting gate on real input.

The memory decays as W_t = (1 - alpha_t) W_{t-1} + S_t (DESIGN.md), so whatever was written D tokens ago
survives with the factor prod(1 - alpha) over those D tokens, about exp(-D * r) with the mean rate
r = mean(-ln(1 - alpha_t)). A long-range recall test (bench/long_range.py) can only succeed at distances
where that factor is not negligible; this module measures r per layer and head.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from titans_dna.model.titans_dna import TitansDNA


@torch.no_grad()
def forgetting_rates(model: TitansDNA, input_ids: Tensor) -> Tensor:
    """Mean -ln(1 - alpha) per token, [n_layers, n_heads] (float64), over one forward of input_ids [B, T]
    (no padding: every position is a real token, as in a stream)."""
    H, sums, counts = model.config.n_heads, {}, {}

    def record(index: int):
        memory = model.layers[index].block.memory

        def hook(_module, _inputs, logits: Tensor) -> None:
            alpha = memory.gate_values(logits.double())[2]  # the forgetting gate the op receives
            rate = -torch.log1p(-alpha).reshape(-1, H)
            sums[index] = sums.get(index, 0.0) + rate.sum(0)
            counts[index] = counts.get(index, 0) + rate.shape[0]
        return hook

    gates = [layer.block.memory.gates for layer in model.layers]
    handles = [g.register_forward_hook(record(i)) for i, g in enumerate(gates)]
    was_training = model.training
    model.eval()
    try:
        model(input_ids)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return torch.stack([sums[i] / counts[i] for i in range(len(model.layers))]).cpu()


def half_lives(rates: Tensor) -> Tensor:
    """Tokens after which a write keeps half its weight: ln 2 / rate (same shape as rates)."""
    return math.log(2.0) / rates
