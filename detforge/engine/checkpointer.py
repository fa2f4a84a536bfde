"""Training checkpoints: model + trainer state, written atomically, the last K kept.

A checkpoint is a ``torch.save`` file loadable with ``torch.load(weights_only=True)`` (no code
runs when reading it). It is written with :func:`detforge.checkpoint.io.atomic_write`
(temporary file in the same folder, fsync, rename), so a crash or kill mid-write never leaves a
half-written checkpoint, and ``last_checkpoint`` (a one-line text file naming the newest) is
replaced the same way.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detforge.checkpoint.io import atomic_write
from detforge.engine.train_loop import get_rng_state
from detforge.utils.comm import all_gather, get_world_size, is_main_process

__all__ = ["Checkpointer", "unwrap_model"]

logger = logging.getLogger(__name__)
_PERIODIC = re.compile(r"model_(\d{7})\.pth$")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Checkpointer:
    """Save and restore the model and the trainer's state in ``output_dir``.

    Args:
        model: the model (a DDP wrapper is unwrapped: checkpoints hold the bare module's keys).
        output_dir: folder of the run.
        trainer: an object with ``state_dict()``/``load_state_dict()`` (the ``Trainer``), or None.
        keep_last: periodic checkpoints (``model_NNNNNNN.pth``) kept; older ones are deleted.
            ``model_final.pth`` and ``model_best.pth`` are never deleted.
        metadata: stored in every checkpoint (class names, version, ...); YAML-able values.
        config_yaml: the resolved config of the run, stored as text.
    """

    def __init__(
        self,
        model: nn.Module,
        output_dir: str | Path,
        *,
        trainer: Any = None,
        keep_last: int = 3,
        metadata: dict[str, Any] | None = None,
        config_yaml: str | None = None,
    ) -> None:
        if keep_last < 1:
            raise ValueError(f"Checkpointer: keep_last must be >= 1, got {keep_last}")
        self.model, self.trainer = model, trainer
        self.output_dir = Path(output_dir)
        self.keep_last = keep_last
        self.metadata = dict(metadata or {})
        self.config_yaml = config_yaml
        self.extra_state: dict[str, Any] = {}  # e.g. {"ema": ema.state_dict()} set by hooks

    def save(self, name: str) -> Path | None:
        """Write ``output_dir/name.pth`` and point ``last_checkpoint`` at it.

        Under ``torch.distributed`` every process must call it (the RNG states of all ranks are
        gathered, so that a resumed run draws what the uninterrupted one would have drawn);
        only rank 0 writes, and the others return ``None``.
        """
        rng_per_rank = None
        if self.trainer is not None and get_world_size() > 1:
            rng_per_rank = all_gather(get_rng_state())
        if not is_main_process():
            return None
        data: dict[str, Any] = {
            "model": unwrap_model(self.model).state_dict(),
            "metadata": self.metadata,
            **self.extra_state,
        }
        if self.config_yaml is not None:
            data["config"] = self.config_yaml
        if self.trainer is not None:
            data["trainer"] = self.trainer.state_dict()
            if rng_per_rank is not None:
                data["trainer"]["rng_per_rank"] = rng_per_rank
        path = self.output_dir / f"{name}.pth"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(data, tmp))

        def write_marker(tmp: str) -> None:
            Path(tmp).write_text(path.name)

        atomic_write(self.output_dir / "last_checkpoint", write_marker)
        logger.info("saved checkpoint %s", path)
        self._prune()
        return path

    def _prune(self) -> None:
        periodic = sorted(p for p in self.output_dir.iterdir() if _PERIODIC.match(p.name))
        for old in periodic[: -self.keep_last]:
            old.unlink(missing_ok=True)

    def last_checkpoint(self) -> Path | None:
        """The newest checkpoint of the run, or None."""
        marker = self.output_dir / "last_checkpoint"
        if not marker.is_file():
            return None
        path = self.output_dir / marker.read_text().strip()
        return path if path.is_file() else None

    def resume(self) -> int:
        """Load the newest checkpoint (model and trainer state); returns the next iteration
        (0 when there is none)."""
        path = self.last_checkpoint()
        if path is None:
            logger.info("no checkpoint in %s: starting from scratch", self.output_dir)
            return 0
        data = self.load(path)
        unwrap_model(self.model).load_state_dict(data["model"])
        if self.trainer is not None and "trainer" in data:
            self.trainer.load_state_dict(data["trainer"])
            logger.info("resumed from %s at iteration %d", path, self.trainer.iter)
            return int(self.trainer.iter)
        return int(data.get("trainer", {}).get("iteration", -1)) + 1

    def next_iteration(self) -> int:
        """The iteration a resume would start from, without loading anything else."""
        path = self.last_checkpoint()
        if path is None:
            return 0
        return int(self.load(path).get("trainer", {}).get("iteration", -1)) + 1

    @staticmethod
    def load(path: str | Path) -> dict[str, Any]:
        """Read a checkpoint safely (``weights_only=True``); a clear error names a bad file."""
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # any failure to read is reported the same way
            raise RuntimeError(f"cannot read checkpoint {path}: {e}") from e
        if not isinstance(data, dict) or "model" not in data:
            raise RuntimeError(f"{path} is not a detforge checkpoint (no 'model' entry)")
        return data
