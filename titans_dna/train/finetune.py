"""Fine-tuning with the Caduceus protocol: train on train, early-stop on validation, test once per seed with
the best checkpoint, several seeds reported as mean and max-min spread.

One loop trains every torch classifier (Titans-DNA + head, the GenomicBenchmarks CNN); the k-mer logistic
regression is fitted in closed form with C chosen on validation. Each seed writes into ``run_dir/seed_<s>/``:
``metrics.json``, ``predictions[_<test set>].tsv``, ``confusion_matrix[_<test set>].png`` and ``model/``;
``run_dir/metrics.json`` holds the per-seed results and their summary. Every file is written atomically, and
a seed that finished under the same settings is reused, so an interrupted run resumes at its first unfinished
seed.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from titans_dna.model.config import TitansConfig
from titans_dna.train.baselines import KmerLogReg
from titans_dna.train.classifiers import (
    EncodedSeqs,
    autocast,
    build_classifier,
    model_kind,
    predict_proba,
    save_classifier,
)
from titans_dna.train.configs import data_path, prepare_run_dir
from titans_dna.train.distributed import pick_device
from titans_dna.train.evaluate import evaluate_splits, write_json
from titans_dna.train.finetune_data import TaskData, load_task
from titans_dna.train.metrics import classification_metrics, summarize_seeds
from titans_dna.train.schedule import warmup_cosine


@dataclass
class FinetuneOptions:
    """Optimisation and evaluation settings (``configs/train/finetune.yaml``)."""

    lr: float = 3e-4  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    batch_size: int = 64  # sequences per step
    max_epochs: int = 20  # passes over train at most
    max_steps: int | None = None  # cap on optimizer steps (smoke tests); None = epochs decide
    patience: int = 3  # validations without improvement before stopping
    eval_every: int | None = None  # steps between validations; None = once per epoch
    warmup_ratio: float = 0.1  # linear warm-up share of the planned steps, then cosine decay
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    pooling: str = "mean"  # mean | max | first | last (Titans head)
    rc_conjoin: bool = True  # validation and test average both strands' probabilities
    grad_checkpointing: bool = False  # Titans: recompute each layer in the backward (~1/5 the memory)
    progress: bool = True  # tqdm bars
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    save_model: bool = True  # write seed_<s>/model/ for `titans-dna predict`

    @classmethod
    def from_config(cls, train_cfg: Mapping, **overrides) -> FinetuneOptions:
        """From the ``train`` config group (optimizer.lr / weight_decay flattened); unknown keys ignored."""
        values = {k: v for k, v in train_cfg.items() if k in {f.name for f in fields(cls)}}
        optimizer = train_cfg.get("optimizer") or {}
        for key in ("lr", "weight_decay"):
            if key in optimizer:
                values[key] = optimizer[key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _score(metrics: Mapping[str, float], metric: str) -> float:
    value = metrics[metric]
    return -math.inf if math.isnan(value) else value


def _checkpoint_backbone(model: nn.Module, enabled: bool) -> Callable[[], None]:
    """Turn on a Titans backbone's gradient checkpointing (no-op for other models); returns the undo, which
    train_classifier calls when it stops, so the saved backbone config keeps the value it came with."""
    config = getattr(getattr(model, "backbone", None), "config", None)
    if not (enabled and isinstance(config, TitansConfig)):
        return lambda: None
    before = config.gradient_checkpointing
    config.gradient_checkpointing = True
    return lambda: setattr(config, "gradient_checkpointing", before)


def train_classifier(
    model: nn.Module,
    train: EncodedSeqs,
    train_labels: np.ndarray,
    valid: EncodedSeqs,
    valid_labels: np.ndarray,
    metric: str,
    options: FinetuneOptions,
    seed: int,
    device: torch.device,
) -> dict:
    """Fit ``model`` with AdamW + warm-up/cosine, validating every ``eval_every`` steps (or epoch) and keeping
    the weights of the best validation ``metric``; stops after ``patience`` validations without gain.
    ``options.grad_checkpointing`` recomputes a Titans backbone's layers in the backward while it trains.

    Returns:
        ``{"best_step", "best_valid", "steps", "history", "seconds"}``; ``model`` holds the best weights.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(train_labels, dtype=torch.long)
    steps_per_epoch = max(1, math.ceil(len(train) / options.batch_size))
    planned = steps_per_epoch * options.max_epochs
    if options.max_steps is not None:
        planned = min(planned, options.max_steps)
    eval_every = options.eval_every or steps_per_epoch
    model.to(device).train()
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=options.lr,
    )
    warmup = int(options.warmup_ratio * planned)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, planned, 0.0))
    best = {"score": -math.inf, "step": 0, "metrics": None, "state": None}
    history, step, stale, started = [], 0, 0, time.perf_counter()
    bar = tqdm(total=planned, desc="finetune", disable=not options.progress, leave=False)
    undo_checkpointing = _checkpoint_backbone(model, options.grad_checkpointing)
    while step < planned and stale < options.patience:
        for index in torch.randperm(len(train), generator=generator).split(options.batch_size):
            ids, mask = train.batch(index, device)
            with autocast(device, options.precision):
                logits = model(ids, mask)
            loss = F.cross_entropy(logits.float(), labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if options.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            if options.progress:  # .item() waits for the GPU: only when someone watches
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if step % eval_every == 0 or step == planned:
                probs = predict_proba(
                    model, valid, options.batch_size, device, options.precision, options.rc_conjoin
                )
                scores = classification_metrics(valid_labels, probs)
                history.append({"step": step, "train_loss": float(loss.item()), **scores})
                model.train()
                if _score(scores, metric) > best["score"]:
                    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                    best = {"score": _score(scores, metric), "step": step, "metrics": scores, "state": state}
                    stale = 0
                else:
                    stale += 1
            if step >= planned or stale >= options.patience:
                break
    bar.close()
    undo_checkpointing()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    return {
        "best_step": best["step"],
        "best_valid": best["metrics"],
        "steps": step,
        "history": history,
        "seconds": time.perf_counter() - started,
    }


def run_seed(
    task: TaskData,
    kind: str,
    model_cfg: Mapping,
    options: FinetuneOptions,
    seed: int,
    out_dir: Path,
    init: str | None = None,
    label: str = "",
) -> dict:
    """Train and test one seed; writes metrics.json, predictions TSVs, confusion PNGs and model/ into
    ``out_dir``. ``kind`` is ``titans``, ``cnn_baseline`` or ``kmer_logreg``; ``label`` names the model."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    device = pick_device(options.device)
    input_len = max(len(s) for part in (task.train, task.valid) for s in part.seqs)  # test stays unseen
    model = build_classifier(kind, model_cfg, task.num_classes, input_len, init, options.pooling)
    if isinstance(model, KmerLogReg):
        started = time.perf_counter()
        model.fit(
            task.train.seqs,
            task.train.labels,
            task.valid.seqs,
            task.valid.labels,
            task.num_classes,
            seed=seed,
        )
        valid = classification_metrics(task.valid.labels, model.predict_proba(task.valid.seqs))
        fit = {
            "best_valid": valid,
            "C": model.C,
            "c_search": model.search,
            "seconds": time.perf_counter() - started,
        }
    else:
        train_enc = EncodedSeqs.from_seqs(task.train.seqs, task.train.names)
        valid_enc = EncodedSeqs.from_seqs(task.valid.seqs, task.valid.names)
        fit = train_classifier(
            model,
            train_enc,
            task.train.labels,
            valid_enc,
            task.valid.labels,
            task.metric,
            options,
            seed,
            device,
        )
        fit["parameters"] = sum(p.numel() for p in model.parameters())
    # The test sets are read once, with the weights selected on validation.
    results = evaluate_splits(
        model,
        task.tests,
        out_dir,
        options.batch_size,
        device,
        options.precision,
        options.rc_conjoin,
        options.progress,
        title=f"{task.name} {label} seed {seed}",
    )
    if options.save_model:
        meta = {
            "kind": kind,
            "num_classes": task.num_classes,
            "pooling": options.pooling,
            "rc_conjoin": options.rc_conjoin,
            "task": task.name,
            "init": init,
        }
        save_classifier(model, out_dir / "model", meta)
    payload = {"task": task.name, "model": label, "seed": seed, "fit": fit, "test": results,
               "run": run_key(kind, model_cfg, options, init, label)}
    write_json(out_dir / "metrics.json", payload)
    return payload


def run_key(kind: str, model_cfg: Mapping, options: FinetuneOptions, init: str | None, label: str) -> dict:
    """What makes two seed runs comparable: model, initialisation and the options that change the result
    (not progress bars), as plain JSON. A seed folder is reused only under an equal key."""
    settings = {k: v for k, v in asdict(options).items() if k not in ("progress", "save_model")}
    key = {"kind": kind, "model": label, "init": init, "model_cfg": dict(model_cfg), "options": settings}
    return json.loads(json.dumps(key, default=str))


def _finished_seed(seed_dir: Path, key: dict, task_name: str) -> dict | None:
    """The metrics of a seed that already finished in ``seed_dir`` under the same ``key`` and task (an
    interrupted multi-seed run resumes at the first unfinished seed), else None."""
    path = seed_dir / "metrics.json"
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    if payload.get("run") != key or payload.get("task") != task_name:
        return None
    return payload


def finetune(
    task: TaskData | Callable[[int], TaskData],
    model_cfg: Mapping,
    run_dir: str | os.PathLike,
    seeds: Sequence[int] = (0, 1, 2),
    options: FinetuneOptions | None = None,
    init: str | None = None,
    label: str = "",
) -> dict:
    """Fine-tune (or fit a baseline) on a task for several seeds and summarise.

    Args:
        task: the splits (``finetune_data.load_task``), or ``seed -> TaskData`` when the validation split
            is drawn per seed.
        model_cfg: a ``model`` config (plain mapping with ``_target_``): TitansConfig fields, or the CNN's or
            the k-mer model's arguments.
        run_dir: output folder; ``seed_<s>/`` per seed and ``metrics.json`` with the summary.
        seeds: one run per seed.
        options: optimisation settings; defaults to ``FinetuneOptions()``.
        init: pretrained Titans-DNA checkpoint (folder or shipped name) for Titans; None = from scratch.
        label: model name in tables and plot titles (default: the kind; Titans adds pretrained/scratch).

    Returns:
        The summary written to ``run_dir/metrics.json``: per-seed test metrics and, per test set and
        metric, mean and max-min spread over seeds.
    """
    options = options or FinetuneOptions()
    kind = model_kind(model_cfg)
    if not label:
        label = ("titans-pretrained" if init else "titans-scratch") if kind == "titans" else kind
    run_dir = Path(run_dir)
    key = run_key(kind, model_cfg, options, init, label)
    per_seed = []
    for seed in seeds:
        data = task(seed) if callable(task) else task
        seed_dir = run_dir / f"seed_{seed}"
        finished = _finished_seed(seed_dir, key, data.name)
        if finished is not None:
            print(f"{data.name} {label} seed {seed}: reusing the finished run in {seed_dir} "
                  "(delete it to rerun)", file=sys.stderr)
            per_seed.append(finished)
            continue
        per_seed.append(run_seed(data, kind, model_cfg, options, seed, seed_dir, init, label))
    summary = _summarize(
        {
            "task": data.name,
            "model": label,
            "kind": kind,
            "init": init,
            "metric": data.metric,
            "info": data.info,
            "options": asdict(options),
        },
        [{"seed": r["seed"], "test": r["test"], "best_valid": r["fit"]["best_valid"]} for r in per_seed],
    )
    write_json(run_dir / "metrics.json", summary)
    return summary


def _summarize(run: dict, per_seed: list[dict]) -> dict:
    """A run's summary: its description ``run`` plus seeds, per-seed results and their mean and spread."""
    test_names = list(per_seed[0]["test"])
    return {
        **run,
        "seeds": [r["seed"] for r in per_seed],
        "summary": {name: summarize_seeds([r["test"][name] for r in per_seed]) for name in test_names},
        "per_seed": per_seed,
    }


def merge_summaries(summaries: Sequence[dict]) -> dict:
    """One summary from runs of the same task and model made with other seeds (e.g. seeds run as separate
    jobs). The runs must agree on everything but the seeds; a seed present twice is an error."""
    run = {key: value for key, value in summaries[0].items() if key not in ("seeds", "summary", "per_seed")}
    name = f"{run.get('task')} / {run.get('model')}"
    per_seed: dict[int, dict] = {}
    for other in summaries:
        theirs = {key: value for key, value in other.items() if key not in ("seeds", "summary", "per_seed")}
        if theirs != run:
            diff = sorted(k for k in run.keys() | theirs.keys() if run.get(k) != theirs.get(k))
            raise ValueError(f"cannot merge runs of {name}: they differ in {diff}")
        for result in other["per_seed"]:
            if result["seed"] in per_seed:
                raise ValueError(f"seed {result['seed']} of {name} is in two runs")
            per_seed[result["seed"]] = result
    return _summarize(run, [per_seed[seed] for seed in sorted(per_seed)])


def finetune_from_config(cfg: DictConfig, **overrides) -> dict:
    """Run ``finetune`` as a composed Hydra config says (``titans-dna finetune task=... [init=...]``).

    Reads ``cfg.task`` (configs/task), ``cfg.model`` (a Titans preset, ``cnn_baseline`` or ``kmer_logreg``),
    ``cfg.train`` (configs/train/finetune.yaml; ``train.max_rows`` caps every split, stratified, for smoke
    tests), ``cfg.init``, ``cfg.seeds`` and ``cfg.device``; creates the run folder (``cfg.run_dir``) with the
    resolved config.

    Args:
        overrides: ``FinetuneOptions`` fields that win over the config (e.g. ``progress=False``).
    """
    if cfg.get("task") is None:
        raise ValueError("finetune needs a task: task=NAME (a file of configs/task/, e.g. task=gue_tf_0)")
    task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    train_cfg = OmegaConf.to_container(cfg.train, resolve=True)
    options = FinetuneOptions.from_config(train_cfg, device=cfg.get("device", "auto"), **overrides)
    run_dir = prepare_run_dir(cfg, "finetune")
    valid_fraction, max_rows = float(train_cfg.get("valid_fraction", 0.1)), train_cfg.get("max_rows")

    def load(seed: int) -> TaskData:
        return load_task(task_cfg, lambda p: data_path(cfg, p), seed, valid_fraction, max_rows)

    # A shipped or fixed validation split is the same for every seed: read the files once.
    splits = task_cfg.get("splits") or {}
    per_seed_valid = not (splits.get("valid") or splits.get("all"))
    task = load if per_seed_valid else load(int(cfg.seed))
    init = cfg.get("init")
    if init and model_kind(model_cfg) != "titans":
        raise ValueError(
            f"init={init} only applies to Titans models; model={model_kind(model_cfg)} trains "
            "from scratch (drop init=)"
        )
    return finetune(task, model_cfg, run_dir, list(cfg.seeds), options, init=init)
