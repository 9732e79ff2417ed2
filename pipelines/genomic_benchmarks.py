#!/usr/bin/env python
"""Every labelled task whose data is present x {pretrained Titans-DNA, the same from scratch, the
GenomicBenchmarks CNN, the k-mer logistic regression} x seeds, into one results table.

    python pipelines/genomic_benchmarks.py --init runs/pretrain-.../checkpoint        # the full run (GPU)
    python pipelines/genomic_benchmarks.py --quick                                     # CPU smoke test

Tasks are the files of configs/task/ (minus ``custom``; ``ienhancer`` reports both its deduplicated and its
original test set). Each (task, model) run is a `titans-dna finetune` run in ``OUT/<task>/<model>/``; a run
whose metrics.json exists is reused, and so is every finished seed of an unfinished run, so an interrupted
pipeline continues where it stopped. The table
(``OUT/results.md`` and ``OUT/results.json``) gives the test metric's mean over seeds and, in parentheses,
its max-min spread, beside DNABERT-2's published GUE figures (labelled as published).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from omegaconf import OmegaConf

from titans_dna.data.atomic import atomic_write_text
from titans_dna.train.configs import compose_config, config_dir, data_path
from titans_dna.train.evaluate import write_json
from titans_dna.train.finetune import finetune_from_config, merge_summaries

MODELS = ("titans-pretrained", "titans-scratch", "cnn", "kmer")
SKIPPED_TASKS = {
    "custom",
    "ienhancer_original",
}  # custom needs a user path; ienhancer covers the original set
# DNABERT-2 (Zhou et al. 2024, Table 3), test MCC x 100 as published; 117M parameters.
DNABERT2_PUBLISHED = {
    "gue_tf_0": 71.99,
    "gue_tf_1": 76.06,
    "gue_tf_2": 66.52,
    "gue_tf_3": 58.54,
    "gue_tf_4": 77.43,
    "gue_prom_core_all": 69.37,
    "gue_prom_core_notata": 68.04,
    "gue_prom_core_tata": 74.17,
}
# --quick: small enough for a CPU in minutes (the tiny preset trains at ~2 s per 16 x 200 bp batch there).
QUICK = {"max_rows": 64, "max_steps": 2, "seeds": [0], "preset": "tiny", "overrides": ["train.batch_size=16"]}


def available_tasks(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(tasks whose split files exist, tasks skipped for missing data)."""
    present, missing = [], []
    for path in sorted((config_dir() / "task").glob("*.yaml")):
        if path.stem in SKIPPED_TASKS:
            continue
        cfg = compose_config([f"task={path.stem}", *overrides], base_overrides=["train=finetune"])
        folder = data_path(cfg, cfg.task.path)
        files = [f for f in cfg.task.splits.values() if f]
        (present if all((folder / f).is_file() for f in files) else missing).append(path.stem)
    return present, missing


def model_overrides(model: str, init: str | None, preset: str) -> list[str] | None:
    """Hydra overrides selecting one of MODELS (None: not runnable, e.g. pretrained without --init)."""
    if model == "titans-pretrained":
        return [f"init={init}"] if init else None
    if model == "titans-scratch":
        return [f"model={preset}"]
    return ["model=cnn_baseline" if model == "cnn" else "model=kmer_logreg"]


def run_one(task: str, model: str, args: argparse.Namespace, out: Path) -> dict | None:
    run_dir = out / task / model
    if (run_dir / "metrics.json").is_file() and not args.rerun:
        return json.loads((run_dir / "metrics.json").read_text())
    extra = model_overrides(model, args.init, args.preset)
    if extra is None or args.table_only:
        return None
    seeds = "[" + ",".join(str(s) for s in args.seeds) + "]"
    cfg = compose_config(
        [
            f"task={task}",
            *extra,
            f"seeds={seeds}",
            f"run_dir={run_dir}",
            f"device={args.device}",
            *args.overrides,
        ],
        base_overrides=["train=finetune"],
    )
    if model == "titans-scratch" and args.init:
        # From scratch means the pretrained architecture with random weights: copy its config.
        arch = json.loads((Path(args.init) / "config.json").read_text())
        cfg.model = OmegaConf.create({"_target_": "titans_dna.model.TitansConfig", **arch})
    print(f"== {task} / {model}", flush=True)
    return finetune_from_config(cfg, progress=not args.no_progress)


def merge_runs(sources: list[Path], out: Path) -> list[str]:
    """Fold the runs found in ``sources`` (``<task>/<model>/`` folders of other pipeline outputs, e.g. one
    per seed run on another machine) into ``out``: their seed folders are copied and each pair's
    metrics.json summarises every seed. Returns the merged ``task/model`` names."""
    merged = []
    for source in sources:
        for found in sorted(source.glob("*/*/metrics.json")):
            pair = found.parent.relative_to(source)
            target = out / pair
            runs = [json.loads(found.read_text())]
            if (target / "metrics.json").is_file():
                runs.insert(0, json.loads((target / "metrics.json").read_text()))
            summary = merge_summaries(runs)  # refuses a seed present twice before anything is copied
            for seed_dir in sorted(found.parent.glob("seed_*")):
                dest = target / seed_dir.name
                if dest.exists():  # left by an unfinished run (a finished one lists the seed: refused above)
                    shutil.rmtree(dest)
                shutil.copytree(seed_dir, dest)
            write_json(target / "metrics.json", summary)
            merged.append(str(pair))
    return merged


def _cell(summary: dict | None, test: str, metric: str) -> str:
    if summary is None or test not in summary["summary"]:
        return "-"
    stats = summary["summary"][test][metric]
    if stats["mean"] is None:
        return "n/a"
    return f"{100 * stats['mean']:.2f} ({100 * stats['spread']:.2f})"


def results_table(results: dict[str, dict[str, dict | None]], models: list[str]) -> str:
    """Markdown: one row per task and test set, one column per model, for MCC and accuracy (x 100)."""
    lines = []
    for metric in ("mcc", "accuracy"):
        head = ["task", "test set", "n test", "test in train", *models]
        if metric == "mcc":
            head.append("DNABERT-2 (published)")
        lines += [
            f"### Test {metric.upper() if metric == 'mcc' else metric} x 100: mean over seeds "
            "(max-min spread)",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for task, by_model in results.items():
            first = next((s for s in by_model.values() if s is not None), None)
            if first is None:
                continue
            for test in first["summary"]:
                n = first["per_seed"][0]["test"][test]["n"]
                overlap = (
                    first["info"].get("overlap", {}).get("test_in_train", "-") if test == "test" else "-"
                )
                row = [
                    task,
                    test,
                    str(n),
                    str(overlap),
                    *(_cell(by_model.get(m), test, metric) for m in models),
                ]
                if metric == "mcc":
                    row.append(
                        f"{DNABERT2_PUBLISHED[task]:.2f}"
                        if task in DNABERT2_PUBLISHED and test == "test"
                        else "-"
                    )
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="Hydra overrides for every run (e.g. train.max_epochs=10 data_root=/data)",
    )
    p.add_argument("--init", default=None, help="pretrained checkpoint folder (needed for titans-pretrained)")
    p.add_argument("--out", default="runs/genomic_benchmarks", help="output folder")
    p.add_argument("--tasks", nargs="+", default=None, help="task names (default: all with data present)")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models to run")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="fine-tuning seeds")
    p.add_argument("--preset", default="small", help="Titans preset for scratch runs without --init")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--max-steps", type=int, default=None, help="cap on optimizer steps per seed")
    p.add_argument("--max-rows", type=int, default=None, help="cap every split at this many rows")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"CPU smoke test: {QUICK['max_rows']} rows per split, {QUICK['max_steps']} steps of 16 "
        "sequences, one seed, the tiny preset",
    )
    p.add_argument("--rerun", action="store_true", help="rerun (task, model) pairs that already have results")
    p.add_argument(
        "--table-only",
        action="store_true",
        help="run nothing: build the table from the results already in --out (missing pairs show as -)",
    )
    p.add_argument(
        "--merge-from",
        nargs="+",
        type=Path,
        default=[],
        metavar="DIR",
        help="first fold the runs in these pipeline outputs (other seeds of the same pairs, or other pairs) "
        "into --out",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_intermixed_args(argv)  # overrides may come before, between or after the options
    if args.quick:
        args.max_rows = args.max_rows or QUICK["max_rows"]
        args.max_steps = args.max_steps or QUICK["max_steps"]
        args.seeds, args.preset = QUICK["seeds"], QUICK["preset"]
        args.overrides = QUICK["overrides"] + args.overrides
    caps = {"train.max_rows": args.max_rows, "train.max_steps": args.max_steps}
    args.overrides = [f"{k}={v}" for k, v in caps.items() if v is not None] + args.overrides
    out = Path(args.out).resolve()
    tasks, missing = available_tasks(args.overrides)
    if args.tasks:
        unknown = sorted(set(args.tasks) - set(tasks) - set(missing))
        if unknown:
            raise SystemExit(f"unknown tasks {unknown}; configs/task has {sorted(tasks + missing)}")
        tasks = [t for t in tasks if t in args.tasks]
    for pair in merge_runs(args.merge_from, out):
        print(f"merged {pair}", file=sys.stderr)
    if missing:
        print(f"skipping tasks without data: {', '.join(missing)}", file=sys.stderr)
    results = {task: {m: run_one(task, m, args, out) for m in args.models} for task in tasks}
    models = [m for m in args.models if any(results[t][m] is not None for t in tasks)]
    table = results_table(results, models)
    atomic_write_text(out / "results.md", f"# Fine-tuning results ({out})\n\n{table}")
    write_json(
        out / "results.json",
        {
            "tasks": tasks,
            "skipped": missing,
            "models": models,
            "seeds": args.seeds,
            "results": results,
            "dnabert2_published_mcc": DNABERT2_PUBLISHED,
        },
    )
    print(table)
    print(f"results: {out / 'results.md'}, {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
