"""The ``titans-dna`` command: typed calls into the library, one subcommand per job.

Each subcommand is a pair ``_add_<name>(subparsers)`` / ``_run_<name>(args) -> int``; the run function turns
the parsed arguments into plain library calls and never passes the namespace inward.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from titans_dna import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="titans-dna",
        description="DNA sequence models on a Titans backbone: inspect FASTA, pretrain, fine-tune, embed, score.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"titans-dna {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except (FileNotFoundError, ValueError) as err:
        # User-facing errors (bad input files, bad options) get one clear line, not a traceback.
        print(f"titans-dna {args.command}: error: {err}", file=sys.stderr)
        return 2


# Registrars, in the order `--help` lists them; helpers append their `_add_<name>` functions here.
_SUBCOMMANDS: list = []

if __name__ == "__main__":
    sys.exit(main())
