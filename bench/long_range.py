"""Long-range recall with no extra training (issue 6): does the memory carry a sequence over D bp?

On real genomic background (human GRCh37 chr20 by default), a random 200 bp sequence X is inserted and
repeated so that the second copy starts D bp after the first (D = 8k, 64k, 256k, 1M):
    background[:prefix] + X + background[prefix : prefix + D - 200] + X
The sequence (up to ~1 Mbp) is streamed through a causal checkpoint as ONE sequence with the state carried,
and the mean per-token loss (nats, -log p(x_i | x_<i)) is taken on each copy. A random X costs ln 4 = 1.386
nats per base on its first copy; a model that remembers it predicts the second copy better.

Two variants of the same checkpoint, same code path:
  memory       the model as trained: the long-term memory is carried from segment to segment.
  memory_reset the ablation: the memory state (weights and momentum) is reset to its learned initial value
               W_0 at every segment boundary. Everything else is untouched, attention included, and the memory
               still works inside a segment. In MAC, attention never reaches past its segment (segment_len
               tokens), so the carried memory is the only long path: the reset leaves a segment-local
               attention model of the same weights, the sliding-window-only baseline. Its one remaining link
               across segments is the 3-token causal conv tail of each memory conv (two per MAC layer), which
               reaches at most 2 x n_layers segments back (3k tokens for `small`, checked numerically), well
               short of D = 8k. (The reset is off the training distribution, so its loss on the first copy
               may rise too: compare second vs first copy within each variant.)
A working long-term memory shows as second-copy loss < first-copy loss for `memory` at D far beyond the
segment, and none for `memory_reset`.

GPU (device tool; the checkpoint and data carried):
    TITANS_DNA_DATA=.devdata python bench/long_range.py --checkpoint CKPT --out $OUT
CPU smoke test (random tiny model, short distances, numbers meaningless):
    python bench/long_range.py --quick --out /tmp/long_range
Writes long_range.json, long_range.md and long_range.png to --out (default $OUT, else ./bench_out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from titans_dna.data.atomic import atomic_path, atomic_write_text
from titans_dna.data.genome import Genome
from titans_dna.data.paths import shared_data_dir
from titans_dna.data.tokenizer import BASE_IDS
from titans_dna.model import TitansConfig, TitansDNA
from titans_dna.model.retention import forgetting_rates, half_lives
from titans_dna.train.inference import load_backbone
from titans_dna.train.streaming import stream_logliks

BACKGROUND = "genomes/GRCh37_chr20_010-020Mb.fa.gz"
VARIANTS = ("memory", "memory_reset")


def build_sequence(background: np.ndarray, insert: np.ndarray, prefix: int, distance: int) -> np.ndarray:
    """background[:prefix] + X + background[prefix : prefix + D - len(X)] + X (uint8 ids)."""
    gap = background[prefix:prefix + distance - len(insert)]
    return np.concatenate([background[:prefix], insert, gap, insert])


def run(model: TitansDNA, genome: Genome, args: argparse.Namespace) -> Iterator[dict]:
    chrom = max(genome.records, key=genome.records.get)
    rng = np.random.default_rng(args.seed)
    device, precision = model.device, "bf16" if model.device.type == "cuda" else "fp32"
    span = args.prefix + max(args.distances)
    for trial in range(args.trials):
        lo = args.start + trial * span
        if lo + span > genome.records[chrom]:
            raise ValueError(f"trial {trial} needs {chrom}:{lo}-{lo + span}, past the record's end; lower "
                             "--trials or --start")
        background = genome.fetch_ids(chrom, lo, lo + span)[0]
        insert = rng.choice(np.array(BASE_IDS, dtype=np.uint8), size=args.insert)
        for distance in args.distances:
            seq = build_sequence(background, insert, args.prefix, distance)
            seq = torch.from_numpy(seq).to(device, torch.long)
            first = slice(args.prefix, args.prefix + args.insert)
            second = slice(args.prefix + distance, args.prefix + distance + args.insert)
            for variant in VARIANTS:
                start = time.perf_counter()
                ll = stream_logliks(model, seq, precision, args.piece_segments, variant == "memory_reset")
                yield {"trial": trial, "distance": distance, "variant": variant, "background_start": lo,
                       "loss_first": -float(ll[first].mean()), "loss_second": -float(ll[second].mean()),
                       "loss_background": -float(ll[1:args.prefix].mean()), "tokens": int(seq.shape[0]),
                       "seconds": time.perf_counter() - start}


def retention(model: TitansDNA, genome: Genome, args: argparse.Namespace, tokens: int = 8192) -> dict:
    """The memory's forgetting-gate half-life per layer and head on the first trial's background, and what
    the longest-lived head keeps of a write after each distance D (exp(-D * rate))."""
    chrom = max(genome.records, key=genome.records.get)
    ids = genome.fetch_ids(chrom, args.start, args.start + tokens)[0]
    rates = forgetting_rates(model, torch.from_numpy(ids).to(model.device, torch.long)[None])
    slowest = float(rates.min())
    return {"tokens": tokens, "half_life": half_lives(rates).tolist(),
            "kept_at_distance": {str(d): math.exp(-d * slowest) for d in args.distances}}


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and spread (max - min) over trials per (distance, variant)."""
    out = []
    for distance in sorted({r["distance"] for r in rows}):
        for variant in VARIANTS:
            group = [r for r in rows if r["distance"] == distance and r["variant"] == variant]
            if not group:  # a partial report: this variant has not run at this distance yet
                continue
            gain = [r["loss_first"] - r["loss_second"] for r in group]
            out.append({"distance": distance, "variant": variant, "trials": len(group),
                        "loss_first": float(np.mean([r["loss_first"] for r in group])),
                        "loss_second": float(np.mean([r["loss_second"] for r in group])),
                        "gain": float(np.mean(gain)), "gain_spread": float(np.ptp(gain))})
    return out


def plot(summary: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for variant, color in zip(VARIANTS, ("tab:blue", "tab:orange"), strict=True):
        rows = [s for s in summary if s["variant"] == variant]
        d = [s["distance"] for s in rows]
        left.plot(d, [s["loss_first"] for s in rows], "--o", color=color, label=f"{variant}: first copy")
        left.plot(d, [s["loss_second"] for s in rows], "-o", color=color, label=f"{variant}: second copy")
        right.errorbar(d, [s["gain"] for s in rows], yerr=[s["gain_spread"] / 2 for s in rows], fmt="-o",
                       color=color, capsize=3, label=variant)
    left.axhline(math.log(4), color="grey", lw=0.8, ls=":", label="ln 4 (no information)")
    right.axhline(0.0, color="grey", lw=0.8)
    for ax, label in ((left, "loss on the copy (nats/base)"), (right, "first - second copy (nats/base)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("distance D between the copies (bp)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def markdown(report: dict) -> str:
    c = report["config"]
    lines = [f"## Long-range recall: {c['insert']} bp repeated D bp later, {report['model']}", "",
             f"Background {c['background']} ({c['trials']} trials, {c['prefix']} bp before the first copy); "
             f"segment_len {report['segment_len']}. Loss in nats/base; gain = first - second copy.", "",
             "| D (bp) | variant | loss first | loss second | gain | spread |", "|---|---|---|---|---|---|"]
    for s in report["summary"]:
        lines.append(f"| {s['distance']:,} | {s['variant']} | {s['loss_first']:.4f} | "
                     f"{s['loss_second']:.4f} | {s['gain']:+.4f} | {s['gain_spread']:.4f} |")
    r = report["retention"]
    lines += ["", f"Forgetting-gate half-life in tokens (ln 2 / mean -ln(1 - alpha) over {r['tokens']:,} "
              "background tokens), per layer, one value per head:", ""]
    lines += [f"- layer {i}: " + ", ".join(f"{h:,.0f}" for h in heads)
              for i, heads in enumerate(r["half_life"])]
    kept = ", ".join(f"D = {int(d):,}: {k:.1e}" for d, k in r["kept_at_distance"].items())
    lines += ["", "Share of a write that the forgetting gate lets the longest-lived head keep after D tokens "
              f"(an upper bound: later writes also overwrite it): {kept}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="causal checkpoint (folder or shipped name)")
    p.add_argument("--preset", default="small", help="random-init preset when no --checkpoint (smoke tests)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--background", default=None,
                   help=f"FASTA of the background (default: <data root>/{BACKGROUND})")
    p.add_argument("--data-root", default=None,
                   help="shared data folder (default: $TITANS_DNA_DATA, else ../shared/data)")
    p.add_argument("--distances", default="8192,65536,262144,1048576", help="D values, bp")
    for flag, default, text in (("--start", 1_000_000, "background offset of the first trial"),
                                ("--insert", 200, "length of the repeated random sequence"),
                                ("--prefix", 2048, "background bases before the first copy"),
                                ("--trials", 3, "random inserts (each on its own background)"),
                                ("--piece-segments", 16, "segments per forward (memory variant)"),
                                ("--seed", 0, "seed of the inserts (and of a random-init model)")):
        p.add_argument(flag, type=int, default=default, help=text)
    p.add_argument("--quick", action="store_true", help="CPU smoke test: tiny random model, short distances")
    p.add_argument("--out", default=None, help="output folder (default: $OUT, else ./bench_out)")
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.distances, args.insert, args.prefix, args.trials = "tiny", "256,1024", 64, 128, 1
    args.distances = [int(d) for d in args.distances.split(",")]
    if min(args.distances) < args.insert:
        p.error("every distance must be >= --insert (the copies must not overlap)")
    root = Path(args.data_root) if args.data_root else shared_data_dir()
    background = args.background or str(root / BACKGROUND)
    device = torch.device(args.device)
    if args.checkpoint:
        model, name = load_backbone(args.checkpoint, device), f"checkpoint {args.checkpoint}"
    else:
        torch.manual_seed(args.seed)
        model, name = TitansDNA(TitansConfig.preset(args.preset)).to(device).eval(), f"random {args.preset}"
        print(f"no --checkpoint: a random-init {args.preset} model (numbers mean nothing)", file=sys.stderr)
    if not model.config.causal:
        p.error("the loss on a copy needs a causal (next-token) checkpoint")
    genome = Genome(background)
    report = {"model": name, "segment_len": model.config.segment_len, "block": model.config.block,
              "retention": retention(model, genome, args),
              "environment": {"python": platform.python_version(), "torch": torch.__version__,
                              "device": str(device)},
              "config": {k: getattr(args, k) for k in ("distances", "insert", "prefix", "trials", "start",
                                                       "seed")} | {"background": background},
              "rows": [], "summary": []}
    out = Path(args.out or os.environ.get("OUT") or "bench_out")
    for row in run(model, genome, args):  # saved after every row: a time cap keeps what finished
        print(json.dumps(row), flush=True)
        report["rows"].append(row)
        report["summary"] = summarise(report["rows"])
        atomic_write_text(out / "long_range.json", json.dumps(report, indent=1))
        atomic_write_text(out / "long_range.md", markdown(report))
    plot(report["summary"], out / "long_range.png", f"{name} ({model.config.block}): {args.insert} bp "
         f"repeated D bp later, memory carried vs reset each segment")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
