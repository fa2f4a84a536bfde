"""Distributed helpers that also work when ``torch.distributed`` is not initialised."""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["get_rank", "get_world_size", "is_main_process"]


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
