"""torch.distributed in a few lines: the torchrun environment, the process group, DDP wrapping, rank-0 gating.

A plain `gptlab train` is world size 1 and touches none of it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def from_environment() -> Distributed:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK; absent means one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return Distributed(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(requested: str, distributed: Distributed) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", distributed.local_rank)


def start(distributed: Distributed, device: torch.device) -> None:
    if not distributed.active or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30))


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(
    model: torch.nn.Module,
    distributed: Distributed,
    device: torch.device,
    parallelism: str = "ddp",
    precision_name: str = "fp32",
) -> torch.nn.Module:
    """DDP, or FSDP2 sharding in place (train/sharding.py); a single process trains the model as it is."""
    if not distributed.active:
        return model
    if parallelism == "fsdp":
        from gptlab.train.sharding import shard

        return shard(model, precision_name)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def gradient_sync(model: torch.nn.Module, sync: bool):
    """DDP all-reduces (FSDP reduce-scatters) gradients only on the last microbatch of an accumulation."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: a switch rather than a context
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def mean_across_ranks(values: torch.Tensor, distributed: Distributed) -> torch.Tensor:
    if distributed.active:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= distributed.world_size
    return values


def all_ranks_agree(flag: bool, distributed: Distributed, device: torch.device) -> bool:
    """True only when `flag` is true on every rank, so that a per-machine decision is the same everywhere."""
    if not distributed.active:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def barrier(distributed: Distributed) -> None:
    if distributed.active:
        dist.barrier()
