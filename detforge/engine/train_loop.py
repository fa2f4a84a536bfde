"""The training loop: a plain loop over iterations with hooks around each step.

One iteration = one optimizer update. With ``iter_size > 1`` (gradient accumulation) an
iteration runs ``iter_size`` forward/backward passes on consecutive batches, each loss divided
by ``iter_size``, then updates once; the iteration counter, the LR schedule and checkpoints all
count updates.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from detforge.utils.comm import get_rank, get_world_size, reduce_mean

__all__ = ["HookBase", "Trainer", "get_rng_state", "set_rng_state"]

logger = logging.getLogger(__name__)


def _mean_over_processes(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """``values`` averaged over the processes of the default group (as is without one)."""
    if get_world_size() == 1 or not values:
        return values
    keys = sorted(values)
    t = reduce_mean(torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device))
    return dict(zip(keys, t.tolist(), strict=True))


class HookBase:
    """A hook sees the trainer (``self.trainer``) before/after training and each step."""

    trainer: Trainer

    def before_train(self) -> None:
        """Called once before the first iteration."""

    def after_train(self) -> None:
        """Called once at the end, also after an error (see ``trainer.failed``)."""

    def before_step(self) -> None:
        """Called before each iteration."""

    def after_step(self) -> None:
        """Called after each successful iteration (``trainer.iter`` is the one just done)."""


def get_rng_state() -> dict[str, Any]:
    """Every RNG the training touches, in a form ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = tuple(np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Train ``model`` with ``optimizer`` on batches from ``data_loader``.

    Args:
        model: a detector: ``model(images, targets)`` returns a dict of losses in train mode.
        optimizer: its parameter groups carry ``initial_lr`` (see ``solver.param_groups``).
        data_loader: an iterable of batches, each a list of model-input dicts (``image``,
            ``instances``, optional ``skipped``); infinite, or at least long enough.
        max_iter: number of iterations (updates) to train for.
        lr_schedule: ``iteration -> multiplier`` of each group's ``initial_lr``; None keeps it.
        hooks: called around training and each step, in order.
        iter_size: batches accumulated per update.
        amp: ``"none"``, ``"bf16"`` (autocast, no scaling) or ``"fp16"`` (autocast with a
            dynamic loss scaler; CUDA only).
        grad_clip: clip the global gradient norm to this value (None: no clipping).
        start_iter: first iteration (set by resuming).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader: Iterable[list[dict]],
        max_iter: int,
        lr_schedule: Callable[[int], float] | None = None,
        hooks: Sequence[HookBase] = (),
        iter_size: int = 1,
        amp: Literal["none", "bf16", "fp16"] = "none",
        grad_clip: float | None = None,
        start_iter: int = 0,
    ) -> None:
        if iter_size < 1 or max_iter < 0:
            raise ValueError(
                f"Trainer: need iter_size >= 1 and max_iter >= 0, got {iter_size}, {max_iter}"
            )
        if amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"Trainer: unknown amp mode {amp!r}")
        self.model, self.optimizer, self.data_loader = model, optimizer, data_loader
        self.max_iter, self.lr_schedule, self.iter_size = max_iter, lr_schedule, iter_size
        self.amp, self.grad_clip = amp, grad_clip
        self.iter = self.start_iter = start_iter
        self.device = next(model.parameters()).device
        self.scaler = torch.amp.GradScaler(self.device.type) if amp == "fp16" else None
        self.hooks: list[HookBase] = []
        self.register_hooks(hooks)
        self.metrics: dict[str, float] = {}  # of the last iteration
        self.skipped_samples = 0
        self.failed = False
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])

    def register_hooks(self, hooks: Iterable[HookBase]) -> None:
        """Append hooks (they get ``hook.trainer = self``)."""
        for h in hooks:
            h.trainer = self
            self.hooks.append(h)

    def train(self) -> None:
        """Run iterations ``start_iter .. max_iter - 1``."""
        logger.info("training from iteration %d to %d", self.start_iter, self.max_iter)
        self._data = iter(self.data_loader)
        self.model.train()
        try:
            for h in self.hooks:
                h.before_train()
            while self.iter < self.max_iter:
                for h in self.hooks:
                    h.before_step()
                self.run_step()
                for h in self.hooks:
                    h.after_step()
                self.iter += 1
        except BaseException:
            self.failed = True
            raise
        finally:
            for h in self.hooks:
                h.after_train()

    def _next_batch(self) -> list[dict]:
        batch = next(self._data)
        self.skipped_samples += sum(len(d.get("skipped", ())) for d in batch)
        return batch

    def run_step(self) -> None:
        """One update: ``iter_size`` forward/backward passes, then clip and step."""
        scale = self.lr_schedule(self.iter) if self.lr_schedule is not None else 1.0
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * scale
        start = time.perf_counter()
        data_time, sums = 0.0, dict[str, float]()
        for micro in range(self.iter_size):
            t = time.perf_counter()
            batch = self._next_batch()
            data_time += time.perf_counter() - t
            images = [d["image"].to(self.device) for d in batch]
            targets = [d["instances"].to(self.device) for d in batch]
            # Under DDP, gradients are all-reduced only on the last pass of an accumulation.
            last = micro == self.iter_size - 1
            sync = (
                contextlib.nullcontext()
                if last or not isinstance(self.model, DistributedDataParallel)
                else self.model.no_sync()
            )
            with sync:
                with torch.autocast(
                    self.device.type,
                    dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16,
                    enabled=self.amp != "none",
                ):
                    losses = self.model(images, targets)
                terms = [v for k, v in losses.items() if k.startswith("loss_")]
                if not terms:
                    raise ValueError(
                        f"Trainer: the model returned no `loss_*` entries: {list(losses)}"
                    )
                total = torch.stack([t.float() for t in terms]).sum()  # on the losses' device
                self._check_finite(total, losses)
                loss = total / self.iter_size
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / self.iter_size
        self._update()
        sums = _mean_over_processes(sums, self.device)
        self.metrics = {
            **sums,
            "total_loss": sum(v for k, v in sums.items() if k.startswith("loss_")),
            "lr": self.optimizer.param_groups[0]["lr"],
            "time": time.perf_counter() - start,
            "data_time": data_time,
            "skipped_samples": float(self.skipped_samples),
        }

    def _check_finite(self, total: Tensor, losses: dict[str, Tensor]) -> None:
        finite = bool(torch.isfinite(total))
        if get_world_size() > 1:
            # Every process must stop together: one that raised alone would leave the others
            # blocked in their next collective.
            flag = torch.tensor([0.0 if finite else 1.0], device=total.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if finite and flag.item() > 0:
                raise FloatingPointError(
                    f"the loss of another process is not finite at iteration {self.iter}; "
                    "training has diverged. The last checkpoint was written before this "
                    "iteration and is untouched."
                )
        if finite:
            return
        values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
        raise FloatingPointError(
            f"loss is {float(total.detach())} at iteration {self.iter} ({values}); "
            "training has diverged. "
            "The last checkpoint was written before this iteration and is untouched."
        )

    def _update(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs besides the model: iteration, optimizer, scaler, RNG states.

        Hooks call it after a step: ``"iteration"`` is the last *completed* iteration.
        """
        state: dict[str, Any] = {
            "iteration": self.iter,
            "optimizer": self.optimizer.state_dict(),
            "rng": get_rng_state(),
            "skipped_samples": self.skipped_samples,
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`: the next iteration is ``state["iteration"] + 1``."""
        self.iter = self.start_iter = int(state["iteration"]) + 1
        self.optimizer.load_state_dict(state["optimizer"])
        per_rank = state.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == get_world_size():
            set_rng_state(per_rank[get_rank()])  # each process continues its own draws
        else:
            if per_rank is not None:
                logger.warning(
                    "the checkpoint holds the RNG states of %d processes, this run has %d: "
                    "every process continues from rank 0's (the run is not bit-exact)",
                    len(per_rank),
                    get_world_size(),
                )
            set_rng_state(state["rng"])
        self.skipped_samples = int(state.get("skipped_samples", 0))
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
