"""Data parallelism through the real entry point: `torchrun --nproc_per_node=2 -m titans_dna.cli pretrain`
on CPU (gloo), with DDP and with FSDP, gives the same losses and weights as one process reading the same
global batches."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_pretrain import MICRO, read_metrics

from titans_dna.train.configs import compose_config
from titans_dna.train.pretrain import pretrain


def test_two_process_ddp_and_fsdp_match_single_process(tmp_path, data_dir, seed):
    # No N in any window, so every rank's loss averages the same number of bases and the mean of the two
    # ranks' gradients equals the gradient of the whole batch.
    overrides = [*MICRO, f"seed={seed}", "data.max_n_fraction=0", "train.max_steps=3", "train.val_every=3",
                 "train.checkpoint_every=3"]
    env = {**os.environ, "TITANS_DNA_DATA": str(data_dir), "OMP_NUM_THREADS": "1"}
    for strategy in ("ddp", "fsdp"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "titans_dna.cli", "pretrain", *overrides, f"train.strategy={strategy}",
               f"run_dir={tmp_path / strategy}"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert done.stdout.count("run folder:") == 1  # rank 0 alone reports (and logs, and checkpoints)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pretrain(compose_config([*overrides, f"run_dir={tmp_path / 'one'}"]))
    finally:
        torch.set_num_threads(threads)

    one = read_metrics(tmp_path / "one")
    w_one = load_file(tmp_path / "one" / "checkpoint" / "model.safetensors")
    for strategy in ("ddp", "fsdp"):
        rows = read_metrics(tmp_path / strategy)
        assert [(r["step"], r["split"]) for r in rows] == [(r["step"], r["split"]) for r in one]
        for a, b in zip(rows, one, strict=True):
            assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-4, abs=1e-5), (strategy, a, b)
        # Norm-wise: Adam's first steps are ~lr * sign(grad), so a gradient within rounding of 0 may flip
        # one element by 2 lr; data on the wrong rank would move every element.
        weights = load_file(tmp_path / strategy / "checkpoint" / "model.safetensors")
        assert weights.keys() == w_one.keys()
        for name, w in weights.items():
            error = ((w - w_one[name]).norm() / w_one[name].norm()).item()
            assert error < 1e-3, (strategy, name, error)
