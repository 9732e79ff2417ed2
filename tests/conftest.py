"""Shared fixtures: the real data folder, and a seed that is fresh each run but logged."""

from __future__ import annotations

import os
import random

import pytest
import torch

from titans_dna.data.paths import shared_data_dir


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread: the test tensors are tiny, and two threads per op on a 2-core CI machine spend
    more on synchronisation than they save (20-50x slower when another process holds a core)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir():
    folder = shared_data_dir(required=False)
    if folder is None:
        pytest.skip("shared data folder missing (set TITANS_DNA_DATA)")
    return folder


@pytest.fixture
def seed(request) -> int:
    """A fresh random seed per test, printed so a failure can be replayed with TITANS_DNA_SEED."""
    value = int(os.environ.get("TITANS_DNA_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(value)
    print(f"[seed] {request.node.nodeid}: TITANS_DNA_SEED={value}")
    return value
