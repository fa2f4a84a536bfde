"""Running a subcommand's work on one process, on ``N`` spawned processes, or under a launcher.

``detforge train`` and ``detforge eval`` share this: under ``torchrun`` or ``srun`` (their
environment variables are found) the process joins the job's process group; with
``--num-processes N`` it starts ``N`` processes on this machine (``launch``); otherwise the
work runs here. Info messages come from rank 0 only; a failing process becomes a one-line
:class:`CLIError` naming its rank.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from detforge.cli.datasets import CLIError
from detforge.engine.launch import (
    WorkerError,
    detect_environment,
    finish_distributed,
    init_distributed,
    launch,
)
from detforge.utils.comm import get_world_size, is_main_process

__all__ = ["run_distributed"]

T = TypeVar("T")


def run_distributed(
    body: Callable[[argparse.Namespace], T],
    args: argparse.Namespace,
    *,
    num_processes: int,
    backend: str = "auto",
    timeout_s: float = 1800.0,
    what: str = "worker",
) -> tuple[bool, T | None]:
    """Run ``body(args)`` in every process of the job; returns ``(is rank 0, rank 0's result)``.

    Args:
        body: a module-level function (it must reach spawned processes by pickling).
        args: the parsed command line, passed to ``body`` in every process.
        num_processes: processes to start on this machine (1: none, run here).
        backend: process-group backend (``"auto"``: NCCL with CUDA, else gloo).
        timeout_s: rendezvous and collective timeout: a dead process is an error, not a hang.
        what: names the processes in errors (``"training"``, ``"evaluation"``).
    """
    if num_processes < 1:
        raise CLIError(f"--num-processes must be >= 1, got {num_processes}")
    info = detect_environment()
    if info is not None and info.world_size > 1 and not dist.is_initialized():
        if num_processes > 1:
            raise CLIError("--num-processes is for runs without torchrun/srun, which start them")
        init_distributed(info, backend=backend, timeout_s=timeout_s)
        _quiet_other_ranks()
        try:
            result = body(args)
            finish_distributed()
        finally:
            if dist.is_initialized():  # after a failure: no barrier (the others may never come)
                dist.destroy_process_group()
        return info.rank == 0, result
    if num_processes > 1:
        try:
            results = launch(
                _spawned,
                num_processes=num_processes,
                args=(body, args),
                backend=backend,
                timeout_s=timeout_s,
            )
        except WorkerError as e:
            last = (e.child_traceback.strip().splitlines() or [str(e)])[-1]
            raise CLIError(f"{what} process {e.rank} failed: {last}") from e
        return True, results[0]
    return True, body(args)


def _quiet_other_ranks() -> None:
    """Progress and info messages from rank 0 only; warnings and errors from every rank."""
    if not is_main_process():
        logging.getLogger("detforge").setLevel(logging.WARNING)


def _spawned(body: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> Any:
    """Body of each process that ``launch`` starts (in a fresh interpreter)."""
    from detforge.cli import _setup_logging

    _setup_logging()
    _quiet_other_ranks()
    if not torch.cuda.is_available():  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // get_world_size()))
    return body(args)
