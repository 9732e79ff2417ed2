"""bench/recall_probe.py places its copies where it scores them, and its run writes a loss curve."""

from __future__ import annotations

import json

import torch
from data_helpers import load_script

from titans_dna.data.tokenizer import BASE_IDS
from titans_dna.model import TitansConfig, TitansDNA


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


def test_periodic_background_repeats_outside_the_copies(seed):
    probe = load_script("bench/recall_probe.py")
    ids, starts = probe.make_batch(4, 200, 24, 100, torch.Generator().manual_seed(seed), period=7)
    for row, s in zip(ids, starts.tolist(), strict=True):
        assert torch.equal(row[s:s + 24], row[s + 100:s + 124])
        background = torch.ones(200, dtype=torch.bool)
        background[s:s + 24] = background[s + 100:s + 124] = False
        t = torch.arange(7, 200)
        keep = background[t] & background[t - 7]
        assert torch.equal(row[t[keep]], row[t[keep] - 7])


def test_a_short_run_writes_its_curve(tmp_path):
    probe = load_script("bench/recall_probe.py")
    argv = ["--distance", "32", "--steps", "2", "--length", "96", "--batch", "2", "--log-every", "1"]
    assert probe.main([*argv, "--out", str(tmp_path)]) == 0
    log = json.loads((tmp_path / "recall_probe.json").read_text())["log"]
    assert [row["step"] for row in log] == [1, 2] and all(row["loss"] > 0 for row in log)
    report = json.loads((tmp_path / "recall_probe.json").read_text())
    signal = report["write_signal_at_init"]
    assert len(signal) == 2 and all(layer[name] > 0 for layer in signal for name in "qkv")
    ablation = report["memory_ablation"]
    assert {k: sorted(v) for k, v in ablation.items()} == {"carried": ["first_copy", "second_copy"],
                                                          "reset": ["first_copy", "second_copy"]}
    assert all(0 < loss < 10 for v in ablation.values() for loss in v.values())


def test_gate_starts_set_the_gates_a_model_begins_with():
    """--theta-start / --eta-start: the memory's first gate values are those shares of their bounds."""
    probe = load_script("bench/recall_probe.py")
    config = TitansConfig(d_model=64, n_layers=1, n_heads=2, head_dim=32, segment_len=64, chunk_size=16,
                          theta_max=0.5, eta_max=0.8)
    model = TitansDNA(config)
    probe.start_gates(model, theta=0.3, eta=None)
    memory = model.layers[0].block.memory
    share = torch.sigmoid(memory.gates.bias)
    torch.testing.assert_close(share[:2], torch.full((2,), 0.3))
    torch.testing.assert_close(share[2:4], torch.full((2,), 0.9))  # the model's own start


def test_one_pass_recall_grows_with_the_write():
    """No inner step stores nothing; a larger one stores more; the exact recurrence (chunk 1) more still."""
    probe = load_script("bench/recall_probe.py")
    none, small, large = (probe.one_pass_recall(1.0, share, 0.0) for share in (1e-9, 0.1, 0.9))
    assert abs(none["cos_after"] - none["cos_before"]) < 1e-6
    assert none["cos_after"] < small["cos_after"] < large["cos_after"]
    assert probe.one_pass_recall(1.0, 0.9, 0.0, chunk=1)["cos_after"] > large["cos_after"]
