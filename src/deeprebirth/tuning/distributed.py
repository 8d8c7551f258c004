"""Data-parallel tuning on torch.distributed: the same command under ``torchrun``.

``torchrun --nproc-per-node N -m deeprebirth slim ...`` runs N processes; each sees its own
shard of the data (DistributedSampler), gradients are averaged by DDP, and only rank 0
writes files. gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..errors import DeepRebirthError


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str) -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``; a GPU that is
    not there is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise DeepRebirthError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeepRebirthError(
                f"--device {name}: no CUDA GPU is available here; use cpu or auto"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeepRebirthError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
            )
    elif dev.type != "cpu":
        raise DeepRebirthError(f"--device {name}: only cpu and cuda devices are supported")
    return dev


def setup(device: str = "auto") -> Context:
    """Join the process group when launched by torchrun; otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dev = pick_device(device)
    if world_size == 1:
        return Context(device=dev)
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), dev)


def loader(dataset: Dataset, batch_size: int, ctx: Context, seed: int = 0) -> DataLoader:
    if not ctx.distributed:
        return DataLoader(dataset, batch_size=batch_size, shuffle=True)
    sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler)


def wrapper(ctx: Context):
    """How the tuner wraps each model it trains: DDP when distributed."""
    if not ctx.distributed:
        return None

    def wrap(model: nn.Module) -> nn.Module:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    return wrap


def from_main(ctx: Context, value):
    """``value`` as rank 0 made it (the other ranks pass anything): one decision for every
    rank where making it measures (timing differs between processes). Plain data only."""
    if not ctx.distributed:
        return value
    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
