"""Data-parallel helpers for Stage 1 that are the identity outside a process group.

Data-parallel training over a ``torch.distributed`` process group: which process this is,
and the few collective steps Stage 1 needs.

Whoever starts the processes and the group (Ray Train's ``TorchTrainer``, ``torchrun``) is not
this module's concern: outside a group every function is the single-process identity, so the
same Stage-1 code runs alone or as one rank of many.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from mislas.data.loaders import Shard

T = TypeVar("T")


def current_shard() -> Shard:
    """This process's rank and the world size; ``Shard()`` (rank 0 of 1) outside a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return Shard()
    return Shard(dist.get_rank(), dist.get_world_size())


def is_main() -> bool:
    """The rank that writes checkpoints and logs (rank 0; the only one outside a group)."""
    return current_shard().rank == 0


def broadcast(value: T) -> T:
    """Rank 0's ``value`` on every rank (a resumed optimizer state, a decision); identity alone."""
    if current_shard().world == 1:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    out: T = box[0]
    return out


def weighted_means(sums: list[float], count: int, device: torch.device) -> tuple[list[float], int]:
    """Means over all ranks of per-rank sums with a per-rank sample count (one all-reduce)."""
    if current_shard().world == 1:
        return [v / max(count, 1) for v in sums], count
    t = torch.tensor([*sums, float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    total = int(t[-1].item())
    return [float(v) / max(total, 1) for v in t[:-1].tolist()], total


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped for gradient averaging (DDP) inside a group; ``model`` itself alone.

    DDP as the reference's train_stage1.py (main_worker) uses it: plain BatchNorm with per-rank
    batch statistics (no SyncBN), buffers broadcast from rank 0 at each forward (DDP's default).
    """
    if current_shard().world == 1:
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
