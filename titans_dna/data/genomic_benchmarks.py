"""GenomicBenchmarks (Gresova et al. 2023): the official folder layout, the coordinate files rebuilt against a
local reference, downloads into a cache, and a registry of the 8 tasks read from their metadata.

Class names are always in the official order: sorted class names (GB sorts its class folders).
"""

from __future__ import annotations

import functools
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from titans_dna.data.atomic import atomic_path
from titans_dna.data.genome import Genome
from titans_dna.data.paths import cache_dir, shared_data_dir
from titans_dna.data.tables import LabelledSequences, TableError

GB_SPLITS = ("train", "test")
GB_BASE_URL = "https://raw.githubusercontent.com/ML-Bioinfo-CEITEC/genomic_benchmarks/main/datasets"
COORDINATE_COLUMNS = ["id", "region", "start", "end", "strand"]


@dataclass(frozen=True)
class TaskInfo:
    """One GB task: classes in official order, rows per split and class, sequence length range, references."""

    name: str
    classes: tuple[str, ...]
    counts: dict[str, dict[str, int]]  # split -> class -> rows
    length_range: tuple[int, int]  # (min, max) of end - start over all rows
    references: dict[str, str]  # class -> reference FASTA URL from metadata.yaml

    @property
    def fixed_length(self) -> int | None:
        low, high = self.length_range
        return low if low == high else None


def _coordinates_root(root: str | os.PathLike | None) -> Path:
    return Path(root) if root is not None else shared_data_dir() / "genomic_benchmarks" / "coordinates"


def _read_metadata(task_dir: Path) -> dict:
    import yaml

    meta_path = task_dir / "metadata.yaml"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: missing; is {task_dir} a GenomicBenchmarks task folder?")
    meta = yaml.safe_load(meta_path.read_text())
    if not isinstance(meta, dict) or not isinstance(meta.get("classes"), dict):
        raise TableError(f"{meta_path}: expected a 'classes' mapping")
    return meta


def task_info(task_dir: str | os.PathLike) -> TaskInfo:
    """One task's `TaskInfo` from its folder (``metadata.yaml``, ``{train,test}/<class>.csv.gz``)."""
    import pandas as pd

    task_dir = Path(task_dir)
    meta = _read_metadata(task_dir)
    classes = tuple(sorted(meta["classes"]))
    counts: dict[str, dict[str, int]] = {}
    low, high = np.iinfo(np.int64).max, 0
    for split in GB_SPLITS:
        counts[split] = {}
        for name in classes:
            frame = pd.read_csv(task_dir / split / f"{name}.csv.gz", usecols=["start", "end"])
            counts[split][name] = len(frame)
            size = (frame["end"] - frame["start"]).to_numpy()
            low, high = min(low, int(size.min())), max(high, int(size.max()))
    references = {name: str(meta["classes"][name].get("url", "")) for name in classes}
    return TaskInfo(task_dir.name, classes, counts, (low, high), references)


@functools.lru_cache(maxsize=4)
def gb_registry(root: str | None = None) -> dict[str, TaskInfo]:
    """All tasks under a GB coordinates folder (default: the shared data's), keyed by name; counted once."""
    base = _coordinates_root(root)
    tasks = sorted(p for p in base.iterdir() if (p / "metadata.yaml").exists())
    return {p.name: task_info(p) for p in tasks}


def load_gb_folder(root: str | os.PathLike, task: str, split: str) -> LabelledSequences:
    """The official on-disk layout ``<root>/<task>/<split>/<class>/*.txt`` (one sequence per file).

    Labels index the sorted class folder names; files are read in natural order (``2.txt`` before ``10.txt``).
    """
    split_dir = Path(root) / task / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: no such folder (expected <root>/<task>/<split>/<class>/*.txt)")
    classes = tuple(sorted(p.name for p in split_dir.iterdir() if p.is_dir()))
    if not classes:
        raise TableError(f"{split_dir}: no class folders")
    sequences, labels, ids = [], [], []
    for label, name in enumerate(classes):
        files = sorted((split_dir / name).glob("*.txt"), key=lambda p: (len(p.stem), p.stem))
        for file in files:
            seq = file.read_text().strip()
            if not seq:
                raise TableError(f"{file}: empty sequence file")
            sequences.append(seq)
            labels.append(label)
            ids.append(f"{name}/{file.stem}")
    return LabelledSequences(sequences, np.asarray(labels, dtype=np.int64), classes, str(split_dir), ids)


def load_gb_coordinates(
    task_dir: str | os.PathLike,
    split: str,
    reference: Genome | str | os.PathLike | Mapping[str, Genome | str | os.PathLike],
) -> LabelledSequences:
    """Rebuild a GB split from its coordinate files and a local reference FASTA, offline.

    Args:
        task_dir: ``<coordinates>/<task>`` with ``metadata.yaml`` and ``<split>/<class>.csv.gz``
            (columns ``id,region,start,end,strand``; 0-based half-open).
        reference: one genome for all classes, or ``{class: genome}`` when classes come from different
            references (demo_human_or_worm, demo_coding_vs_intergenomic_seqs). UCSC and Ensembl contig names
            are matched (chr16 <-> 16); '-' rows are reverse-complemented.

    Raises:
        TableError naming the file and line of a row whose region is absent or out of bounds.
    """
    import pandas as pd

    task_dir = Path(task_dir)
    classes = tuple(sorted(_read_metadata(task_dir)["classes"]))
    opened: dict[str, Genome] = {}

    def genome_for(name: str) -> Genome:
        ref = reference[name] if isinstance(reference, Mapping) else reference
        key = str(getattr(ref, "path", ref))
        if key not in opened:
            opened[key] = ref if isinstance(ref, Genome) else Genome(ref)
        return opened[key]

    sequences, labels, ids = [], [], []
    for label, name in enumerate(classes):
        path = task_dir / split / f"{name}.csv.gz"
        frame = pd.read_csv(path, dtype={"id": str, "region": str})
        if list(frame.columns) != COORDINATE_COLUMNS:
            raise TableError(f"{path}: expected columns {COORDINATE_COLUMNS}, found {list(frame.columns)}")
        genome = genome_for(name)
        for line, (row_id, region, start, end, strand) in enumerate(frame.itertuples(index=False), start=2):
            try:
                seq = genome.fetch(region, int(start), int(end), strand)
            except (KeyError, ValueError) as err:
                raise TableError(
                    f"{path}: line {line}: {region}:{start}-{end} not in the reference ({err.args[0]}); "
                    f"GB task {task_dir.name} needs {_read_metadata(task_dir)['classes'][name].get('url')}"
                ) from None
            sequences.append(seq)
            labels.append(label)
            ids.append(str(row_id))
    return LabelledSequences(sequences, np.asarray(labels, dtype=np.int64), classes, str(task_dir), ids)


class DownloadError(ConnectionError):
    """A download that failed (offline, server down, missing file); the message says where to put files."""


def download_file(url: str, target: Path, timeout: float = 30.0) -> Path:
    """Fetch ``url`` into ``target`` atomically unless it is already there."""
    if target.exists():
        return target
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(target) as tmp:
            tmp.write_bytes(response.read())
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(
            f"could not download {url} ({reason}); offline? Copy the file to {target} by hand, or set "
            "TITANS_DNA_CACHE to a folder that already holds it"
        ) from None
    return target


def download_gb_task(task: str, base_url: str = GB_BASE_URL, cache: str | os.PathLike | None = None) -> Path:
    """Download a GB task's coordinate files (metadata.yaml, then each split/class CSV) into the cache.

    Returns the local task folder, usable with `load_gb_coordinates` and `task_info`. Files already in the
    cache are not fetched again, so this works offline once it has run.
    """
    root = Path(cache) if cache is not None else cache_dir("genomic_benchmarks")
    task_dir = root / task
    base = base_url.rstrip("/")
    download_file(f"{base}/{task}/metadata.yaml", task_dir / "metadata.yaml")
    for split in GB_SPLITS:
        for name in sorted(_read_metadata(task_dir)["classes"]):
            download_file(f"{base}/{task}/{split}/{name}.csv.gz", task_dir / split / f"{name}.csv.gz")
    return task_dir
