"""``detforge benchmark``: time a zoo model's inference (and optionally a training step).

Random ``uint8`` images of ``--size x --size`` pixels, ``--batch`` per call, random weights with
FrozenBN statistics calibrated on the first image (``modeling/calibration.py``); the first two
calls are warm-up and not timed. Reports images/s and the peak memory: CUDA's
``torch.cuda.max_memory_allocated`` on a GPU, the process's peak resident set size
(``ru_maxrss``, which includes everything the process allocated before) on the CPU.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from typing import Any

import torch
from torch import nn

from detforge.cli.datasets import CLIError
from detforge.inference import has_mask_head
from detforge.structures.instances import Instances

__all__ = ["add_parser", "random_batch", "run", "time_calls"]

logger = logging.getLogger(__name__)
_WARMUP = 2


def random_batch(
    batch: int, size: int, num_classes: int, *, masks: bool, device: torch.device
) -> tuple[list[torch.Tensor], list[Instances]]:
    """Random images and targets with 3 boxes each.

    Returns:
        ``(images: list of Tensor[3, size, size] uint8, targets: list of Instances)``; targets
        carry bool masks (Tensor[3, size, size], the box interiors) when ``masks``.
    """
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)]
    images = [images[0].clone() for _ in range(batch)]
    xy = torch.rand(3, 2, generator=g) * size * 0.6
    wh = torch.rand(3, 2, generator=g) * size * 0.3 + size * 0.1
    boxes = torch.cat([xy, xy + wh], dim=1)  # [3, 4] xyxy inside the image
    labels = torch.arange(3) % num_classes
    m = None
    if masks:
        ys, xs = torch.arange(size).view(-1, 1), torch.arange(size).view(1, -1)
        m = torch.stack(
            [(xs >= b[0]) & (xs < b[2]) & (ys >= b[1]) & (ys < b[3]) for b in boxes.round()]
        )
    target = Instances((size, size), boxes, labels=labels, masks=m)
    return [x.to(device) for x in images], [target.to(device) for _ in range(batch)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(step: Any, iters: int, device: torch.device) -> float:
    """Seconds per call of ``step()`` over ``iters`` timed calls after the warm-up."""
    for _ in range(_WARMUP):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return (time.perf_counter() - start) / iters


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib / (2**20 if sys.platform == "darwin" else 2**10)


def _train_step(model: nn.Module, images: list, targets: list) -> Any:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        losses = model(images, targets)
        total = sum(v for k, v in losses.items() if k.startswith("loss_"))
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    return step


def run(args: argparse.Namespace) -> int:
    """Run ``detforge benchmark`` and write its report to stdout."""
    from detforge.engine.recipe import resolve_device
    from detforge.modeling.calibration import calibrate_frozen_batchnorm
    from detforge.modeling.zoo import build_model

    for name in ("size", "batch", "iters", "num_classes"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        raise CLIError(f"--device: {e}") from e
    try:
        model = build_model(args.model, num_classes=args.num_classes).to(device)
    except KeyError as e:
        raise CLIError(f"--model: {e.args[0]}") from e
    images, targets = random_batch(
        args.batch, args.size, args.num_classes, masks=has_mask_head(model), device=device
    )
    # Random weights: give the frozen norms data statistics, so that activations (and thus
    # proposal and detection counts) have a trained model's scale.
    calibrate_frozen_batchnorm(model, images[:1])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.eval()
    with torch.no_grad():
        per_call = time_calls(lambda: model(images), args.iters, device)
    lines = [f"{args.model} {args.size}x{args.size} batch {args.batch} on {device}:"]
    lines.append(f"  inference   {args.batch / per_call:8.2f} images/s ({per_call * 1e3:.1f} ms)")
    if args.train:
        model.train()
        per_call = time_calls(_train_step(model, images, targets), args.iters, device)
        lines.append(
            f"  train step  {args.batch / per_call:8.2f} images/s ({per_call * 1e3:.1f} ms)"
        )
    lines.append(f"  peak memory {_peak_memory_mib(device):8.1f} MiB")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``detforge benchmark``."""
    from detforge.modeling.zoo import MODELS

    p = subparsers.add_parser(
        "benchmark",
        help="time a model's inference (and training step) on random images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help=f"zoo name: {', '.join(MODELS)}")
    p.add_argument("--size", type=int, default=800, help="image side in pixels (default 800)")
    p.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    p.add_argument("--iters", type=int, default=10, help="timed calls (default 10)")
    p.add_argument("--num-classes", type=int, default=80, help="classes of the model (80)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--train", action="store_true", help="also time a training step")
    p.set_defaults(func=run)
    return p
