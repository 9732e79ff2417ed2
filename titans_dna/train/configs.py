"""Hydra configs without ``@hydra.main``: find the tree, compose it with command-line style overrides,
resolve data paths, and set up a run folder holding the resolved config.

Where the tree lives: the repository's top-level ``configs/`` is the one source of truth; the package
carries it as ``titans_dna/configs``, a symlink to ``../configs`` in a checkout (editable installs read
it in place) that setuptools copies into wheels through the ``package-data`` glob. ``$TITANS_DNA_CONFIGS``
points at another tree (e.g. a user's copy) instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from titans_dna.data.atomic import atomic_write_text
from titans_dna.data.paths import shared_data_dir

CONFIGS_ENV_VAR = "TITANS_DNA_CONFIGS"
_PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config_dir() -> Path:
    """The Hydra config tree: ``$TITANS_DNA_CONFIGS`` or the one shipped with the package."""
    override = os.environ.get(CONFIGS_ENV_VAR)
    folder = Path(override).expanduser().resolve() if override else _PACKAGE_CONFIGS.resolve()
    if not (folder / "config.yaml").is_file():
        raise FileNotFoundError(
            f"no Hydra config tree (config.yaml) at {folder}; set {CONFIGS_ENV_VAR} to a folder like the "
            "repository's configs/"
        )
    return folder


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("~+")


def compose_config(
    overrides: Sequence[str] = (), base_overrides: Sequence[str] = (), config_name: str = "config"
) -> DictConfig:
    """Compose the config as ``python app.py key=value ...`` would under Hydra.

    Args:
        overrides: the user's Hydra overrides (``model=small``, ``train.max_steps=100``, ``+x=1``).
        base_overrides: a subcommand's own defaults (``train=finetune`` for fine-tuning), applied first and
            dropped where ``overrides`` sets the same key.
        config_name: primary config in the tree.

    Raises:
        ValueError: an override that does not parse or names no config group/key (Hydra's message).
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    user_keys = {_override_key(o) for o in overrides}
    merged = [o for o in base_overrides if _override_key(o) not in user_keys] + list(overrides)
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config_name=config_name, overrides=merged)
    except (HydraException, OmegaConfBaseException) as err:
        raise ValueError(f"bad config override: {err}") from None


def data_root(cfg: DictConfig) -> Path:
    """``cfg.data_root`` when set, else the shared data folder (``$TITANS_DNA_DATA`` or ../shared/data)."""
    if cfg.get("data_root"):
        return Path(cfg.data_root).expanduser()
    return shared_data_dir()


def data_path(cfg: DictConfig, path: str | os.PathLike) -> Path:
    """A config path: absolute as given, relative ones under :func:`data_root`."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else data_root(cfg) / path


def valid_regions_override(regions: Sequence[str]) -> str:
    """Hydra override holding ``CONTIG:START-END`` ranges (0-based, half-open) out for validation, e.g.
    ``["chr20:900000-1000000"]`` -> ``data.valid_regions=[{contig:'chr20',start:900000,end:1000000}]``."""
    held = []
    for region in regions:
        match = re.fullmatch(r"(.+):(\d+)-(\d+)", region)
        if not match:
            raise ValueError(f"a region looks like CONTIG:START-END (0-based, half-open), got {region!r}")
        held.append(f"{{contig:'{match[1]}',start:{match[2]},end:{match[3]}}}")
    return f"data.valid_regions=[{','.join(held)}]"


def prepare_run_dir(cfg: DictConfig, command: str, rank: int = 0, world_size: int = 1) -> Path:
    """Create the run folder and write the resolved config into it (``config.yaml``).

    ``cfg.run_dir`` null picks ``runs/<command>-<YYYYmmdd-HHMMSS>`` under the working directory; under
    torchrun rank 0 picks the name and the other ranks receive it (so a second's tick cannot split a run
    into two folders). ``cfg.run_dir`` and ``cfg.data_root`` are filled in (in place), so the saved
    config reruns the same experiment from anywhere.
    """
    if not cfg.get("run_dir"):
        name = f"runs/{command}-{datetime.now():%Y%m%d-%H%M%S}"
        if world_size > 1:
            import torch.distributed as dist

            box = [name]
            dist.broadcast_object_list(box, src=0)
            name = box[0]
        cfg.run_dir = name
    run_dir = Path(cfg.run_dir).expanduser().resolve()
    cfg.run_dir = str(run_dir)
    cfg.data_root = str(data_root(cfg).resolve())
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir
