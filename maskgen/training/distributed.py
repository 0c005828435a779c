"""torchrun integration: one process per GPU (or per CPU worker with gloo), set up from env."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(request: str, local_rank: int) -> torch.device:
    if request == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(request)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(device_request: str = "auto") -> DistInfo:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (torchrun) and join the process group: NCCL on GPUs,
    gloo on the CPU. A single process needs no group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_request, local_rank)
    info = DistInfo(rank, world, local_rank, device)
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            info.initialized_here = True
    return info


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world_size > 1:
        dist.all_reduce(values)
        values /= info.world_size
    return values


def gather_counts(counts: dict[str, int], info: DistInfo) -> dict[str, int]:
    """Sum per-rank counters (skipped samples by reason) over all ranks."""
    if info.world_size == 1:
        return dict(counts)
    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, dict(counts))
    total: dict[str, int] = {}
    for p in parts:
        for k, v in p.items():
            total[k] = total.get(k, 0) + int(v)
    return total


def cleanup(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()
