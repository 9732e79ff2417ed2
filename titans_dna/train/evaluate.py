"""Evaluation of a fitted classifier on labelled splits: metrics.json, a predictions TSV and a
confusion-matrix PNG per split, all written atomically. Used at the end of every fine-tuning seed and
by `titans-dna evaluate`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from titans_dna.data.atomic import atomic_write_text
from titans_dna.train.baselines import KmerLogReg
from titans_dna.train.classifiers import load_classifier, model_dir, predict_proba
from titans_dna.train.finetune_data import Split
from titans_dna.train.metrics import classification_metrics, save_confusion_matrix


def _plain(x):
    if isinstance(x, float) and math.isnan(x):
        return None  # strict JSON has no NaN
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return _plain(x.item())
    return x


def write_json(path: str | os.PathLike, payload: Mapping) -> None:
    """Indented JSON, NaN written as null, atomically."""
    atomic_write_text(path, json.dumps(_plain(dict(payload)), indent=2) + "\n")


def write_predictions(path: str | os.PathLike, split: Split, probs: np.ndarray) -> None:
    """TSV with columns name, label, prediction, prob_0..prob_{C-1} (atomic)."""
    pred = probs.argmax(axis=1)
    header = "\t".join(["name", "label", "prediction", *[f"prob_{c}" for c in range(probs.shape[1])]])
    lines = [header] + [
        "\t".join([name, str(int(y)), str(int(p)), *(f"{v:.6g}" for v in row)])
        for name, y, p, row in zip(split.names, split.labels, pred, probs, strict=True)
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")


def evaluate_splits(
    model: nn.Module | KmerLogReg,
    tests: Mapping[str, Split],
    out_dir: str | os.PathLike,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    rc_conjoin: bool = True,
    progress: bool = False,
    title: str = "",
) -> dict[str, dict]:
    """Metrics of ``model`` on each split; writes ``predictions[_<name>].tsv`` and
    ``confusion_matrix[_<name>].png`` into ``out_dir`` (no suffix for the split called ``test``).

    Returns:
        ``{split name: classification_metrics(...)}``.
    """
    out_dir = Path(out_dir)
    results = {}
    for name, split in tests.items():
        probs = predict_proba(model, split.seqs, batch_size, device, precision, rc_conjoin, progress)
        results[name] = classification_metrics(split.labels, probs)
        suffix = "" if name == "test" else f"_{name}"
        write_predictions(out_dir / f"predictions{suffix}.tsv", split, probs)
        save_confusion_matrix(
            split.labels,
            probs.argmax(axis=1),
            out_dir / f"confusion_matrix{suffix}.png",
            class_names=[str(c) for c in range(probs.shape[1])],
            title=f"{title} ({name})" if title else name,
        )
    return results


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    tests: Mapping[str, Split],
    out_dir: str | os.PathLike,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    rc_conjoin: bool | None = None,
    progress: bool = True,
) -> dict:
    """Load a fine-tuned classifier and evaluate it; writes ``metrics.json`` beside the per-split files.

    Args:
        rc_conjoin: average both strands; None = as during fine-tuning.
    """
    folder = model_dir(checkpoint)
    model, meta = load_classifier(folder, device)
    conjoin = meta.get("rc_conjoin", False) if rc_conjoin is None else rc_conjoin
    n_classes = int(meta["num_classes"])
    for name, split in tests.items():
        if len(split) and split.labels.max() >= n_classes:
            raise ValueError(f"{name}: label {split.labels.max()} but the model has {n_classes} classes")
    results = evaluate_splits(
        model,
        tests,
        out_dir,
        batch_size,
        device,
        precision,
        conjoin,
        progress,
        title=f"{meta.get('task', '')} {meta['kind']}",
    )
    payload = {"checkpoint": str(folder), "model": meta, "rc_conjoin": conjoin, "test": results}
    write_json(Path(out_dir) / "metrics.json", payload)
    return payload
