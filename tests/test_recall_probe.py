"""bench/recall_probe.py places its copies where it scores them, and its run writes a loss curve."""

from __future__ import annotations

import json

import torch
from data_helpers import load_script

from titans_dna.data.tokenizer import BASE_IDS


def test_batch_repeats_the_insert_and_the_loss_reads_it(seed):
    probe = load_script("bench/recall_probe.py")
    gen = torch.Generator().manual_seed(seed)
    ids, starts = probe.make_batch(8, 200, 24, 100, gen)
    assert set(ids.unique().tolist()) <= set(BASE_IDS)
    for row, s in zip(ids, starts.tolist(), strict=True):
        assert torch.equal(row[s:s + 24], row[s + 100:s + 124]) and s + 124 <= 200
    # logp[:, t] is log p(ids[t + 1]): a model sure of every base of the second copy costs 0 there
    logp = torch.full((8, 199), -5.0)
    for b, s in enumerate(starts.tolist()):
        logp[b, s + 100 + 1:s + 100 + 23] = 0.0
    assert probe.copy_loss(logp, starts, 100, 24) == 0.0 and probe.copy_loss(logp, starts, 0, 24) == 5.0


def test_a_short_run_writes_its_curve(tmp_path):
    probe = load_script("bench/recall_probe.py")
    argv = ["--distance", "32", "--steps", "2", "--length", "96", "--batch", "2", "--log-every", "1"]
    assert probe.main([*argv, "--out", str(tmp_path)]) == 0
    log = json.loads((tmp_path / "recall_probe.json").read_text())["log"]
    assert [row["step"] for row in log] == [1, 2] and all(row["loss"] > 0 for row in log)
