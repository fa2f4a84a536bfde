"""Training checkpoints: model + trainer state, written atomically, the last K kept.

Checkpoints are detforge checkpoints (:mod:`detforge.checkpoint.io`, one format for trainer
output, conversions and published models): the weights, the run's config, ``metadata`` (the
``model_spec`` that rebuilds the model, class names, ...) and, under ``extra``, the trainer's
state (``extra["trainer"]``: iteration, optimizer, RNG states) and hook state (``extra["ema"]``).
They load with ``torch.load(weights_only=True)``: no code runs when reading one. Writes go
through :func:`detforge.checkpoint.io.atomic_write` (temporary file in the same folder, fsync,
rename), so a crash or kill mid-write never leaves a half-written checkpoint, and
``last_checkpoint`` (a one-line text file naming the newest) is replaced the same way.

Resuming never loses work: :meth:`Checkpointer.find_resumable` takes the checkpoint named in
``last_checkpoint`` and, when that one is missing or unreadable, warns and falls back to the
newest readable periodic checkpoint; when checkpoints were written but none can be read it
raises instead of silently starting again from iteration 0.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from torch import nn

from detforge.checkpoint.io import atomic_write, load_checkpoint, save_checkpoint
from detforge.engine.train_loop import get_rng_state
from detforge.utils.comm import all_gather, get_world_size, is_main_process

__all__ = [
    "Checkpointer",
    "NoReadableCheckpointError",
    "ResumeError",
    "clear_run",
    "run_files",
    "unwrap_model",
]

logger = logging.getLogger(__name__)
_PERIODIC = re.compile(r"model_(\d{7})\.pth$")
_TEMPORARY = re.compile(r"^\..+\.tmp$")  # atomic_write's temporary files


class ResumeError(RuntimeError):
    """A run cannot be continued as asked (the message says why and what to do)."""


class NoReadableCheckpointError(ResumeError):
    """A run folder that had checkpoints holds none that can be read."""


_RUN_FILES = ("last_checkpoint", "metrics.json", "model_final.pth", "model_best.pth")


def run_files(output_dir: str | Path) -> list[str]:
    """The files showing that ``output_dir`` holds a run (checkpoints, metrics), by name."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [n for n in _RUN_FILES if (out / n).exists()]
    return found + sorted(p.name for p in out.glob("model_*.pth") if _PERIODIC.match(p.name))


def clear_run(output_dir: str | Path) -> None:
    """Remove a run's checkpoints, metrics and TensorBoard events from ``output_dir`` (other
    files stay): what starting a new run in the same folder replaces."""
    import shutil

    out = Path(output_dir)
    for name in run_files(out):
        (out / name).unlink(missing_ok=True)
    for folder in ("tensorboard", "eval"):
        if (out / folder).is_dir():
            shutil.rmtree(out / folder)


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
        extra: dict[str, Any] = dict(self.extra_state)
        if self.trainer is not None:
            extra["trainer"] = self.trainer.state_dict()
            if rng_per_rank is not None:
                extra["trainer"]["rng_per_rank"] = rng_per_rank
        path = self.output_dir / f"{name}.pth"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(
            path,
            unwrap_model(self.model),
            config=self.config_yaml,
            metadata=self.metadata,
            extra=extra,
        )

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
        """The checkpoint ``last_checkpoint`` names, when that file exists, else None."""
        marker = self.output_dir / "last_checkpoint"
        if not marker.is_file():
            return None
        path = self.output_dir / marker.read_text().strip()
        return path if path.is_file() else None

    def _candidates(self) -> tuple[list[Path], bool]:
        """Checkpoints to resume from, best first, and whether any was ever written."""
        marker = self.output_dir / "last_checkpoint"
        named = self.output_dir / marker.read_text().strip() if marker.is_file() else None
        periodic = sorted(
            (p for p in self.output_dir.glob("model_*.pth") if _PERIODIC.match(p.name)),
            reverse=True,
        )
        final = self.output_dir / "model_final.pth"
        order = ([named] if named is not None else []) + [final] + periodic
        seen: list[Path] = []
        for p in order:
            if p.is_file() and p not in seen:
                seen.append(p)
        return seen, named is not None or bool(seen)

    def find_resumable(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest readable checkpoint with trainer state, loaded: ``(path, data)``.

        The one ``last_checkpoint`` names comes first; if it is missing or unreadable, a warning
        says so and older periodic checkpoints are tried, newest first. Stale temporary files of
        interrupted writes are removed.

        Returns:
            None when the run never wrote a checkpoint (a fresh start is then correct).

        Raises:
            NoReadableCheckpointError: checkpoints were written but none can be read.
        """
        if not self.output_dir.is_dir():
            return None
        if is_main_process():
            for stale in self.output_dir.iterdir():
                if _TEMPORARY.match(stale.name) and stale.is_file():
                    logger.warning("removing %s, left by an interrupted checkpoint write", stale)
                    stale.unlink(missing_ok=True)
        candidates, written = self._candidates()
        named = self.last_checkpoint()
        marker = self.output_dir / "last_checkpoint"
        if marker.is_file() and named is None:
            logger.warning(
                "%s names %s, which does not exist; looking for an older checkpoint",
                marker,
                marker.read_text().strip(),
            )
        problems = []
        for path in candidates:
            try:
                data = self.load(path)
            except (RuntimeError, ValueError) as e:
                logger.warning("cannot resume from %s (%s); trying an older one", path, e)
                problems.append(f"{path.name}: {str(e).splitlines()[0]}")
                continue
            if "trainer" not in data["extra"]:
                problems.append(f"{path.name}: no trainer state")
                continue
            return path, data
        if not written:
            return None
        tried = "; ".join(problems) or "no checkpoint file left"
        raise NoReadableCheckpointError(
            f"cannot resume the run in {self.output_dir}: no readable checkpoint ({tried}); "
            "nothing was overwritten. Restore a checkpoint there, or start a new run in "
            "another --output"
        )

    def restore(self, data: dict[str, Any], path: Path | str = "") -> int:
        """Load a checkpoint's model and trainer state; returns the next iteration.

        Raises:
            ResumeError: the checkpoint holds another model (names or shapes differ, e.g. a run
                with another number of classes); nothing is loaded.
        """
        model = unwrap_model(self.model)
        own = model.state_dict()
        theirs = data["model"]
        missing = sorted(set(own) - set(theirs))
        unexpected = sorted(set(theirs) - set(own))
        shapes = [k for k in own if k in theirs and own[k].shape != theirs[k].shape]
        if missing or unexpected or shapes:
            first = (
                f"{shapes[0]} is {list(theirs[shapes[0]].shape)} there, "
                f"{list(own[shapes[0]].shape)} in this model"
                if shapes
                else f"{len(missing)} missing, {len(unexpected)} unexpected tensors"
            )
            raise ResumeError(
                f"cannot resume from {path}: it holds another model ({first}); did the data's "
                "classes or the model change? Start a new run with another --output, or "
                "fine-tune from it with --weights"
            )
        model.load_state_dict(theirs)
        state = data["extra"].get("trainer", {})
        if self.trainer is not None and state:
            self.trainer.load_state_dict(state)
            logger.info("resumed from %s at iteration %d", path, self.trainer.iter)
        return int(state.get("iteration", -1)) + 1

    def resume(self) -> int:
        """Load the newest readable checkpoint (model and trainer state); returns the next
        iteration (0 when the run never wrote one). See :meth:`find_resumable`."""
        found = self.find_resumable()
        if found is None:
            logger.info("no checkpoint in %s: starting from scratch", self.output_dir)
            return 0
        return self.restore(found[1], found[0])

    @staticmethod
    def load(path: str | Path) -> dict[str, Any]:
        """Read a checkpoint safely (``weights_only``): ``load_checkpoint``'s dict, with the
        trainer state under ``extra``. A ``RuntimeError`` names an unreadable file."""
        try:
            return load_checkpoint(path)
        except (OSError, ValueError) as e:  # any failure to read is reported the same way
            raise RuntimeError(f"cannot read checkpoint {path}: {e}") from e
