"""Hooks for the training loop: checkpoints, metrics (JSON lines and TensorBoard), a progress
line with ETA, periodic evaluation keeping the best checkpoint, and an EMA of the weights."""

from __future__ import annotations

import datetime
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detforge.engine.checkpointer import Checkpointer, unwrap_model
from detforge.engine.train_loop import HookBase
from detforge.utils.comm import all_gather, get_world_size, is_main_process

__all__ = [
    "EMAHook",
    "StopOnSignal",
    "TrainingStopped",
    "EvalHook",
    "MetricsWriter",
    "ModelEMA",
    "PeriodicCheckpointer",
    "ProgressLogger",
]

logger = logging.getLogger(__name__)


class PeriodicCheckpointer(HookBase):
    """Save ``model_NNNNNNN.pth`` every ``period`` iterations and ``model_final.pth`` at the end
    of a run that finished (never after a failure: the last good checkpoint stays)."""

    def __init__(self, checkpointer: Checkpointer, period: int) -> None:
        self.checkpointer, self.period = checkpointer, period

    def after_step(self) -> None:
        """Checkpoint on the period (every rank calls ``save``; rank 0 writes)."""
        done = self.trainer.iter + 1
        if done % self.period == 0 and done < self.trainer.max_iter:
            self.checkpointer.save(f"model_{self.trainer.iter:07d}")

    def after_train(self) -> None:
        """Final checkpoint when every iteration ran."""
        t = self.trainer
        if not t.failed and t.iter >= t.max_iter > 0:  # also when resumed at max_iter
            t.iter -= 1  # the state of the last completed iteration
            try:
                self.checkpointer.save("model_final")
            finally:
                t.iter += 1


class MetricsWriter(HookBase):
    """Append the iteration's metrics to ``metrics.json`` (JSON lines) and TensorBoard.

    Evaluation results that :class:`EvalHook` stores in ``trainer.eval_results`` are written
    with the iteration they belong to. Rank 0 only.
    """

    def __init__(
        self, output_dir: str | Path, *, period: int = 20, tensorboard: bool = True
    ) -> None:
        self.path = Path(output_dir) / "metrics.json"
        self.tb_dir = Path(output_dir) / "tensorboard"
        self.period, self.use_tb = period, tensorboard
        self._tb: Any = None
        self._sums: dict[str, float] = {}
        self._count = 0

    def before_train(self) -> None:
        """Open the writers."""
        if not is_main_process():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.use_tb:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.tb_dir))

    def after_step(self) -> None:
        """Average the metrics over the period and write them."""
        for k, v in self.trainer.metrics.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._count += 1
        it = self.trainer.iter
        if (it + 1) % self.period == 0 or it + 1 == self.trainer.max_iter:
            self.write({k: v / self._count for k, v in self._sums.items()}, it)
            self._sums, self._count = {}, 0

    def write(self, metrics: dict[str, float], iteration: int) -> None:
        """Write one record (also used for evaluation results)."""
        if not is_main_process():
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"iteration": iteration, **metrics}) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, iteration)
            self._tb.flush()

    def after_train(self) -> None:
        """Close TensorBoard."""
        if self._tb is not None:
            self._tb.close()


class ProgressLogger(HookBase):
    """Log a progress line every ``period`` iterations: bar, ETA, speed, losses and LR."""

    def __init__(self, *, period: int = 20, width: int = 20) -> None:
        self.period, self.width = period, width
        self._start = 0.0
        self._start_iter = 0

    def before_train(self) -> None:
        """Start the clock."""
        self._start, self._start_iter = time.perf_counter(), self.trainer.iter

    def after_step(self) -> None:
        """Log on the period and at the last iteration."""
        t = self.trainer
        done = t.iter + 1
        if done % self.period and done != t.max_iter:
            return
        rate = (done - self._start_iter) / max(time.perf_counter() - self._start, 1e-9)
        eta = datetime.timedelta(seconds=int((t.max_iter - done) / max(rate, 1e-9)))
        filled = int(self.width * done / max(t.max_iter, 1))
        bar = "#" * filled + "." * (self.width - filled)
        losses = "  ".join(f"{k} {v:.3f}" for k, v in t.metrics.items() if k.startswith("loss_"))
        logger.info(
            "[%s] %d/%d  eta %s  %.2f it/s  total_loss %.3f  %s  lr %.2e%s",
            bar, done, t.max_iter, eta, rate, t.metrics.get("total_loss", float("nan")), losses,
            t.metrics.get("lr", 0.0),
            f"  skipped samples {t.skipped_samples}" if t.skipped_samples else "",
        )  # fmt: skip


class ModelEMA:
    """Exponential moving average of a model's parameters and buffers (Polyak averaging).

    Args:
        model: the model to track.
        decay: ``ema = decay * ema + (1 - decay) * weights`` after each update.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ModelEMA: decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in unwrap_model(model).state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights into the average (integer buffers are copied)."""
        for k, v in unwrap_model(model).state_dict().items():
            if v.is_floating_point():
                self.state[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.state[k].copy_(v)

    @contextmanager
    def apply_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the averaged weights into ``model`` (e.g. to evaluate them)."""
        inner = unwrap_model(model)
        backup = {k: v.detach().clone() for k, v in inner.state_dict().items()}
        inner.load_state_dict(self.state)
        try:
            yield model
        finally:
            inner.load_state_dict(backup)


class EMAHook(HookBase):
    """Update a :class:`ModelEMA` after each step and keep it in the checkpoints."""

    def __init__(self, ema: ModelEMA, checkpointer: Checkpointer | None = None) -> None:
        self.ema, self.checkpointer = ema, checkpointer

    def after_step(self) -> None:
        """Update the average."""
        self.ema.update(self.trainer.model)
        if self.checkpointer is not None:
            self.checkpointer.extra_state["ema"] = self.ema.state


class EvalHook(HookBase):
    """Evaluate every ``period`` iterations and at the end; keep ``model_best.pth``.

    Args:
        period: iterations between evaluations (0: only at the end).
        eval_fn: runs the evaluation and returns ``{"bbox": {"AP": ...}, ...}``.
        checkpointer: when given with ``best_metric``, the best model is saved as ``model_best``.
        best_metric: ``"task/metric"``, e.g. ``"bbox/AP"``; higher is better.
        writer: a :class:`MetricsWriter` to log the results to.
    """

    def __init__(
        self,
        period: int,
        eval_fn: Callable[[], dict[str, dict[str, float]]],
        *,
        checkpointer: Checkpointer | None = None,
        best_metric: str | None = "bbox/AP",
        writer: MetricsWriter | None = None,
    ) -> None:
        self.period, self.eval_fn, self.checkpointer = period, eval_fn, checkpointer
        self.best_metric, self.writer = best_metric, writer
        self.best = -math.inf
        self.history: list[tuple[int, dict[str, dict[str, float]]]] = []

    def _evaluate(self) -> None:
        it = self.trainer.iter
        results = self.eval_fn()
        self.trainer.model.train()
        self.history.append((it, results))
        flat = {f"{task}/{k}": v for task, res in results.items() for k, v in res.items()}
        logger.info(
            "evaluation at iteration %d: %s",
            it + 1,
            {k: round(v, 2) for k, v in flat.items() if "-" not in k},
        )
        if self.writer is not None:
            self.writer.write(flat, it)
        value = flat.get(self.best_metric or "", math.nan)
        # Only rank 0 holds the gathered results: it decides, and every rank follows (saving is
        # collective under torch.distributed).
        better = all_gather(math.isfinite(value) and value > self.best)[0]
        if self.checkpointer is not None and better:
            self.best = value
            self.checkpointer.extra_state["eval_best"] = value  # kept across resume
            self.checkpointer.save("model_best")

    def after_step(self) -> None:
        """Evaluate on the period."""
        done = self.trainer.iter + 1
        if self.period > 0 and done % self.period == 0 and done < self.trainer.max_iter:
            self._evaluate()

    def after_train(self) -> None:
        """Final evaluation of a finished run."""
        t = self.trainer
        if not t.failed and t.iter >= t.max_iter > 0:  # also when resumed at max_iter
            t.iter -= 1
            try:
                self._evaluate()
            finally:
                t.iter += 1


class TrainingStopped(Exception):
    """A run stopped by SIGINT/SIGTERM after saving a checkpoint (the message says how to go on).

    Attributes:
        signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
        iteration: the last completed iteration.
        path: the checkpoint written for it.
    """

    def __init__(self, signal_name: str, iteration: int, path: Path | None) -> None:
        self.signal_name, self.iteration, self.path = signal_name, iteration, path
        where = f"; saved {path}" if path is not None else ""
        super().__init__(
            f"stopped by {signal_name} after iteration {iteration + 1}{where}. Continue with "
            "`--resume` (same --output); nothing was lost"
        )


class StopOnSignal(HookBase):
    """Stop cleanly on SIGINT or SIGTERM: finish the current iteration, save a checkpoint and
    raise :class:`TrainingStopped`. A second signal stops at once (``KeyboardInterrupt``).

    Handlers are installed only from the main thread, for the duration of training. Under
    ``torch.distributed`` the processes agree on the iteration to stop at (a flag all-reduce
    per step), so every rank saves the same checkpoint.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, checkpointer: Checkpointer) -> None:
        self.checkpointer = checkpointer
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested is not None:  # a second signal: stop now
            self._restore()
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        logger.warning("%s: stopping after this iteration (again to stop at once)", self.requested)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def before_train(self) -> None:
        """Install the handlers (main thread only)."""
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)

    def after_step(self) -> None:
        """Save and stop when a signal came (on any process)."""
        stop = self.requested is not None
        if get_world_size() > 1:
            import torch.distributed as dist

            flag = torch.tensor([1.0 if stop else 0.0], device=self.trainer.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item() > 0)
        if not stop:
            return
        t = self.trainer
        path = self.checkpointer.save(f"model_{t.iter:07d}")
        raise TrainingStopped(self.requested or "a signal on another process", t.iter, path)

    def after_train(self) -> None:
        """Put the previous handlers back."""
        self._restore()
