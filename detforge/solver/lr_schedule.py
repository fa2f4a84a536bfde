"""Learning-rate schedules as multipliers of each group's initial LR, and batch-size scaling.

A schedule is a callable ``iteration -> multiplier``; the trainer sets every optimizer group's
``lr = initial_lr * schedule(iteration)`` before each update, so the LR is a pure function of the
iteration and resuming needs no scheduler state.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ConstantSchedule",
    "CosineSchedule",
    "MultiStepSchedule",
    "PolySchedule",
    "WarmupSchedule",
    "scale_for_batch_size",
]


@dataclass(frozen=True)
class ConstantSchedule:
    """Multiplier 1 forever."""

    def __call__(self, iteration: int) -> float:
        """The LR multiplier at ``iteration``."""
        return 1.0


@dataclass(frozen=True)
class MultiStepSchedule:
    """Multiply by ``gamma`` at each milestone: ``gamma ** (number of milestones <= it)``."""

    milestones: Sequence[int]
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"MultiStepSchedule: milestones must increase, got {self.milestones}")

    def __call__(self, iteration: int) -> float:
        """The LR multiplier at ``iteration``."""
        return self.gamma ** bisect.bisect_right(list(self.milestones), iteration)


@dataclass(frozen=True)
class CosineSchedule:
    """Half a cosine from 1 at iteration 0 to ``final`` at ``max_iter`` (then ``final``)."""

    max_iter: int
    final: float = 0.0

    def __call__(self, iteration: int) -> float:
        """The LR multiplier at ``iteration``."""
        t = min(iteration / max(self.max_iter, 1), 1.0)
        return self.final + (1 - self.final) * 0.5 * (1 + math.cos(math.pi * t))


@dataclass(frozen=True)
class PolySchedule:
    """``(1 - it / max_iter) ** power`` (DeepLab's poly), floored at ``final``."""

    max_iter: int
    power: float = 0.9
    final: float = 0.0

    def __call__(self, iteration: int) -> float:
        """The LR multiplier at ``iteration``."""
        t = min(iteration / max(self.max_iter, 1), 1.0)
        return max((1 - t) ** self.power, self.final)


@dataclass(frozen=True)
class WarmupSchedule:
    """``schedule`` preceded by a warmup of ``warmup_iters`` iterations.

    During warmup the multiplier is ``schedule(it) * w`` with ``w`` rising linearly from
    ``warmup_factor`` to 1 (``method="linear"``) or held at ``warmup_factor``
    (``method="constant"``), as in Detectron.
    """

    schedule: object
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    method: Literal["linear", "constant"] = "linear"

    def __post_init__(self) -> None:
        if self.method not in ("linear", "constant"):
            raise ValueError(f"WarmupSchedule: unknown method {self.method!r}")
        if not callable(self.schedule):
            raise TypeError("WarmupSchedule: `schedule` must be callable (iteration -> float)")

    def __call__(self, iteration: int) -> float:
        """The LR multiplier at ``iteration``."""
        base = float(self.schedule(iteration))  # type: ignore[operator]
        if iteration >= self.warmup_iters:
            return base
        if self.method == "constant":
            return base * self.warmup_factor
        alpha = iteration / self.warmup_iters
        return base * (self.warmup_factor * (1 - alpha) + alpha)


def scale_for_batch_size(
    *,
    base_lr: float,
    max_iter: int,
    steps: Sequence[int],
    warmup_iters: int,
    reference_batch_size: int,
    batch_size: int,
) -> dict[str, object]:
    """The linear scaling rule (Goyal et al., 2017) as Detectron.pytorch applies it.

    With ``k = batch_size / reference_batch_size``: the LR is multiplied by ``k`` and the
    iteration counts (``max_iter``, ``steps``, ``warmup_iters``) divided by ``k``, so the run sees
    the same number of images at the same per-image learning rate.

    Returns:
        ``{"base_lr", "max_iter", "steps", "warmup_iters"}`` for the new batch size.
    """
    if batch_size <= 0 or reference_batch_size <= 0:
        raise ValueError("scale_for_batch_size: batch sizes must be positive")
    k = batch_size / reference_batch_size
    return {
        "base_lr": base_lr * k,
        "max_iter": int(round(max_iter / k)),
        "steps": [int(round(s / k)) for s in steps],
        "warmup_iters": int(round(warmup_iters / k)),
    }
