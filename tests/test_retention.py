"""The forgetting-gate half-life read from a model equals the one set through its gate biases."""

from __future__ import annotations

import math

import pytest
import torch

from titans_dna.model import TitansConfig, TitansDNA
from titans_dna.model.retention import forgetting_rates, half_lives


@pytest.mark.parametrize("block", ["mac", "lmm"])
def test_rates_match_the_forget_gate_set_in_the_biases(block, seed):
    torch.manual_seed(seed)
    config = TitansConfig.preset("tiny", block=block)
    model = TitansDNA(config).double()
    H = config.n_heads
    alphas = torch.linspace(1e-3, 0.05, H, dtype=torch.float64)
    for i, layer in enumerate(model.layers):
        gates = layer.block.memory.gates
        with torch.no_grad():
            gates.weight[2 * H:].zero_()  # alpha no longer depends on the input
            gates.bias[2 * H:] = torch.logit(alphas * (i + 1) / config.n_layers)
    ids = torch.randint(0, 4, (2, 3 * config.segment_len + 17)) + 7
    rates = forgetting_rates(model, ids)
    assert rates.shape == (config.n_layers, H)
    for i in range(config.n_layers):
        want = -torch.log1p(-alphas * (i + 1) / config.n_layers)
        torch.testing.assert_close(rates[i], want, rtol=1e-12, atol=0.0)
    assert half_lives(rates)[0, 0] == pytest.approx(math.log(2) / -math.log1p(-1e-3 / config.n_layers))
    assert not any(layer.block.memory.gates._forward_hooks for layer in model.layers)


def test_alpha_max_bounds_the_forgetting_and_lengthens_the_half_life(seed):
    """alpha_max scales the forgetting gate (it starts at 0.01 of its bound), so the half-life measured on a
    fresh model grows as 1 / alpha_max; the default (1) is the unbounded gate of the shipped checkpoint."""
    torch.manual_seed(seed)
    ids = torch.randint(0, 4, (1, 200)) + 7
    lives = []
    for bound in (1.0, 1e-3):
        torch.manual_seed(seed)
        model = TitansDNA(TitansConfig.preset("tiny", alpha_max=bound)).double()
        logits = torch.full((1, 5, 3 * model.config.n_heads), 40.0, dtype=torch.float64)  # gates saturated
        assert float(model.layers[0].block.memory.gate_values(logits)[2].max()) <= bound
        lives.append(half_lives(forgetting_rates(model, ids)))
    ratio = lives[1] / lives[0]
    assert float(ratio.min()) > 900 and float(ratio.max()) < 1100
    with pytest.raises(ValueError, match="alpha_max"):
        TitansConfig(alpha_max=0.0)
