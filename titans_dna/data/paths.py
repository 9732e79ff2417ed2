"""Where the shared real data lives: ``../shared/data`` beside the repository, or ``$TITANS_DNA_DATA``."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV_VAR = "TITANS_DNA_DATA"
_REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data_dir(required: bool = True) -> Path | None:
    """Return the shared data folder.

    ``$TITANS_DNA_DATA`` wins; otherwise ``<repo root>/../shared/data``. The files there are never
    copied into the project.

    Args:
        required: raise ``FileNotFoundError`` (saying how to fix it) when the folder is missing;
            otherwise return ``None``.
    """
    override = os.environ.get(DATA_ENV_VAR)
    folder = Path(override).expanduser() if override else _REPO_ROOT.parent / "shared" / "data"
    if folder.is_dir():
        return folder
    if required:
        raise FileNotFoundError(
            f"shared data folder not found at {folder}; set {DATA_ENV_VAR} to the folder that holds "
            "genomes/, genomic_benchmarks/ and benchmarks/"
        )
    return None


def shared_data_file(relative: str) -> Path:
    """Path of one file under the shared data folder; ``FileNotFoundError`` naming it when absent."""
    path = shared_data_dir() / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} not found in the shared data folder")
    return path


CACHE_ENV_VAR = "TITANS_DNA_CACHE"


def cache_dir(*parts: str) -> Path:
    """A writable cache folder (created): ``$TITANS_DNA_CACHE``, else ``$XDG_CACHE_HOME/titans-dna``, else
    ``~/.cache/titans-dna``; ``parts`` name a subfolder.

    Holds what the package derives from read-only inputs: ``.fai`` indexes, decompressed plain-gzip FASTA,
    downloads.
    """
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        root = Path(override).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "titans-dna"
    folder = root.joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
