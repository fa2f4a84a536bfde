"""Distributed helpers that also work when ``torch.distributed`` is not initialised."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "all_gather",
    "gather",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "reduce_mean",
    "synchronize",
]


def get_world_size() -> int:
    """Number of processes in the default group; 1 when not distributed."""
    if not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size()


def get_rank() -> int:
    """Rank of this process in the default group; 0 when not distributed."""
    if not dist.is_available() or not dist.is_initialized():
        return 0
    return dist.get_rank()


def is_main_process() -> bool:
    """Whether this is rank 0 (the process that writes files)."""
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all processes; a no-op when not distributed or with a single process."""
    if get_world_size() > 1:
        dist.barrier()


@torch.no_grad()
def reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` averaged over all processes (a collective every process must call).

    Without an initialised group of more than one process, ``tensor`` itself (detached).
    Integer tensors are averaged in float64.
    """
    world = get_world_size()
    if world == 1:
        return tensor.detach()
    total = tensor.detach().to(torch.float64 if not tensor.is_floating_point() else tensor.dtype)
    total = total.clone()
    dist.all_reduce(total)
    return total / world


def all_gather(obj: Any) -> list[Any]:
    """Gather a picklable object from every process, on every process.

    Args:
        obj: any picklable object.

    Returns:
        list: ``world_size`` objects, the one of rank ``r`` at index ``r``; ``[obj]`` when not
        distributed.
    """
    world = get_world_size()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def gather(obj: Any, dst: int = 0) -> list[Any]:
    """Gather a picklable object from every process onto rank ``dst``.

    Args:
        obj: any picklable object.
        dst: the rank that receives the objects.

    Returns:
        list: on rank ``dst``, ``world_size`` objects (the one of rank ``r`` at index ``r``);
        on the other ranks an empty list. ``[obj]`` when not distributed.
    """
    world = get_world_size()
    if not 0 <= dst < world:
        raise ValueError(f"gather: `dst` must be a rank in [0, {world}), got {dst}")
    if world == 1:
        return [obj]
    if get_rank() == dst:
        out: list[Any] = [None] * world
        dist.gather_object(obj, out, dst=dst)
        return out
    dist.gather_object(obj, None, dst=dst)
    return []
