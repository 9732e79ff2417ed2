"""Training checkpoints that resume exactly: model, optimizer, scheduler, every rank's RNG states and the
data position, in one file written atomically by rank 0.

Model and optimizer go through ``torch.distributed.checkpoint.state_dict`` with full (unsharded) state
dicts, so the same file serves a single process, DDP and FSDP, and optimizer state is keyed by parameter
name rather than by position.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from titans_dna.data.atomic import atomic_path
from titans_dna.train.distributed import DistInfo, barrier, gather_objects

CHECKPOINT_VERSION = 1


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict:
    """This process's RNG states (Python, NumPy, torch CPU and CUDA, and the named generators), as
    tensors and plain values so the checkpoint loads with ``weights_only=True``."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def set_rng_state(state: dict, generators: dict[str, torch.Generator] | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    for name, generator in (generators or {}).items():
        generator.set_state(state["generators"][name])


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    info: DistInfo,
    generators: dict[str, torch.Generator] | None = None,
    extra: dict | None = None,
) -> dict:
    """Write a resumable checkpoint at ``path`` (collective: every rank must call it).

    Args:
        step: optimizer steps completed.
        generators: named RNGs to restore (e.g. the MLM masking generator).
        extra: small plain values to carry (data position, best validation loss, ...).

    Returns:
        The full model state dict (rank 0; empty on other ranks under FSDP), e.g. to export weights.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    rngs = gather_objects(rng_state(generators), info)
    if info.is_main:
        payload = {
            "version": CHECKPOINT_VERSION,
            "step": step,
            "model": model_state,
            "optimizer": optim_state,
            "scheduler": scheduler.state_dict(),
            "rng": rngs,
            "extra": extra or {},
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    barrier(info)
    return model_state


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    info: DistInfo,
    generators: dict[str, torch.Generator] | None = None,
) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint` into (possibly wrapped) ``model`` etc.

    Every rank reads the file; this rank's RNG states are restored when the world size matches (a
    different world size resumes the data position but not bit-identical randomness, with a warning).

    Returns:
        ``{"step": int, **extra}``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {payload.get('version')} != {CHECKPOINT_VERSION}")
    # set_state_dict initialises empty optimizer state with a zero-lr step, which it skips when gradients
    # are present; start from none so a fresh optimizer always gets its state tensors.
    optimizer.zero_grad(set_to_none=True)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=payload["model"],
        optim_state_dict=payload["optimizer"],
        options=StateDictOptions(full_state_dict=True),
    )
    scheduler.load_state_dict(payload["scheduler"])
    if len(payload["rng"]) == info.world_size:
        set_rng_state(payload["rng"][info.rank], generators)
    else:
        warnings.warn(
            f"{path} was written by {len(payload['rng'])} ranks, resuming on {info.world_size}: "
            "random streams restart, so the run will not be bit-identical to an uninterrupted one",
            stacklevel=2,
        )
    return {"step": payload["step"], **payload["extra"]}
