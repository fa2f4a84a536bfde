"""Starting one training program on several processes, and joining them into a process group.

(Reading the launcher's environment is :mod:`detforge.engine.environment`; its names are
re-exported here.)

There are three ways to run a training script ``train.py`` that calls
``init_distributed(detect_environment())`` when ``detect_environment()`` finds a launcher (and
runs on its own otherwise):

1. **Plain single process**: ``python train.py``. No launcher variable is set,
   ``detect_environment()`` returns ``None``, no process group is created and
   ``is_distributed()`` is ``False``. :func:`launch` with ``num_processes=1`` does the same: it
   calls ``main_fn`` in the current process.
2. **torchrun**: ``torchrun --nproc_per_node N train.py`` starts ``N`` processes on this machine
   and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK`` (the
   node's rank), ``MASTER_ADDR`` and ``MASTER_PORT`` in each. On several machines, run on every
   node ``torchrun --nnodes 2 --nproc_per_node N --node_rank R --master_addr HOST
   --master_port PORT train.py`` (static rendezvous, ``R`` = 0 on the node that is ``HOST``), or
   ``torchrun --nnodes 2 --nproc_per_node N --rdzv_backend c10d --rdzv_endpoint HOST:PORT
   --rdzv_id JOB train.py`` (dynamic rendezvous: torchrun assigns the node ranks).
   Single-machine runs without torchrun use :func:`launch`, which spawns the processes itself on a
   free port.
3. **Slurm**: ``srun --ntasks-per-node N python train.py`` inside an allocation, one task per
   GPU. Slurm sets ``SLURM_PROCID`` (rank), ``SLURM_LOCALID``, ``SLURM_NTASKS``, the tasks per
   node, ``SLURM_NODEID`` and the job's node list; the first host of the (possibly compressed)
   node list is the master address, and the master port is derived from ``SLURM_JOB_ID`` unless
   ``MASTER_PORT`` is set. (``srun ... torchrun ...`` also works: torchrun's variables take
   precedence over Slurm's.)

**When a process dies.** torch itself does not notice a dead peer: the others block in their
next collective (or in ``init_process_group``'s rendezvous) until the process group's timeout
runs out. With gloo the blocked collective then raises an error (often sooner, when the dead
peer's TCP connection is seen closed); with NCCL a watchdog thread compares each collective with
the timeout and, under the default ``TORCH_NCCL_ASYNC_ERROR_HANDLING``, aborts the communicator
and terminates the process. torch's defaults are 30 minutes for gloo and 10 minutes for NCCL;
:func:`init_distributed` takes ``timeout_s`` explicitly so that a job fails with a clear error
instead of hanging. torchrun's agent watches its local workers: when one exits with an error it
terminates the others on that node (SIGTERM, then SIGKILL) and either restarts the whole group
(``--max-restarts``) or exits, reporting the failed rank and exit code (``ChildFailedError``);
workers on *other* nodes learn of it only through the rendezvous or, failing that, the timeout.
:func:`launch` does the same on one machine: when a child fails it terminates the others and
raises :class:`WorkerError` in the parent with the child's rank and traceback.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import pickle
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detforge.engine.environment import (
    DistributedInfo,
    detect_environment,
    expand_hostlist,
    parse_tasks_per_node,
)

__all__ = [
    "DistributedInfo",
    "WorkerError",
    "detect_environment",
    "expand_hostlist",
    "finish_distributed",
    "init_distributed",
    "is_distributed",
    "launch",
    "parse_tasks_per_node",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 1800.0


class WorkerError(RuntimeError):
    """A process started by :func:`launch` failed.

    Attributes:
        rank: global rank of the failed process.
        pid: its process id.
        exit_code: its exit code when it died without a Python exception (killed by a signal or
            ``os._exit``), else ``None``.
        child_traceback: the formatted traceback of the child's exception, or ``""``.
    """

    def __init__(
        self, message: str, *, rank: int, pid: int, exit_code: int | None, child_traceback: str
    ) -> None:
        super().__init__(message)
        self.rank, self.pid = rank, pid
        self.exit_code, self.child_traceback = exit_code, child_traceback


# ----------------------------------------------------------------------------- process group


def is_distributed() -> bool:
    """Whether the default process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _resolve_backend(backend: str, info: DistributedInfo) -> str:
    """``backend``, else ``info.backend``, else NCCL with CUDA (and NCCL built) or gloo."""
    for choice in (backend, info.backend):
        if not isinstance(choice, str) or not choice:
            raise TypeError(f"init_distributed: backend must be a non-empty str, got {choice!r}")
        if choice != "auto":
            return choice
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def init_distributed(
    info: DistributedInfo,
    *,
    backend: str = "auto",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    init_method: str | None = None,
) -> DistributedInfo:
    """Join the default process group described by ``info``.

    With CUDA the current device is set to ``cuda:{local_rank}`` first (required for NCCL). The
    timeout bounds the rendezvous (all ``world_size`` processes must join within it) and every
    later collective, so a dead peer gives an error, not a hang (see the module docstring).

    Args:
        info: this process's place, e.g. from :func:`detect_environment`.
        backend: ``"auto"`` (use ``info.backend`` unless that is ``"auto"`` too, then ``"nccl"``
            when CUDA is available, else ``"gloo"``), or a backend name.
        timeout_s: seconds before a rendezvous or collective is declared failed.
        init_method: rendezvous URL (``"tcp://host:port"``, ``"file:///path"``); default
            ``tcp://{master_addr}:{master_port}``.

    Returns:
        DistributedInfo: ``info`` with ``backend`` resolved.

    Raises:
        RuntimeError: when torch.distributed is unavailable, a group already exists, or the
            rendezvous fails (the message names the rank, the URL and the timeout).
    """
    fn = "init_distributed"
    if not isinstance(info, DistributedInfo):
        raise TypeError(f"{fn}: `info` must be a DistributedInfo, got {type(info).__name__}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValueError(f"{fn}: `timeout_s` must be a positive number, got {timeout_s!r}")
    if not dist.is_available():
        raise RuntimeError(f"{fn}: this torch build has no torch.distributed support")
    if dist.is_initialized():
        raise RuntimeError(f"{fn}: the default process group is already initialised")
    chosen = _resolve_backend(backend, info)
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if info.local_rank < count:
            torch.cuda.set_device(info.local_rank)
        elif chosen == "nccl":
            raise ValueError(
                f"{fn}: local_rank {info.local_rank} has no GPU (this machine has {count}); "
                "start at most one process per GPU"
            )
    host = f"[{info.master_addr}]" if ":" in info.master_addr else info.master_addr
    url = init_method or f"tcp://{host}:{info.master_port}"
    try:
        dist.init_process_group(
            backend=chosen,
            init_method=url,
            rank=info.rank,
            world_size=info.world_size,
            timeout=timedelta(seconds=float(timeout_s)),
        )
    except Exception as e:
        raise RuntimeError(
            f"{fn}: rank {info.rank} of {info.world_size} could not join the {chosen} process "
            f"group at {url} within {timeout_s} s: {e}. Check that every process started and "
            "that the master address and port are reachable from every node."
        ) from e
    logger.info("rank %d/%d joined the %s process group", info.rank, info.world_size, chosen)
    return dataclasses.replace(info, backend=chosen)


# ----------------------------------------------------------------------------- launch


def _free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent(parent_pid: int) -> None:
    """Make this process exit when its parent (the launcher) dies, even by ``kill -9``.

    On Linux the kernel sends ``SIGTERM`` on the parent's death (``PR_SET_PDEATHSIG``); if the
    parent is already gone when this runs, the process exits at once. ``torch.multiprocessing``
    sets ``SIGINT`` there, which Python only handles between bytecodes, so a worker blocked in a
    long collective or kernel would outlive its launcher; ``SIGTERM`` is not deferred.
    Elsewhere: a no-op (the launcher's own cleanup and the process-group timeout remain).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the launcher died before the line above
        os._exit(1)


def _worker(
    local_rank: int,
    main_fn: Callable[..., Any],
    args: tuple[Any, ...],
    info: DistributedInfo,
    timeout_s: float,
    result_dir: str,
    parent_pid: int,
) -> None:
    """Body of each spawned process: join the group, run ``main_fn``, save its return value."""
    die_with_parent(parent_pid)
    info = dataclasses.replace(info, rank=local_rank, local_rank=local_rank)
    os.environ.update(
        RANK=str(info.rank),
        LOCAL_RANK=str(info.local_rank),
        WORLD_SIZE=str(info.world_size),
        LOCAL_WORLD_SIZE=str(info.local_world_size),
        GROUP_RANK="0",
        MASTER_ADDR=info.master_addr,
        MASTER_PORT=str(info.master_port),
    )
    init_distributed(info, timeout_s=timeout_s)
    try:
        result = main_fn(*args)
        torch.save(result, Path(result_dir) / f"result_{info.rank}.pt")
        finish_distributed()
    finally:
        if dist.is_initialized():  # after a failure: no barrier (the others may never come)
            dist.destroy_process_group()


def finish_distributed() -> None:
    """Leave the default process group cleanly after a successful run.

    Objects that hold the group (a ``DistributedDataParallel`` wrapper kept alive by a
    reference cycle, say) are freed first, then every process waits for the others, then the
    group is destroyed. Without this a process could tear the group down (rank 0 owns the
    rendezvous store) while a peer still uses it, and the peer aborts at exit ("terminate
    called without an active exception").
    """
    if not dist.is_initialized():
        return
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def launch(
    main_fn: Callable[..., Any],
    *,
    num_processes: int,
    args: Sequence[Any] = (),
    backend: str = "auto",
    master_port: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[Any]:
    """Run ``main_fn(*args)`` in ``num_processes`` processes on this machine, as one job.

    Each process joins a process group (rank = local rank, master ``127.0.0.1``), then calls
    ``main_fn``. Processes are started with the ``spawn`` method, so ``main_fn`` and ``args``
    must be picklable (``main_fn`` a module-level function) and the calling script must guard
    its entry point with ``if __name__ == "__main__":``. With ``num_processes=1`` ``main_fn``
    runs in this process, without a process group.

    Args:
        main_fn: the program of every process.
        num_processes: number of processes (usually one per GPU).
        args: positional arguments of ``main_fn``.
        backend: process-group backend; ``"auto"`` is NCCL with CUDA, else gloo.
        master_port: rendezvous port; default a free port.
        timeout_s: timeout of the rendezvous and of every collective.

    Returns:
        list: ``main_fn``'s return value in each process, by rank (returned values travel
        through ``torch.save``, so they must be picklable).

    Raises:
        WorkerError: when a process fails; the message names its rank and holds its traceback.
            The other processes are terminated.
    """
    fn = "launch"
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"{fn}: `num_processes` must be a positive int, got {num_processes!r}")
    if not callable(main_fn):
        raise TypeError(f"{fn}: `main_fn` must be callable, got {type(main_fn).__name__}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValueError(f"{fn}: `timeout_s` must be a positive number, got {timeout_s!r}")
    if num_processes == 1:
        return [main_fn(*args)]
    if dist.is_available() and dist.is_initialized():
        raise RuntimeError(f"{fn}: called inside an initialised process group")
    try:
        pickle.dumps((main_fn, tuple(args)))
    except Exception as e:
        raise TypeError(
            f"{fn}: `main_fn` and `args` must be picklable to reach the spawned processes "
            f"(use a module-level function): {e}"
        ) from e
    port = _free_port() if master_port is None else master_port
    info = DistributedInfo(
        rank=0,
        local_rank=0,
        world_size=num_processes,
        local_world_size=num_processes,
        node_rank=0,
        master_addr="127.0.0.1",
        master_port=port,
        backend=backend,
    )
    return _spawn(main_fn, tuple(args), info, timeout_s)


def _spawn(
    main_fn: Callable[..., Any], args: tuple[Any, ...], info: DistributedInfo, timeout_s: float
) -> list[Any]:
    """Spawn ``info.world_size`` workers, turn a failure into :class:`WorkerError`, collect."""
    fn = "launch"
    num_processes = info.world_size
    with tempfile.TemporaryDirectory(prefix="detforge_launch_") as tmp:
        try:
            mp.spawn(
                _worker,
                args=(main_fn, args, info, timeout_s, tmp, os.getpid()),
                nprocs=num_processes,
                join=True,
            )
        except mp.ProcessRaisedException as e:
            tb = e.msg.split("following error:\n", 1)[-1]
            raise WorkerError(
                f"{fn}: process rank {e.error_index} (pid {e.error_pid}) failed:\n{tb}",
                rank=e.error_index,
                pid=e.error_pid,
                exit_code=None,
                child_traceback=tb,
            ) from None
        except mp.ProcessExitedException as e:
            raise WorkerError(
                f"{fn}: process rank {e.error_index} (pid {e.error_pid}) died: {e.msg}",
                rank=e.error_index,
                pid=e.error_pid,
                exit_code=e.exit_code,
                child_traceback="",
            ) from None
        return [
            torch.load(Path(tmp) / f"result_{r}.pt", weights_only=False)
            for r in range(num_processes)
        ]
