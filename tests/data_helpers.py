"""Helpers shared by the data-layer tests: an isolated cache folder and small file builders; and the loader of
the repo's scripts (pipelines/, bench/) as modules."""

from __future__ import annotations

import gzip
import importlib.util
import shutil
from pathlib import Path

import pytest
from Bio import bgzf


@pytest.fixture
def isolated_cache(tmp_path_factory, monkeypatch) -> Path:
    """Point $TITANS_DNA_CACHE at a fresh folder (outside tmp_path) so .fai files of read-only inputs never
    land in ~/.cache."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("TITANS_DNA_CACHE", str(folder))
    return folder


def write_text(path: Path, text: str, compress: str | None = None) -> Path:
    """Write ``text`` plain, as plain gzip (``"gzip"``) or as BGZF (``"bgzf"``)."""
    data = text.encode("latin-1")
    if compress == "gzip":
        path.write_bytes(gzip.compress(data))
    elif compress == "bgzf":
        with bgzf.BgzfWriter(str(path), "wb") as out:
            out.write(data)
    else:
        path.write_bytes(data)
    return path


def copy_shared(src: Path, folder: Path) -> Path:
    """Copy a shared data file into a writable test folder (never into the repository)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(src, folder / src.name))


def listing(folder: Path) -> list[str]:
    """Names in ``folder``, sorted: to assert that nothing (no partial output, no temp file) was left."""
    return sorted(p.name for p in folder.iterdir())


def load_script(relative: str):
    """A script of the repo (``pipelines/x.py``, ``bench/x.py``: scripts, not a package) as a module."""
    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(path.stem + "_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
