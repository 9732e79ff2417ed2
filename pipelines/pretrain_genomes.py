#!/usr/bin/env python
"""Pretrain on a list of FASTA files: tokenise them into one token store, hold out a validation range, and
run `titans-dna pretrain` on it (in this process, or under torchrun with --nproc).

    python pipelines/pretrain_genomes.py chr1.fa.gz chr2.fa.gz --out runs/hs -- model=small train.max_steps=9
    python pipelines/pretrain_genomes.py ecoli.fa.gz yeast.fa.gz --valid-region chrIV:1400000-1531933 \\
        --nproc 2 -- experiment=pretrain_small_gpu

Everything after ``--`` is passed to `titans-dna pretrain` as Hydra overrides (model=, train.*, data.*).
Without --valid-region the last --valid-fraction of the longest record is held out. The token store
(OUT/genomes.npy) is built once and reused when it is newer than every FASTA.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from titans_dna.cli import main as titans_dna
from titans_dna.data.token_store import TokenStore, build_token_store
from titans_dna.train.configs import valid_regions_override


def token_store(fastas: list[Path], out: Path) -> TokenStore:
    """The store of ``fastas`` at ``out``, rebuilt only when a FASTA is newer than it."""
    if out.is_file() and all(f.stat().st_mtime < out.stat().st_mtime for f in fastas):
        print(f"reusing {out}")
        return TokenStore(out)
    print(f"tokenising {len(fastas)} FASTA file(s) into {out}")
    return build_token_store(fastas, out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, overrides = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "fasta", nargs="+", help="FASTA files (plain, gzip or BGZF); record names must be unique"
    )
    parser.add_argument(
        "--out", default="runs/pretrain_genomes", help="folder for the token store and the run"
    )
    parser.add_argument(
        "--valid-region",
        action="append",
        default=None,
        metavar="CONTIG:START-END",
        help="held out of training and validated on (repeatable)",
    )
    parser.add_argument(
        "--valid-fraction",
        type=float,
        default=0.02,
        help="without --valid-region: share of the longest record held out (at its end)",
    )
    parser.add_argument(
        "--nproc", type=int, default=1, help="processes (GPUs) for torchrun; 1 = this process"
    )
    args = parser.parse_args(ours)

    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    store = token_store([Path(f).expanduser().resolve() for f in args.fasta], out / "genomes.npy")
    regions = args.valid_region
    if not regions:
        contig, length = max(store.records.items(), key=lambda item: item[1])
        regions = [f"{contig}:{int(length * (1 - args.valid_fraction))}-{length}"]
    print(f"validation on {', '.join(regions)}")
    pretrain = [
        "pretrain",
        f"data.store={store.path}",
        valid_regions_override(regions),
        f"run_dir={out / 'run'}",
        *overrides,
    ]
    if args.nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={args.nproc}",
            "-m",
            "titans_dna.cli",
            *pretrain,
        ]
        return subprocess.run(cmd).returncode
    return titans_dna(pretrain)


if __name__ == "__main__":
    sys.exit(main())
