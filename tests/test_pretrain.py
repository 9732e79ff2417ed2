"""The pretraining loop end to end on a real genome piece (CPU, a micro-sized model, a few steps)."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file

from titans_dna.cli import main
from titans_dna.model import TitansDNA
from titans_dna.model.graphed import compiled_layers
from titans_dna.train import pretrain as pretrain_module
from titans_dna.train import segment_backprop as segment_backprop_module
from titans_dna.train.configs import compose_config
from titans_dna.train.pretrain import pretrain
from titans_dna.train.segment_backprop import segment_backprop

# The quickstart preset shrunk to seconds: 2 layers of width 64, 4 windows of 128 bases per step, from the
# soft-masked hg18 chr20 piece with its last 100 kb held out.
MICRO = [
    "experiment=quickstart",
    "model.d_model=64",
    "model.n_heads=2",
    "model.head_dim=32",
    "model.n_layers=2",
    "data.window_length=128",
    "data.valid_windows=4",
    "train.tokens_per_batch=512",
    "train.warmup_steps=1",
    "train.optimizer.lr=5e-3",
    "train.log_every=1",
    "train.progress=false",
]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these ops are tiny, and on a busy 2-core machine OpenMP threads that wait for
    each other make every op ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_metrics(run_dir) -> list[dict]:
    with open(f"{run_dir}/metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_tiny_pretrain_learns_and_writes_run_folder(tmp_path, data_dir, seed):
    run_dir = tmp_path / "run"
    overrides = [*MICRO, f"run_dir={run_dir}", f"seed={seed}", "train.max_steps=8", "train.val_every=8",
                 "train.checkpoint_every=8"]
    assert main(["pretrain", *overrides]) == 0
    rows = read_metrics(run_dir)
    train = [float(r["loss"]) for r in rows if r["split"] == "train"]
    valid = [float(r["loss"]) for r in rows if r["split"] == "valid"]
    assert len(train) == 8 and len(valid) == 1 and all(map(math.isfinite, train + valid))
    # From about log(16) (uniform over the embedding rows) towards the ~1.4 nats of 4 bases.
    assert train[-1] < train[0] - 0.3, train
    assert valid[0] < math.log(16) - 0.3
    assert float(rows[-1]["ppl"]) == pytest.approx(math.exp(valid[0]))
    for name in ("config.yaml", "loss_curves.png", "train_state.pt", "checkpoint/model.safetensors"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").iterdir())
    saved = (run_dir / "config.yaml").read_text()  # resolved: reruns the same experiment from anywhere
    assert f"data_root: {data_dir.resolve()}" in saved and f"run_dir: {run_dir}" in saved
    model = TitansDNA.from_pretrained(run_dir / "checkpoint")
    assert model.config.d_model == 64 and model.config.causal


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, data_dir, seed, monkeypatch):
    # MLM with down-weighted soft-masked bases: the masking generator's state must survive the restart.
    overrides = [*MICRO, f"seed={seed}", "train.objective=mlm", "train.soft_mask_weight=0.5",
                 "train.max_steps=4", "train.val_every=2", "train.checkpoint_every=2"]
    full = compose_config([*overrides, f"run_dir={tmp_path / 'full'}"])
    pretrain(full)

    real_save = pretrain_module.save_checkpoint

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("killed right after the step-2 checkpoint")

    monkeypatch.setattr(pretrain_module, "save_checkpoint", save_then_crash)
    cut = [*overrides, f"run_dir={tmp_path / 'cut'}"]
    with pytest.raises(KeyboardInterrupt):
        pretrain(compose_config(cut))
    monkeypatch.setattr(pretrain_module, "save_checkpoint", real_save)
    assert [r["step"] for r in read_metrics(tmp_path / "cut")] == ["1", "2", "2"]
    torch.manual_seed(seed + 1)  # the resumed run must not depend on the process's RNG state
    pretrain(compose_config([*cut, "train.resume=true"]))

    def losses(run):
        return [(r["step"], r["split"], r["loss"]) for r in read_metrics(tmp_path / run)]

    assert losses("cut") == losses("full")
    a = load_file(tmp_path / "full" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "checkpoint" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def poisoned_loss(monkeypatch, poison) -> list[int]:
    """Make `weighted_lm_loss` (training and validation) return NaN on the calls where `poison(n)` is true,
    n counting from 1; the NaN stays in the graph, so backward also fills the gradients with NaN."""
    real, calls = pretrain_module.weighted_lm_loss, []

    def loss_fn(logits, batch):
        loss, weight = real(logits, batch)
        calls.append(len(calls) + 1)
        return (loss * math.nan if poison(calls[-1]) else loss), weight

    monkeypatch.setattr(pretrain_module, "weighted_lm_loss", loss_fn)
    return calls


def test_nonfinite_loss_skips_the_update_and_a_run_of_them_stops(tmp_path, data_dir, seed, monkeypatch):
    # One NaN (the 2nd training step, one micro-batch per step): that update is skipped, the run finishes.
    run_dir = tmp_path / "run"
    overrides = [*MICRO, f"seed={seed}", "train.max_steps=4", "train.val_every=4", "train.checkpoint_every=4"]
    calls = poisoned_loss(monkeypatch, lambda n: n == 2)
    summary = pretrain(compose_config([*overrides, f"run_dir={run_dir}"]))
    assert len(calls) > 4  # 4 training steps, then validation
    assert summary["steps"] == 4 and summary["skipped_steps"] == 1
    assert math.isfinite(summary["train_loss"]) and math.isfinite(summary["valid_loss"])
    train = [float(r["loss"]) for r in read_metrics(run_dir) if r["split"] == "train"]
    assert [math.isfinite(x) for x in train] == [True, False, True, True], train  # step 2: no update counted
    weights = load_file(run_dir / "checkpoint" / "model.safetensors")
    assert weights and all(torch.isfinite(w).all() for w in weights.values())
    state = torch.load(run_dir / "train_state.pt", map_location="cpu", weights_only=False)
    adam_steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {3}  # the optimizer never saw the NaN step

    # NaN on every call with no tolerance: the first bad step stops the run.
    monkeypatch.undo()
    poisoned_loss(monkeypatch, lambda n: True)
    stopped = compose_config([*overrides, f"run_dir={tmp_path / 'stopped'}", "train.max_nonfinite_steps=0"])
    with pytest.raises(FloatingPointError, match="non-finite for 1 steps in a row at step 1"):
        pretrain(stopped)


def test_warm_start_continues_from_a_checkpoint_with_new_settings(tmp_path, data_dir, seed):
    """init=CHECKPOINT starts from its weights under this run's model config (a smaller alpha_max here); a
    checkpoint of other shapes is refused by name."""
    first, second = tmp_path / "first", tmp_path / "second"
    common = [*MICRO, f"seed={seed}", "train.val_every=100", "train.checkpoint_every=100"]
    assert main(["pretrain", *common, f"run_dir={first}", "train.max_steps=8"]) == 0
    assert main(["pretrain", *common, f"run_dir={second}", "train.max_steps=1", f"init={first}/checkpoint",
                 "model.alpha_max=0.001"]) == 0
    scratch = [float(r["loss"]) for r in read_metrics(first) if r["split"] == "train"]
    warm = [float(r["loss"]) for r in read_metrics(second) if r["split"] == "train"]
    assert warm[0] < scratch[0] - 0.3, (warm, scratch)  # its step 1 already has the trained weights
    assert TitansDNA.from_pretrained(second / "checkpoint").config.alpha_max == 0.001

    other = compose_config([*common, "model.d_model=32", "model.head_dim=16"])
    with pytest.raises(ValueError, match=f"init={first}/checkpoint: its weights do not fit"):
        pretrain_module.warm_start(TitansDNA(instantiate(other.model)), f"{first}/checkpoint")


def test_segment_backprop_trains_as_autograd_does(tmp_path, data_dir, seed, monkeypatch):
    """train.segment_backprop=true (layer-segment by layer-segment), with train.segments_per_step=2, and with
    train.compile=true (the layer-segments through torch.compile; aot_eager here, as inductor needs a C
    compiler), follow the default
    path's losses over 3 steps: the same loss and gradients, so the same updates. train.compile=true without
    segment_backprop is refused."""
    common = [*MICRO, f"seed={seed}", "train.max_steps=3", "train.val_every=3", "train.checkpoint_every=3",
              "train.micro_batch_size=2"]
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[1].inputs.shape)
        return segment_backprop(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "segment_backprop", counted)
    monkeypatch.setattr(segment_backprop_module, "compiled_layers",
                        lambda model, backend: compiled_layers(model, backend="aot_eager"))
    runs = {"autograd": [], "segments": ["train.segment_backprop=true", "train.segments_per_step=1"],
            "two per step": ["train.segment_backprop=true", "train.segments_per_step=2"],
            "compiled": ["train.segment_backprop=true", "train.compile=true"]}
    losses = []
    for name, overrides in runs.items():
        assert main(["pretrain", *common, f"run_dir={tmp_path / name}", *overrides]) == 0
        losses.append([float(r["loss"]) for r in read_metrics(tmp_path / name)])
    assert len(losses[0]) == 4  # 3 train rows and a validation row
    for other in losses[1:]:
        assert other == pytest.approx(losses[0], rel=1e-4)
    assert calls == [(2, 128)] * 18  # three times 3 steps of 2 micro-batches of 2 windows, none padded
    with pytest.raises(ValueError, match="train.compile=true compiles the layer-segments"):
        pretrain(compose_config([*common, f"run_dir={tmp_path / 'refused'}", "train.compile=true"]))
