"""Fine-tuning: metrics against hand-computed values, the protocol's splits on the real task files, and a
tiny end-to-end `titans-dna finetune` on a real GUE subsample (CPU, a few steps)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import load_script

from titans_dna.cli import main
from titans_dna.train.classifiers import load_classifier, predict_proba
from titans_dna.train.configs import compose_config, data_path
from titans_dna.train.finetune_data import Split, load_task, overlap_counts, stratified_partition
from titans_dna.train.metrics import classification_metrics, save_confusion_matrix, summarize_seeds


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: OpenMP threads spinning against other processes cost
    20x more than they gain, so these tests run single-threaded (and restore the setting after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# A 1-layer, 32-wide Titans model: the smallest that exercises every part of the MAC block.
TINY_MODEL = [
    "model.d_model=32",
    "model.n_heads=1",
    "model.head_dim=32",
    "model.n_layers=1",
    "model.chunk_size=8",
    "model.segment_len=32",
    "model.n_persistent=2",
    "model.window=32",
]


def _onehot_probs(scores_pos: list[float]) -> np.ndarray:
    p = np.asarray(scores_pos)
    return np.stack([1 - p, p], axis=1)


def test_binary_metrics_match_hand_computed_values():
    # pred = [0, 1, 0, 1] vs [0, 0, 1, 1]: TP = TN = FP = FN = 1 -> accuracy 0.5, MCC 0, F1 0.5;
    # AUROC: positives (0.4, 0.9) beat negatives (0.1, 0.6) in 3 of 4 pairs.
    m = classification_metrics([0, 0, 1, 1], _onehot_probs([0.1, 0.6, 0.4, 0.9]))
    assert m == pytest.approx({"accuracy": 0.5, "mcc": 0.0, "f1": 0.5, "auroc": 0.75, "n": 4})
    # TP 2, FN 1, TN 2, FP 1: MCC = (2*2 - 1*1) / sqrt(3*3*3*3) = 1/3, F1 = 4 / 6.
    m = classification_metrics([1, 1, 1, 0, 0, 0], _onehot_probs([0.9, 0.8, 0.3, 0.2, 0.1, 0.7]))
    assert m["mcc"] == pytest.approx(1 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6) and m["auroc"] == pytest.approx(8 / 9)


def test_multiclass_metrics_are_macro_and_single_class_auroc_is_nan():
    labels = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    m = classification_metrics(labels, probs)
    # Per-class F1: class 0 = 2/3 (1 TP, 1 FP), class 1 = 1, class 2 = 2/3 (1 TP, 1 FN); macro = 7/9.
    assert m["f1"] == pytest.approx(7 / 9) and m["accuracy"] == pytest.approx(0.75)
    assert 0 < m["auroc"] <= 1
    assert math.isnan(classification_metrics([1, 1], _onehot_probs([0.2, 0.9]))["auroc"])
    summary = summarize_seeds(
        [
            {"accuracy": 0.5, "mcc": 0.1, "f1": 0.2, "auroc": math.nan},
            {"accuracy": 0.7, "mcc": 0.3, "f1": 0.4, "auroc": 0.8},
        ]
    )
    assert summary["accuracy"] == pytest.approx({"mean": 0.6, "spread": 0.2, "min": 0.5, "max": 0.7})
    assert summary["auroc"]["mean"] == 0.8  # NaN seeds are left out


def test_confusion_matrix_png(tmp_path):
    cm = save_confusion_matrix([0, 0, 1, 2], [0, 1, 1, 2], tmp_path / "cm.png", class_names=["a", "b", "c"])
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]  # no temporary file left behind


def test_stratified_partition_is_seeded_disjoint_and_balanced(seed):
    labels = np.random.default_rng(seed).integers(0, 3, size=1000)
    parts = stratified_partition(labels, [0.7, 0.1, 0.2], seed)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    for part, fraction in zip(parts, [0.7, 0.1, 0.2], strict=True):
        for cls in range(3):
            assert abs((labels[part] == cls).sum() - fraction * (labels == cls).sum()) <= 1
    again = stratified_partition(labels, [0.7, 0.1, 0.2], seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    train = Split(["AC", "GT", "TT"], np.array([0, 1, 0]), ["a", "b", "c"])
    assert overlap_counts(train, Split(["ac", "GG", "TT"], np.array([1, 0, 0]), ["x", "y", "z"])) == {
        "test_in_train": 2,
        "test_in_train_other_label": 1,
    }


def _task(name: str, *overrides: str, seed: int = 0):
    cfg = compose_config([f"task={name}", *overrides], base_overrides=["train=finetune"])
    return load_task(cfg.task, lambda p: data_path(cfg, p), seed=seed)


def test_ienhancer_drops_the_100_duplicated_test_enhancers(data_dir):
    task = _task("ienhancer", f"data_root={data_dir}")
    assert task.info["overlap"] == {"test_in_train": 100, "test_in_train_other_label": 0}
    assert len(task.tests["test"]) == 300 and len(task.tests["test_original"]) == 400
    assert (task.tests["test"].labels == 1).sum() == 100  # the duplicates are all enhancers
    assert len(task.train) + len(task.valid) == 2968 and abs(len(task.valid) - 297) <= 1
    # validation is drawn from train with the run seed: other rows, the same description (seeds merge)
    other = _task("ienhancer", f"data_root={data_dir}", seed=1)
    assert other.valid.names != task.valid.names and other.info == task.info


def test_genomic_benchmarks_proxy_split_is_fixed_70_10_20(data_dir):
    a = _task("gb_human_nontata_promoters", f"data_root={data_dir}")
    b = _task("gb_human_nontata_promoters", f"data_root={data_dir}")
    sizes = [len(a.train), len(a.valid), len(a.tests["test"])]
    assert sum(sizes) == 9034 and [round(s / 9034, 2) for s in sizes] == [0.7, 0.1, 0.2]
    assert a.tests["test"].names == b.tests["test"].names
    assert not set(a.train.names) & set(a.tests["test"].names)
    assert a.info["split"]["seed"] == 0


def test_finetune_cli_on_a_gue_subsample(data_dir, tmp_path, seed):
    run = tmp_path / "run"
    argv = [
        "finetune",
        "task=gue_prom_core_tata",
        f"data_root={data_dir}",
        f"run_dir={run}",
        f"seeds=[{seed % 1000}]",
        "train.batch_size=8",
        "train.rc_conjoin=true",
        *TINY_MODEL,
        "train.max_rows=24",
        "train.max_steps=2",
        "train.progress=false",
    ]
    assert main(argv) == 0
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["task"] == "gue_prom_core_tata" and summary["model"] == "titans-scratch"
    assert set(summary["summary"]["test"]) == {"accuracy", "mcc", "f1", "auroc"}
    assert summary["info"]["overlap"]["test_in_train"] == 16  # GUE ships these test sequences in train too
    seed_dir = run / f"seed_{seed % 1000}"
    rows = (seed_dir / "predictions.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["name", "label", "prediction", "prob_0", "prob_1"] and len(rows) == 25
    assert (seed_dir / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "config.yaml").is_file()
    fit = json.loads((seed_dir / "metrics.json").read_text())["fit"]
    assert fit["steps"] == 2 and fit["history"]
    # The saved model reproduces the test predictions.
    model, meta = load_classifier(seed_dir / "model")
    test = load_task(
        compose_config(["task=gue_prom_core_tata", f"data_root={data_dir}"]).task,
        lambda p: data_dir / p,
        max_rows=24,
    ).tests["test"]
    probs = predict_proba(model, test.seqs, rc_conjoin=meta["rc_conjoin"])
    saved = np.array([[float(x) for x in r.split("\t")[3:]] for r in rows[1:]])
    np.testing.assert_allclose(probs, saved, atol=1e-5)


def test_finetune_baselines_and_a_missing_label_column(data_dir, tmp_path, capsys):
    run = tmp_path / "kmer"
    argv = [
        "finetune",
        "task=gue_tf_1",
        "model=kmer_logreg",
        "model.k=3",
        f"data_root={data_dir}",
        f"run_dir={run}",
        "seeds=[0]",
        "--max-rows",
        "200",
        "--no-progress",
    ]
    assert main(argv) == 0
    test_metrics = json.loads((run / "metrics.json").read_text())["per_seed"][0]["test"]["test"]
    assert test_metrics["n"] == 200
    # `evaluate` on the same 200 test rows, written as a labelled file, gives the same metrics.
    rows = (run / "seed_0" / "predictions.tsv").read_text().splitlines()[1:]
    table = load_task(
        compose_config(["task=gue_tf_1", f"data_root={data_dir}"]).task, lambda p: data_dir / p, max_rows=200
    ).tests["test"]
    assert [r.split("\t")[0] for r in rows] == table.names
    data = tmp_path / "test200.csv"
    data.write_text(
        "sequence,label\n" + "".join(f"{s},{y}\n" for s, y in zip(table.seqs, table.labels, strict=True))
    )
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        "--checkpoint",
        str(run / "seed_0"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    evaluated = json.loads((out / "metrics.json").read_text())["test"]["test"]
    assert evaluated == pytest.approx(test_metrics)
    assert (out / "predictions.tsv").is_file() and (out / "confusion_matrix.png").is_file()
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("train.csv", "test.csv"):
        (bad / name).write_text("sequence,class\nACGTACGT,1\nTTTTACGA,0\n")
    argv = [
        "finetune",
        "task=custom",
        f"task.path={bad}",
        "model=kmer_logreg",
        f"run_dir={tmp_path / 'x'}",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "train.csv" in err and "label" in err


def test_grad_checkpointing_trains_the_same_weights_and_leaves_the_config(seed, monkeypatch):
    """train.grad_checkpointing recomputes the backbone in the backward: same steps, same weights (no
    dropout), and the backbone config is back to its own value afterwards (it is saved with the model)."""
    import titans_dna.model.blocks as blocks
    from titans_dna.model import SequenceClassifier, TitansConfig, TitansDNA
    from titans_dna.train.classifiers import EncodedSeqs
    from titans_dna.train.finetune import FinetuneOptions, train_classifier

    recomputed = []
    checkpoint = blocks.checkpoint
    monkeypatch.setattr(blocks, "checkpoint", lambda *a, **k: recomputed.append(1) or checkpoint(*a, **k))
    rng = np.random.default_rng(seed)
    seqs = ["".join(rng.choice(list("ACGT"), size=int(n))) for n in rng.integers(20, 41, size=12)]
    labels = rng.integers(0, 2, size=12)
    enc = EncodedSeqs.from_seqs(seqs)
    config = dict(d_model=32, n_layers=2, n_heads=1, head_dim=32, chunk_size=8, segment_len=16,
                  n_persistent=2, memory_backend="naive")
    weights = []
    for checkpointing in (False, True):
        torch.manual_seed(seed)
        model = SequenceClassifier(TitansDNA(TitansConfig(**config)), 2)
        options = FinetuneOptions(batch_size=4, max_steps=3, progress=False, grad_checkpointing=checkpointing)
        fit = train_classifier(model, enc, labels, enc, labels, "mcc", options, seed, torch.device("cpu"))
        assert fit["steps"] == 3 and model.backbone.config.gradient_checkpointing is False
        assert bool(recomputed) == checkpointing
        weights.append(model.state_dict())
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_pipeline_merges_seeds_run_as_separate_jobs(data_dir, tmp_path):
    """Seeds run apart and merged give the summary of one run over both seeds; a seed merged twice is
    refused before anything is written."""
    pipeline = load_script("pipelines/genomic_benchmarks.py")
    common = ["--tasks", "gue_tf_1", "--models", "kmer", "--max-rows", "200", "--no-progress",
              f"data_root={data_dir}"]
    for seeds, out in (([0, 1], "both"), ([0], "s0"), ([1], "s1")):
        assert pipeline.main([*common, "--seeds", *map(str, seeds), "--out", str(tmp_path / out)]) == 0
    merged = tmp_path / "merged"
    assert pipeline.main([*common, "--table-only", "--out", str(merged),
                          "--merge-from", str(tmp_path / "s0"), str(tmp_path / "s1")]) == 0
    pair = Path("gue_tf_1") / "kmer"
    got = json.loads((merged / pair / "metrics.json").read_text())
    want = json.loads((tmp_path / "both" / pair / "metrics.json").read_text())
    assert got["seeds"] == [0, 1] and got["summary"] == want["summary"]
    assert (merged / pair / "seed_1" / "predictions.tsv").is_file()
    assert "kmer" in (merged / "results.md").read_text()
    with pytest.raises(ValueError, match="seed 0"):
        pipeline.main([*common, "--table-only", "--out", str(merged), "--merge-from", str(tmp_path / "s0")])
    assert json.loads((merged / pair / "metrics.json").read_text())["seeds"] == [0, 1]


def test_an_interrupted_multi_seed_run_resumes_at_the_unfinished_seed(data_dir, tmp_path, capsys):
    """A seed that finished under the same settings is reused (not retrained); other settings retrain it."""
    run = tmp_path / "run"
    argv = ["finetune", "task=gue_tf_1", "model=kmer_logreg", f"data_root={data_dir}", f"run_dir={run}"]
    options = ["--max-rows", "200", "--no-progress"]
    assert main([*argv, "seeds=[0]", *options]) == 0
    seed0 = run / "seed_0" / "metrics.json"
    written = seed0.stat().st_mtime_ns
    assert main([*argv, "seeds=[0,1]", *options]) == 0
    assert seed0.stat().st_mtime_ns == written and "seed 0: reusing" in capsys.readouterr().err
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["seeds"] == [0, 1] and (run / "seed_1" / "metrics.json").is_file()
    assert main([*argv, "seeds=[0]", "train.patience=5", *options]) == 0
    assert seed0.stat().st_mtime_ns != written and "reusing" not in capsys.readouterr().err
