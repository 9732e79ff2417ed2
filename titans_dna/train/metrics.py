"""Classification metrics (scikit-learn) and the confusion-matrix plot written into every fine-tuning run.

Metrics follow the benchmarks' conventions: accuracy, Matthews correlation (GUE's headline metric), F1 (the
positive class for two classes, macro-averaged above two) and AUROC (binary, or macro one-vs-rest).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, matthews_corrcoef, roc_auc_score

from titans_dna.data.atomic import atomic_path

METRIC_NAMES = ("accuracy", "mcc", "f1", "auroc")


def classification_metrics(labels: Sequence[int] | np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, MCC, F1 and AUROC of class probabilities against integer labels.

    Args:
        labels: int [n] true classes in ``0 .. C-1``.
        probs: float [n, C] class probabilities (rows sum to 1); the prediction is the arg-max.

    Returns:
        ``{"accuracy", "mcc", "f1", "auroc", "n"}``; AUROC is NaN when ``labels`` hold a single class
        (it is undefined there, and a run on a tiny split should not crash on it).
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probs must be [n, C] with n = len(labels) = {y.shape[0]}, got {p.shape}")
    n_classes = p.shape[1]
    pred = p.argmax(axis=1)
    class_ids = list(range(n_classes))
    if n_classes == 2:
        f1 = f1_score(y, pred, average="binary", pos_label=1, zero_division=0.0)
    else:
        f1 = f1_score(y, pred, average="macro", labels=class_ids, zero_division=0.0)
    present = np.unique(y)
    if present.size < 2:
        auroc = math.nan
    elif n_classes == 2:
        auroc = roc_auc_score(y, p[:, 1])
    elif present.size < n_classes:
        # One-vs-rest over the classes that occur; absent classes have no positives to rank.
        auroc = float(np.mean([roc_auc_score(y == c, p[:, c]) for c in present]))
    else:
        auroc = roc_auc_score(y, p / p.sum(axis=1, keepdims=True), multi_class="ovr", average="macro")
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "mcc": float(matthews_corrcoef(y, pred)),
        "f1": float(f1),
        "auroc": float(auroc),
        "n": int(y.shape[0]),
    }


def summarize_seeds(per_seed: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and max-min spread of each metric over seeds (the Caduceus reporting convention).

    Args:
        per_seed: one metrics dict per seed (as returned by ``classification_metrics``).

    Returns:
        ``{metric: {"mean", "spread", "min", "max"}}`` for the metrics in ``METRIC_NAMES``; NaN values
        (an undefined AUROC) are ignored, and a metric that is NaN for every seed stays NaN.
    """
    out: dict[str, dict[str, float]] = {}
    for name in METRIC_NAMES:
        values = np.array([m[name] for m in per_seed if name in m], dtype=np.float64)
        values = values[~np.isnan(values)]
        if values.size == 0:
            out[name] = {"mean": math.nan, "spread": math.nan, "min": math.nan, "max": math.nan}
            continue
        lo, hi = float(values.min()), float(values.max())
        out[name] = {"mean": float(values.mean()), "spread": hi - lo, "min": lo, "max": hi}
    return out


def save_confusion_matrix(
    labels: Sequence[int] | np.ndarray,
    pred: Sequence[int] | np.ndarray,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> np.ndarray:
    """Plot the confusion matrix (counts, rows = true class) as a PNG, written atomically.

    Args:
        labels, pred: int [n] true and predicted classes.
        path: the PNG to write.
        class_names: tick labels, one per class; defaults to ``0 .. C-1``.
        title: figure title (e.g. task, model and seed).

    Returns:
        int [C, C] the matrix that was drawn.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers or in CI
    import matplotlib.pyplot as plt

    n_classes = len(class_names) if class_names else int(max(np.max(labels), np.max(pred)) + 1)
    names = list(class_names) if class_names else [str(c) for c in range(n_classes)]
    cm = confusion_matrix(labels, pred, labels=list(range(n_classes)))
    fig, ax = plt.subplots(figsize=(1.2 * n_classes + 2.5, 1.2 * n_classes + 2.0))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n_classes), names, rotation=45, ha="right")
    ax.set_yticks(range(n_classes), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(n_classes):
        for j in range(n_classes):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > threshold else "black",
            )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return cm
