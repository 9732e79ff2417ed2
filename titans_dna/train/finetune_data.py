"""Labelled splits for fine-tuning: a task config -> train / validation / test(s), with the protocol's
bookkeeping (where validation came from, test sequences that also occur in train).

Protocol (Caduceus / DNABERT-2): the task's shipped validation split when it has one, else a stratified
``valid_fraction`` of train drawn with the run seed; test is only read for the final evaluation. A task
that ships one labelled file (the GenomicBenchmarks test files used as proxy tasks) is cut into a fixed,
stratified train/valid/test split by ``split_fractions`` and ``split_seed``, the same for every seed and
model. ``drop_test_duplicates`` removes test sequences that occur in train (iEnhancer: 100 enhancers) and
keeps the original test set as ``test_original`` for comparison with published figures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from titans_dna.data.tables import read_labelled


@dataclass
class Split:
    """Sequences with integer labels.

    Attributes:
        seqs: n DNA strings (case kept).
        labels: int64 [n].
        names: n record names (table row numbers or FASTA ids), for prediction files.
    """

    seqs: list[str]
    labels: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.seqs)

    def subset(self, index: np.ndarray) -> Split:
        index = np.asarray(index, dtype=np.int64)
        return Split([self.seqs[i] for i in index], self.labels[index], [self.names[i] for i in index])


@dataclass
class TaskData:
    """One task ready to train on.

    Attributes:
        name: task name (the config's ``name``).
        num_classes: C; labels lie in 0..C-1.
        metric: the selection and headline metric (``mcc``, ``accuracy``, ``f1`` or ``auroc``).
        train, valid: the splits used for fitting and model selection.
        tests: evaluation sets, ``"test"`` always; ``"test_original"`` when duplicates were dropped.
        info: protocol notes written into metrics.json (validation source, split, overlap counts).
    """

    name: str
    num_classes: int
    metric: str
    train: Split
    valid: Split
    tests: dict[str, Split]
    info: dict = field(default_factory=dict)


def stratified_partition(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split indices into parts with the given fractions, stratified by label and seeded.

    Each class is shuffled with ``np.random.default_rng(seed)`` and cut at the cumulative fractions, so
    every part keeps the class balance; indices within a part are sorted (file order).

    Args:
        labels: int [n].
        fractions: part sizes summing to 1 (e.g. ``[0.7, 0.1, 0.2]``).
        seed: the split seed.

    Returns:
        One int64 index array per fraction.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.ndim != 1 or (fr < 0).any() or abs(fr.sum() - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fr]
    bounds = np.cumsum(fr)[:-1]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        cuts = np.round(bounds * members.size).astype(np.int64)
        for part, chunk in zip(parts, np.split(members, cuts), strict=True):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def overlap_counts(train: Split, test: Split) -> dict[str, int]:
    """Test sequences that also occur in train (exact match, case ignored), and how many of them carry
    another label there."""
    train_labels: dict[str, set[int]] = {}
    for seq, label in zip(train.seqs, train.labels, strict=True):
        train_labels.setdefault(seq.upper(), set()).add(int(label))
    shared = other = 0
    for seq, label in zip(test.seqs, test.labels, strict=True):
        seen = train_labels.get(seq.upper())
        if seen is not None:
            shared += 1
            other += int(label) not in seen
    return {"test_in_train": shared, "test_in_train_other_label": other}


def drop_seen(test: Split, train: Split) -> Split:
    """``test`` without the sequences that occur in ``train`` (case ignored)."""
    seen = {s.upper() for s in train.seqs}
    return test.subset(
        np.array([i for i, s in enumerate(test.seqs) if s.upper() not in seen], dtype=np.int64)
    )


def cap_rows(split: Split, max_rows: int | None, seed: int) -> Split:
    """A stratified, seeded subsample of at most ``max_rows`` rows (smoke tests, --quick pipelines)."""
    if max_rows is None or len(split) <= max_rows:
        return split
    keep, _ = stratified_partition(split.labels, [max_rows / len(split), 1 - max_rows / len(split)], seed)
    return split.subset(keep)


def _read(folder: Path, name: str, fmt: str) -> Split:
    seqs, labels, names = read_labelled(folder / name, fmt=fmt)
    return Split(list(seqs), np.asarray(labels, dtype=np.int64), list(names))


def load_task(
    task: Mapping,
    resolve: Callable[[str], Path],
    seed: int = 0,
    valid_fraction: float = 0.1,
    max_rows: int | None = None,
) -> TaskData:
    """Build the splits of a task config (``configs/task/*.yaml``).

    Args:
        task: the ``task`` config: ``name``, ``path``, ``format``, ``splits`` (``train``/``valid``/``test``
            files, or ``all`` with ``split_fractions`` and ``split_seed``), ``num_classes``, ``metric``,
            optional ``drop_test_duplicates``.
        resolve: turns the config's ``path`` into a folder (relative paths go under the data root).
        seed: the run seed; draws the validation split when the task has none.
        valid_fraction: share of train held out for validation when the task has no valid split.
        max_rows: cap every split at this many rows (stratified; for smoke tests).

    Returns:
        TaskData; ``info`` records how validation was made and the test-in-train counts.
    """
    if not task.get("path"):
        raise ValueError(f"task {task.get('name')!r} has no path; set task.path=FOLDER")
    folder, fmt, splits = resolve(task["path"]), task.get("format", "csv"), task["splits"]
    num_classes, metric = int(task["num_classes"]), task.get("metric", "mcc")
    info: dict = {"task": task["name"], "path": str(folder)}
    if splits.get("all"):
        whole = _read(folder, splits["all"], fmt)
        fractions, split_seed = list(task["split_fractions"]), int(task.get("split_seed", 0))
        parts = stratified_partition(whole.labels, fractions, split_seed)
        train, valid, test = (whole.subset(i) for i in parts)
        full_train = train
        info["split"] = {
            "file": splits["all"],
            "fractions": fractions,
            "seed": split_seed,
            "stratified": True,
        }
    else:
        train, test = _read(folder, splits["train"], fmt), _read(folder, splits["test"], fmt)
        full_train = train
        if splits.get("valid"):
            valid = _read(folder, splits["valid"], fmt)
            info["validation"] = f"shipped split {splits['valid']}"
        else:
            fit, held = stratified_partition(train.labels, [1 - valid_fraction, valid_fraction], seed)
            train, valid = train.subset(fit), train.subset(held)
            # The split seed is each run's seed; leaving it out keeps ``info`` equal across seeds, so runs of
            # single seeds merge (finetune.merge_summaries).
            info["validation"] = f"stratified {valid_fraction:g} of train, drawn with the run seed"
    for part_name, part in (("train", train), ("valid", valid), ("test", test)):
        if len(part) and (part.labels.min() < 0 or part.labels.max() >= num_classes):
            raise ValueError(
                f"task {task['name']}: {part_name} labels must lie in 0..{num_classes - 1}, "
                f"found {part.labels.min()}..{part.labels.max()} (set task.num_classes)"
            )
    # Overlap is counted against the whole training file, validation part included: both are seen in training.
    info["overlap"] = overlap_counts(full_train, test)
    tests = {"test": test}
    if task.get("drop_test_duplicates"):
        tests = {"test": drop_seen(test, full_train), "test_original": test}
        info["dropped_test_duplicates"] = len(test) - len(tests["test"])
    if max_rows is not None:
        train, valid = cap_rows(train, max_rows, seed), cap_rows(valid, max_rows, seed)
        tests = {k: cap_rows(v, max_rows, seed) for k, v in tests.items()}
        info["max_rows"] = max_rows
    info["sizes"] = {"train": len(train), "valid": len(valid), **{k: len(v) for k, v in tests.items()}}
    return TaskData(task["name"], num_classes, metric, train, valid, tests, info)
