"""A complete training run from a model and records: what the CLI and the quickstart call.

``train_detector`` wires the pieces of the engine together (optimizer with parameter groups,
warmup + schedule, the data loader at the right position, the trainer and its hooks:
checkpoints, metrics, progress, evaluation, EMA) from a :class:`TrainSettings`, and resumes a
killed run from its last checkpoint when ``settings.resume`` is set.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detforge.checkpoint.io import atomic_write
from detforge.data.loader import Mapper, RecordSource, build_test_loader, build_train_loader
from detforge.engine.checkpointer import Checkpointer, ResumeError, run_files
from detforge.engine.hooks import (
    EMAHook,
    EvalHook,
    MetricsWriter,
    ModelEMA,
    PeriodicCheckpointer,
    ProgressLogger,
    StopOnSignal,
)
from detforge.engine.train_loop import HookBase, Trainer
from detforge.evaluation.coco_eval import COCOEvaluator
from detforge.evaluation.evaluator import inference_on_dataset
from detforge.solver.lr_schedule import (
    CosineSchedule,
    MultiStepSchedule,
    PolySchedule,
    WarmupSchedule,
    scale_for_batch_size,
)
from detforge.solver.param_groups import param_groups
from detforge.utils.checks import check_number
from detforge.utils.comm import get_rank, get_world_size, is_main_process

__all__ = [
    "TrainSettings",
    "build_optimizer",
    "evaluate_coco",
    "resolve_device",
    "seed_everything",
    "train_detector",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """Everything about a training run that is not the model or the data.

    ``steps`` are iterations; values below 1 are fractions of ``max_iter``. When
    ``reference_batch_size`` is set and differs from ``batch_size``, the linear scaling rule
    adjusts ``base_lr``, ``max_iter``, ``steps`` and ``warmup_iters``. ``batch_size`` is the
    number of images per iteration over *all* processes (detectron2's ``IMS_PER_BATCH``): under
    DDP each of ``P`` processes loads ``batch_size / P``. ``device`` is ``"auto"`` (the
    process's GPU when CUDA is available, else the CPU), ``"cpu"`` or ``"cuda"``.

    Every field is range-checked when the settings are made (``ValueError`` naming the field).
    """

    output_dir: str = "output"
    device: str = "auto"
    max_iter: int = 1000
    batch_size: int = 4
    reference_batch_size: int | None = None
    optimizer: Literal["SGD", "AdamW"] = "SGD"
    base_lr: float = 0.02
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    bias_lr_factor: float = 1.0
    schedule: Literal["multistep", "cosine", "poly"] = "multistep"
    steps: tuple[float, ...] = (0.75, 0.9)
    gamma: float = 0.1
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    warmup_method: Literal["linear", "constant"] = "linear"
    iter_size: int = 1
    amp: Literal["none", "bf16", "fp16"] = "none"
    grad_clip: float | None = None
    ema_decay: float | None = None
    checkpoint_period: int = 500
    keep_last: int = 3
    eval_period: int = 0
    log_period: int = 20
    num_workers: int = 2
    seed: int = 0
    resume: bool = False
    deterministic: bool = False
    strict_data: bool = False

    def __post_init__(self) -> None:
        fn = "TrainSettings"
        positive_ints = ("max_iter", "batch_size", "iter_size", "checkpoint_period", "keep_last")
        for name in positive_ints + ("log_period",):
            check_number(getattr(self, name), name, fn, integer=True, low=1)
        for name in ("warmup_iters", "eval_period", "num_workers", "seed"):
            check_number(getattr(self, name), name, fn, integer=True, low=0)
        if self.reference_batch_size is not None:
            check_number(self.reference_batch_size, "reference_batch_size", fn, integer=True, low=1)
        check_number(self.base_lr, "base_lr", fn, low=0, low_open=True)
        check_number(self.momentum, "momentum", fn, low=0, high=1, high_open=True)
        for name in ("weight_decay", "weight_decay_norm", "bias_lr_factor"):
            check_number(getattr(self, name), name, fn, low=0)
        check_number(self.gamma, "gamma", fn, low=0, low_open=True)
        check_number(self.warmup_factor, "warmup_factor", fn, low=0, high=1, low_open=True)
        for i, step in enumerate(self.steps):
            check_number(step, f"steps[{i}]", fn, low=0, low_open=True)
        if self.grad_clip is not None:
            check_number(self.grad_clip, "grad_clip", fn, low=0, low_open=True)
        if self.ema_decay is not None:
            check_number(
                self.ema_decay, "ema_decay", fn, low=0, high=1, low_open=True, high_open=True
            )
        choices = {
            "optimizer": ("SGD", "AdamW"),
            "schedule": ("multistep", "cosine", "poly"),
            "warmup_method": ("linear", "constant"),
            "amp": ("none", "bf16", "fp16"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{fn}: `{name}` must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if not isinstance(self.device, str) or not re.fullmatch(
            r"auto|cpu|cuda(:\d+)?", self.device
        ):
            raise ValueError(
                f"{fn}: `device` must be auto, cpu, cuda or cuda:N, got {self.device!r}"
            )

    def scaled(self) -> TrainSettings:
        """These settings after the linear scaling rule (a copy; unchanged without a reference)."""
        if self.reference_batch_size in (None, self.batch_size):
            return self
        steps = [s * self.max_iter if s < 1 else s for s in self.steps]
        out = scale_for_batch_size(
            base_lr=self.base_lr,
            max_iter=self.max_iter,
            steps=[int(s) for s in steps],
            warmup_iters=self.warmup_iters,
            reference_batch_size=int(self.reference_batch_size or self.batch_size),
            batch_size=self.batch_size,
        )
        fields = {**asdict(self), **out, "reference_batch_size": None}
        fields["steps"] = tuple(fields["steps"])
        return TrainSettings(**fields)

    def lr_schedule(self) -> WarmupSchedule:
        """The warmup + decay schedule these settings describe."""
        main: object
        if self.schedule == "cosine":
            main = CosineSchedule(self.max_iter)
        elif self.schedule == "poly":
            main = PolySchedule(self.max_iter)
        else:
            steps = sorted(int(s * self.max_iter) if s < 1 else int(s) for s in self.steps)
            main = MultiStepSchedule(steps, self.gamma)
        return WarmupSchedule(
            main, self.warmup_iters, self.warmup_factor, method=self.warmup_method
        )


def resolve_device(name: str) -> torch.device:
    """A device from its name: ``"auto"`` is this process's GPU when CUDA is available, else
    the CPU; ``"cuda"`` is this process's GPU (``cuda:{current_device}``, which
    ``init_distributed`` sets to the local rank); ``"cpu"`` and ``"cuda:N"`` as named.

    Raises:
        ValueError: an unknown name, or a CUDA device on a machine without CUDA.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device {name!r}: {e}") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def build_optimizer(model: nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over :func:`param_groups`."""
    groups = param_groups(
        model,
        base_lr=s.base_lr,
        weight_decay=s.weight_decay,
        weight_decay_norm=s.weight_decay_norm,
        bias_lr_factor=s.bias_lr_factor,
    )
    if s.optimizer == "AdamW":
        return torch.optim.AdamW(groups, lr=s.base_lr)
    if s.optimizer != "SGD":
        raise ValueError(f"TrainSettings.optimizer must be 'SGD' or 'AdamW', got {s.optimizer!r}")
    return torch.optim.SGD(groups, lr=s.base_lr, momentum=s.momentum, nesterov=s.nesterov)


def evaluate_coco(
    model: nn.Module,
    records: RecordSource,
    mapper: Mapper,
    *,
    json_file: str | Path | None = None,
    metadata: Any = None,
    tasks: Sequence[str] = ("bbox", "segm"),
    output_dir: str | Path | None = None,
    num_workers: int = 0,
) -> dict[str, dict[str, float]]:
    """COCO AP of ``model`` on ``records`` (ground truth from ``json_file``, or the records)."""
    evaluator = COCOEvaluator(
        json_file=json_file,
        records=None if json_file is not None else [records[i] for i in range(len(records))],
        metadata=metadata,
        tasks=tasks,
        output_dir=output_dir,
    )
    loader = build_test_loader(records, mapper, num_workers=num_workers)
    return inference_on_dataset(model, loader, evaluator)


def _truncate_metrics(path: Path, start: int) -> None:
    """Drop the ``metrics.json`` lines of iterations ``>= start`` (written after the checkpoint
    a run resumes from, and about to be written again)."""
    if not is_main_process() or not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            iteration = json.loads(line).get("iteration", -1)
        except (json.JSONDecodeError, AttributeError):
            continue  # a line cut short by a kill
        if isinstance(iteration, int) and iteration < start:
            kept.append(line)
    if len(kept) != len(lines):
        logger.info("%s: dropping %d lines after iteration %d", path, len(lines) - len(kept), start)
        text = "".join(kept)

        def write(tmp: str) -> None:
            Path(tmp).write_text(text)

        atomic_write(path, write)


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's ``random`` (call before building the model: the same
    seed then gives the same initial weights and, on CPU, bit-identical training)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_detector(
    model: nn.Module,
    records: RecordSource,
    mapper: Mapper,
    settings: TrainSettings,
    *,
    evaluate: Callable[[nn.Module], dict[str, dict[str, float]]] | None = None,
    metadata: dict[str, Any] | None = None,
    config_yaml: str | None = None,
    extra_hooks: Sequence[HookBase] = (),
) -> Trainer:
    """Train ``model`` on ``records`` as ``settings`` say; returns the finished trainer.

    Args:
        model: the detector; moved to ``settings.device`` and, when a process group of more
            than one process exists, trained through ``DistributedDataParallel``.
        records: training records.
        mapper: training mapper (``mapper(record, rng) -> model input``).
        settings: the run's settings.
        evaluate: ``evaluate(model) -> results`` for periodic and final evaluation.
        metadata: stored in every checkpoint (class names, ...).
        config_yaml: the resolved config, stored in every checkpoint.
        extra_hooks: more hooks, after the standard ones.
    """
    s = settings.scaled()
    out = Path(s.output_dir)
    existing = run_files(out)
    if existing and not s.resume:
        raise ResumeError(
            f"{out} holds a run ({', '.join(existing[:4])}); resume it (settings.resume=True), "
            "train into another output_dir, or remove it first (engine.checkpointer.clear_run)"
        )
    out.mkdir(parents=True, exist_ok=True)
    world = get_world_size()
    if s.batch_size % world != 0:
        raise ValueError(
            f"TrainSettings.batch_size {s.batch_size} is the batch over all processes and must "
            f"be a multiple of their number, {world}"
        )
    torch.manual_seed(s.seed + get_rank())  # random proposal sampling differs per process
    if s.deterministic:
        torch.use_deterministic_algorithms(True)
    device = resolve_device(s.device)
    model.to(device)
    trained: nn.Module = model
    if world > 1:
        if getattr(model, "channels_last", False):
            # Gradients of channels-last activations come out channels-last: lay the weights
            # out the same way, or DDP copies every gradient into its buckets with a warning.
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        # Buffers are synchronised once, at the start, not before every forward: FrozenBN
        # statistics never change and SyncBN keeps its own in step; every process starts from
        # rank 0's weights and buffers.
        no_buffer_sync: dict[str, Any] = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else {"broadcast_buffers": False}  # torch < 2.13
        )
        trained = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, **no_buffer_sync
        )
        logger.info("DDP over %d processes, %d images each", world, s.batch_size // world)
    optimizer = build_optimizer(model, s)
    checkpointer = Checkpointer(
        model, out, keep_last=s.keep_last, metadata=metadata, config_yaml=config_yaml
    )
    found = checkpointer.find_resumable() if s.resume else None
    start = int(found[1]["extra"]["trainer"]["iteration"]) + 1 if found is not None else 0
    if start > s.max_iter:
        raise ResumeError(
            f"the run in {out} already trained {start} iterations, more than max_iter="
            f"{s.max_iter}; resume with max_iter >= {start} (its weights are in "
            f"{found[0] if found else out})"
        )
    if s.resume:
        _truncate_metrics(out / "metrics.json", start)
    loader = build_train_loader(
        records,
        mapper,
        batch_size=s.batch_size // world,
        num_workers=s.num_workers,
        seed=s.seed,
        start_batch=start * s.iter_size,
        strict=s.strict_data,
    )
    trainer = Trainer(
        model=trained,
        optimizer=optimizer,
        data_loader=loader,
        max_iter=s.max_iter,
        lr_schedule=s.lr_schedule(),
        iter_size=s.iter_size,
        amp=s.amp,
        grad_clip=s.grad_clip,
    )
    checkpointer.trainer = trainer
    if found is not None:
        checkpointer.restore(found[1], found[0])
        if start == s.max_iter:
            logger.info(
                "the run reached max_iter=%d: finishing it (final checkpoint and evaluation)",
                s.max_iter,
            )
    writer = MetricsWriter(out, period=s.log_period)
    hooks: list[HookBase] = [PeriodicCheckpointer(checkpointer, s.checkpoint_period), writer]
    hooks.append(StopOnSignal(checkpointer))  # after the metrics of the step are written
    saved = found[1]["extra"] if found is not None else {}
    if s.ema_decay is not None:
        ema = ModelEMA(model, s.ema_decay)
        if "ema" in saved:  # the average goes on from where the checkpoint left it
            ema.state = {k: v.to(device) for k, v in saved["ema"].items()}
        hooks.append(EMAHook(ema, checkpointer))
    hooks.append(ProgressLogger(period=s.log_period))
    if evaluate is not None:
        eval_hook = EvalHook(
            s.eval_period, lambda: evaluate(model), checkpointer=checkpointer, writer=writer
        )
        if "eval_best" in saved:  # a resumed run keeps model_best unless it does better
            eval_hook.best = float(saved["eval_best"])
            checkpointer.extra_state["eval_best"] = eval_hook.best
        hooks.append(eval_hook)
    trainer.register_hooks([*hooks, *extra_hooks])
    trainer.train()
    return trainer
