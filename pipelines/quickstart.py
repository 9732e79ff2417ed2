#!/usr/bin/env python
"""Quickstart, the README's main job: preprocess -> pretrain (tiny) -> fine-tune -> embed, on a laptop CPU
in about five minutes, from the shared data folder ($TITANS_DNA_DATA or ../shared/data).

    python pipelines/quickstart.py                          # everything into runs/quickstart/
    python pipelines/quickstart.py --out /tmp/qs --genome my_genome.fa.gz --valid-region chr2:0-200000

Stages (each is one `titans-dna` subcommand, called in this process):
  1. preprocess  the genome into a memory-mapped token store (OUT/genome.npy);
  2. pretrain    the tiny preset on it (configs/experiment/quickstart.yaml), holding out --valid-region;
  3. finetune    the pretrained backbone on a small GUE task (one seed, rows capped for time);
  4. embed       a multi-record FASTA with the pretrained model (OUT/embeddings.h5).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

from titans_dna.cli import main as titans_dna
from titans_dna.data.paths import shared_data_dir
from titans_dna.train.configs import valid_regions_override

DEFAULT_GENOME = "genomes/hg18_chrM_chr20first1Mb_softmasked.fa.gz"  # 1 Mb soft-masked human + chrM
DEFAULT_EMBED = "genomes/sacCer3_first10kb_17chrom.fa"  # 17 yeast chromosome starts, 10 kb each


def run(stage: str, argv: list[str]) -> None:
    print(f"\n== {stage}: titans-dna {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    if titans_dna(argv) != 0:
        raise SystemExit(f"quickstart: the {stage} stage failed")
    print(f"== {stage} done in {time.perf_counter() - start:.0f} s", flush=True)


def pretrain_summary(run_dir: Path) -> str:
    """The last validation perplexity in a pretraining run's metrics.csv."""
    with open(run_dir / "metrics.csv", newline="") as fh:
        valid = [row for row in csv.DictReader(fh) if row["split"] == "valid"]
    return f"{float(valid[-1]['ppl']):.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/quickstart", help="output folder")
    parser.add_argument(
        "--data", default=None, help="data folder (default: $TITANS_DNA_DATA or ../shared/data)"
    )
    parser.add_argument("--genome", default=DEFAULT_GENOME, help="FASTA to pretrain on (relative to --data)")
    parser.add_argument(
        "--valid-region",
        default="chr20:900000-1000000",
        help="CONTIG:START-END of --genome held out for validation",
    )
    parser.add_argument("--steps", type=int, default=None, help="pretraining steps (default: the preset's)")
    parser.add_argument("--task", default="gue_prom_core_tata", help="fine-tuning task (configs/task/)")
    parser.add_argument("--max-rows", type=int, default=500, help="cap on each fine-tuning split's rows")
    parser.add_argument("--embed", default=DEFAULT_EMBED, help="FASTA to embed (relative to --data)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch: the tiny model's ops are small, and on a busy machine two OpenMP "
        "threads that wait for each other at every op run many times slower than one",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = Path(args.data).expanduser().resolve() if args.data else shared_data_dir()
    out = Path(args.out).expanduser().resolve()
    checkpoint = out / "pretrain" / "checkpoint"
    started = time.perf_counter()

    run("preprocess", ["preprocess", str(data / args.genome), "--out", str(out / "genome.npy")])
    pretrain = [
        "pretrain",
        "experiment=quickstart",
        f"data_root={data}",
        f"run_dir={out / 'pretrain'}",
        f"data.store={out / 'genome.npy'}",
        valid_regions_override([args.valid_region]),
    ]
    if args.steps is not None:
        pretrain.append(f"train.max_steps={args.steps}")
    run("pretrain", pretrain)
    run(
        "finetune",
        [
            "finetune",
            f"task={args.task}",
            f"init={checkpoint}",
            f"data_root={data}",
            "seeds=[0]",
            "train.max_epochs=3",
            f"train.max_rows={args.max_rows}",
            f"run_dir={out / 'finetune'}",
        ],
    )
    run(
        "embed",
        [
            "embed",
            str(data / args.embed),
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out / "embeddings.h5"),
        ],
    )

    finetuned = json.loads((out / "finetune" / "metrics.json").read_text())
    test = {name: stats["mean"] for name, stats in finetuned["summary"]["test"].items()}
    print(f"\nquickstart finished in {time.perf_counter() - started:.0f} s; outputs in {out}:")
    print(
        f"  pretrain/       validation perplexity {pretrain_summary(out / 'pretrain')}; loss_curves.png, "
        f"metrics.csv; weights in {checkpoint}"
    )
    print(f"  finetune/       {args.task} test: " + ", ".join(f"{k} {v:.3f}" for k, v in test.items()))
    print("  embeddings.h5   one pooled embedding per record of the embedded FASTA")
    return 0


if __name__ == "__main__":
    sys.exit(main())
