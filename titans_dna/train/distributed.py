"""torchrun support: process-group set-up from the environment, DDP / FSDP wrapping, a resumable
rank-sharded sampler, and small all-reduce helpers. A plain ``python`` run is a world of one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; any other string is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    NCCL on CUDA (one GPU per local rank), gloo on CPU. Without torchrun's variables this is a single
    process and nothing is initialised.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    target = pick_device(device)
    if world_size <= 1:
        return DistInfo(device=target)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if target.type == "cuda":
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        if target.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=target)
        else:
            dist.init_process_group(backend="gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=target)


def shutdown_distributed() -> None:
    """Leave the process group (no-op in a single process), once every rank is done with collectives:
    destroying an NCCL group under a rank's pending FSDP collectives can hang that rank at exit."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap_model(model: nn.Module, strategy: str, info: DistInfo) -> nn.Module:
    """Wrap for data parallelism: ``"ddp"`` replicates; ``"fsdp"`` shards parameters, gradients and
    optimizer state (FSDP2 ``fully_shard`` per layer of every ``nn.ModuleList``, then the root), for
    the presets whose optimizer state does not fit one GPU comfortably. One process: returned as is.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"train.strategy={strategy!r}; expected one of {STRATEGIES}")
    if not info.distributed:
        return model
    if strategy == "ddp":
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    from torch.distributed.fsdp import fully_shard

    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for layer in module:
                fully_shard(layer)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module under a DDP wrapper (FSDP2 shards in place, so it is the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (in place on a copy; identity in one process)."""
    if not info.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_objects(obj: object, info: DistInfo) -> list:
    """Every rank's ``obj`` as a list indexed by rank (``[obj]`` in one process)."""
    if not info.distributed:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


class ShardedSampler(Sampler[tuple[int, int]]):
    """Endless, resumable stream of ``(epoch, index)`` keys over ``num_items`` windows, sharded across ranks.

    Global position q = k * world_size + rank (k counts this rank's draws) maps to
    ``(e, perm_e[q % num_items])`` with ``e = q // num_items`` and ``perm_e`` a permutation seeded by
    ``seed + e``: ranks never see the same item within an epoch (DistributedSampler's split), every epoch
    reshuffles (and tells the dataset its epoch), and a resumed run restarts the stream at ``start`` =
    draws already taken by this rank.
    """

    def __init__(
        self,
        num_items: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        start: int = 0,
    ):
        if num_items <= 0:
            raise ValueError("ShardedSampler needs at least one item (no training windows were found)")
        self.num_items, self.rank, self.world_size = num_items, rank, world_size
        self.seed, self.shuffle, self.start = seed, shuffle, start

    def _permutation(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_items)
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_items, generator=generator)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        k = self.start
        epoch, perm = -1, None
        while True:
            q = k * self.world_size + self.rank
            if q // self.num_items != epoch:
                epoch = q // self.num_items
                perm = self._permutation(epoch)
            yield epoch, int(perm[q % self.num_items])
            k += 1
