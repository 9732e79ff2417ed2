"""bench/memory_bf16_floor.py: its bf16 products round what the kernels' dots round, and nothing else."""

from __future__ import annotations

import pytest
import torch
from data_helpers import load_script


@pytest.fixture
def floor(monkeypatch):
    monkeypatch.setenv("BENCH_DEVICE", "cpu")
    return load_script("bench/memory_bf16_floor.py")


def test_products_round_operands_and_cotangents(floor, seed):
    """Forward: the product of the bf16-rounded operands; backward: the incoming gradient rounded too."""
    g = torch.Generator().manual_seed(seed)
    a, b, up = (torch.randn(*shape, dtype=torch.float64, generator=g) for shape in ((5, 7), (4, 7), (5, 4)))
    a.requires_grad_()
    out = floor._rounded_einsum("ni,oi->no")(a, b)
    bf = [x.detach().to(torch.bfloat16).double() for x in (a, b, up)]
    # float64 products of bf16 values: equal up to the summation order, far below bf16's 4e-3
    torch.testing.assert_close(out, bf[0] @ bf[1].T, rtol=1e-12, atol=1e-12)
    out.backward(up)
    torch.testing.assert_close(a.grad, bf[2] @ bf[1], rtol=1e-12, atol=1e-12)


def test_floor_is_bf16_sized_and_the_reference_comes_back(floor, seed):
    """On a small case the floor is of bf16's size (not 0, not O(1)), and the reference's own products are
    restored after the block."""
    saved = floor.common._linear, floor.common._backprop, floor.naive.weighted_outer_sum
    row = floor.floor_of(("small", 1, 70, 2, 16, 4, 2, 16, "silu", False, ("bfloat16",)), seed)
    assert (floor.common._linear, floor.common._backprop, floor.naive.weighted_outer_sum) == saved
    assert {"o", "dq", "dk", "dv", "dtheta", "deta", "dalpha", "dW0_0", "dW0_1"} <= row["errors"].keys()
    assert 1e-4 < row["error"] < 5e-2, row
