"""Data-layer throughput on one core: tokenising a whole genome, and sampling 1 kb training windows.

Baselines are what a first script would do: Biopython SeqIO into a dict of strings, and a per-base Python
dict lookup for tokens. Every path produces the same thing (uint8 token ids of a random window).

    python bench/data_throughput.py [--fasta PATH] [--window 1000] [--seconds 2]

Decompression and file loading happen outside the timed regions; each timing is the best of a few repeats.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from titans_dna.data.fasta import open_text
from titans_dna.data.genome import Genome
from titans_dna.data.paths import shared_data_dir
from titans_dna.data.store import H5WindowDataset, preprocess
from titans_dna.data.token_store import build_token_store
from titans_dna.data.tokenizer import VOCAB, encode
from titans_dna.data.windows import WindowDataset

# The baseline's table: one dict lookup per base, both cases.
BASE_TABLE = {c: VOCAB[c] for c in "ACGTN"} | {c.lower(): VOCAB[c] for c in "ACGTN"}


def baseline_tokenise(seq: str) -> np.ndarray:
    return np.array([BASE_TABLE[c] for c in seq], dtype=np.uint8)


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Smallest wall time of ``repeats`` calls (seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Items per second of ``fn`` (returns how many items it produced), run for about ``seconds``."""
    fn()  # warm-up: opens files, fills caches
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        count += fn()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fasta", default=None, help="genome (default: shared E. coli K-12, 4.6 Mbp)")
    parser.add_argument("--window", type=int, default=1000, help="window length")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per window-sampling measurement")
    parser.add_argument("--batch", type=int, default=256, help="windows per TokenStore.sample call")
    args = parser.parse_args()
    torch.set_num_threads(1)
    fasta = Path(args.fasta) if args.fasta else shared_data_dir() / "genomes/ecoli_K12_MG1655.fa.gz"
    L = args.window
    rng = np.random.default_rng(0)

    from Bio import SeqIO

    with open_text(fasta) as handle:  # decompression outside every timed region
        genome_dict = {rec.id: str(rec.seq) for rec in SeqIO.parse(handle, "fasta")}
    total_bp = sum(len(s) for s in genome_dict.values())
    print(f"genome {fasta.name}: {len(genome_dict)} records, {total_bp:,} bp; window {L}; torch threads 1")

    rows: list[tuple[str, str, float, str]] = []
    t_base = best_of(lambda: [baseline_tokenise(s) for s in genome_dict.values()], 2)
    t_ours = best_of(lambda: [encode(s) for s in genome_dict.values()], 5)
    rows.append(("tokenise", "per-base dict lookup (baseline)", total_bp / t_base / 1e6, "Mbp/s"))
    rows.append(("tokenise", "titans_dna encode (byte LUT)", total_bp / t_ours / 1e6, "Mbp/s"))

    names = list(genome_dict)
    lengths = np.array([len(genome_dict[n]) for n in names], dtype=np.float64)
    weights = (lengths - L + 1).clip(min=0) / (lengths - L + 1).clip(min=0).sum()

    def draw() -> tuple[str, int]:
        name = names[int(rng.choice(len(names), p=weights))] if len(names) > 1 else names[0]
        return name, int(rng.integers(len(genome_dict[name]) - L + 1))

    def baseline_window() -> int:
        name, start = draw()
        baseline_tokenise(genome_dict[name][start : start + L])
        return 1

    with tempfile.TemporaryDirectory() as tmp:
        genome = Genome(fasta)
        store = build_token_store([fasta], Path(tmp) / "genome.npy")
        preprocess([fasta], Path(tmp) / "windows.h5", window=L, stride=L // 2, max_n=1.0)
        h5 = H5WindowDataset(Path(tmp) / "windows.h5", rc_prob=0.5)
        pyfaidx_ds = WindowDataset(genome, L, num_windows=10**9, seed=0)
        store_ds = WindowDataset(store, L, num_windows=10**9, seed=0)
        counters = {"h5": 0, "pyfaidx_ds": 0, "store_ds": 0}

        def next_item(name: str, dataset) -> Callable[[], int]:
            def step() -> int:
                counters[name] += 1
                dataset[counters[name] % len(dataset)]
                return 1

            return step

        def pyfaidx_window() -> int:
            name, start = draw()
            genome.fetch_ids(name, start, start + L)
            return 1

        def store_window() -> int:
            name, start = draw()
            store.fetch_ids(name, start, start + L)
            return 1

        measured = [
            ("Biopython SeqIO dict + per-base dict (baseline)", baseline_window),
            ("pyfaidx Genome.fetch_ids", pyfaidx_window),
            ("WindowDataset over pyfaidx (torch item, RC, N filter)", next_item("pyfaidx_ds", pyfaidx_ds)),
            ("H5WindowDataset (HDF5 store, torch item)", next_item("h5", h5)),
            ("TokenStore.fetch_ids (memmap)", store_window),
            ("WindowDataset over TokenStore (torch item)", next_item("store_ds", store_ds)),
            (
                f"TokenStore.sample (memmap, batches of {args.batch})",
                lambda: len(store.sample(args.batch, L, rng)["start"]),
            ),
        ]
        for label, fn in measured:
            rows.append((f"{L} bp windows", label, rate(fn, args.seconds), "windows/s"))

    print("\n| task | path | throughput | x baseline |\n|---|---|---:|---:|")
    base = {}
    for task, label, value, unit in rows:
        base.setdefault(task, value)
        print(f"| {task} | {label} | {value:,.1f} {unit} | {value / base[task]:.1f}x |")
    import Bio
    import h5py
    import pyfaidx

    print(
        f"\npython {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"pyfaidx {pyfaidx.__version__}, biopython {Bio.__version__}, h5py {h5py.__version__}"
    )


if __name__ == "__main__":
    main()
