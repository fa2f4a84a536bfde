"""Where a process sits in a multi-process job, read from the launcher's environment.

``detect_environment()`` recognises torchrun (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; these take precedence)
and Slurm (``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``, the tasks per node,
``SLURM_NODEID`` and the compressed node list, whose first host is the master; the port is
derived from ``SLURM_JOB_ID`` unless ``MASTER_PORT`` is set). See :mod:`detforge.engine.launch`
for joining the process group and starting processes.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["DistributedInfo", "detect_environment", "expand_hostlist", "parse_tasks_per_node"]

_DEFAULT_PORT = 29500  # torch's own default MASTER_PORT
# Slurm master ports without MASTER_PORT: 12000 + job id % 20000, below Linux' ephemeral range.
_SLURM_PORT_BASE, _SLURM_PORT_SPAN = 12000, 20000


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedInfo:
    """Where this process sits in a multi-process job.

    Attributes:
        rank: global rank in ``[0, world_size)``.
        local_rank: rank on this machine in ``[0, local_world_size)``; selects the GPU.
        world_size: number of processes in the job.
        local_world_size: number of processes on this machine.
        node_rank: rank of this machine among the job's machines.
        master_addr: host of rank 0, where the rendezvous store listens.
        master_port: TCP port of that store.
        backend: ``"nccl"``, ``"gloo"``, ... or ``"auto"`` (resolved by :func:`init_distributed`).
    """

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    master_addr: str
    master_port: int
    backend: str = "auto"

    def __post_init__(self) -> None:
        fn = "DistributedInfo"
        for name in ("rank", "local_rank", "world_size", "local_world_size", "node_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{fn}: `{name}` must be an int, got {value!r}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"{fn}: need 0 <= rank < world_size, got rank {self.rank}, "
                f"world_size {self.world_size}"
            )
        if not 1 <= self.local_world_size <= self.world_size:
            raise ValueError(
                f"{fn}: need 1 <= local_world_size <= world_size, got {self.local_world_size} "
                f"and {self.world_size}"
            )
        if not 0 <= self.local_rank < self.local_world_size:
            raise ValueError(
                f"{fn}: need 0 <= local_rank < local_world_size, got local_rank "
                f"{self.local_rank}, local_world_size {self.local_world_size}"
            )
        if self.node_rank < 0:
            raise ValueError(f"{fn}: `node_rank` must be >= 0, got {self.node_rank}")
        if not self.master_addr:
            raise ValueError(f"{fn}: `master_addr` must be a non-empty host name")
        if not 1 <= self.master_port <= 65535:
            raise ValueError(f"{fn}: `master_port` must be in [1, 65535], got {self.master_port}")


def _env_int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    """``env[name]`` as an int; ``default`` when unset (an error when there is none)."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        if default is None:
            raise ValueError(f"detect_environment: environment variable {name} is not set")
        return default
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError(
            f"detect_environment: environment variable {name}={raw!r} is not an integer"
        ) from None


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a Slurm compressed host list.

    ``"node[01-03,07],gpu5"`` gives ``["node01", "node02", "node03", "node07", "gpu5"]``. A
    range keeps the zero padding of its start; several bracket groups in one name expand to their
    product (``"r[1-2]n[1-2]"`` gives ``r1n1, r1n2, r2n1, r2n2``).

    Args:
        hostlist: comma-separated host names, each with optional ``[a-b,c,...]`` groups.

    Returns:
        list[str]: the host names, in order.

    Raises:
        ValueError: on unbalanced brackets, an empty name or a malformed range.
    """
    hosts: list[str] = []
    for token in _split_top_level(hostlist):
        parts = re.split(r"(\[[^\[\]]*\])", token)
        if any(c in p for p in parts[::2] for c in "[]") or token == "":
            raise ValueError(f"expand_hostlist: malformed host name {token!r} in {hostlist!r}")
        names = [""]
        for i, part in enumerate(parts):
            options = _expand_group(part[1:-1], hostlist) if i % 2 else [part]
            names = [n + o for n in names for o in options]
        hosts += names
    return hosts


def _split_top_level(hostlist: str) -> list[str]:
    """Split ``hostlist`` at the commas outside brackets."""
    tokens, depth, start = [], 0, 0
    for i, c in enumerate(hostlist):
        depth += {"[": 1, "]": -1}.get(c, 0)
        if depth not in (0, 1):
            raise ValueError(f"expand_hostlist: unbalanced brackets in {hostlist!r}")
        if c == "," and depth == 0:
            tokens.append(hostlist[start:i].strip())
            start = i + 1
    if depth != 0:
        raise ValueError(f"expand_hostlist: unbalanced brackets in {hostlist!r}")
    tokens.append(hostlist[start:].strip())
    return tokens


def _expand_group(group: str, hostlist: str) -> list[str]:
    """``"01-03,07"`` -> ``["01", "02", "03", "07"]``."""
    out: list[str] = []
    for item in group.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*", item)
        if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ValueError(f"expand_hostlist: bad range {item!r} in {hostlist!r}")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        out += [str(v).zfill(len(lo)) for v in range(int(lo), int(hi) + 1)]
    return out


def parse_tasks_per_node(value: str) -> list[int]:
    """Expand Slurm's tasks-per-node format: ``"4(x2),3"`` gives ``[4, 4, 3]`` (one per node).

    Args:
        value: comma-separated counts, each optionally followed by ``(xR)`` for ``R`` nodes.

    Returns:
        list[int]: the number of tasks of every node, in node order.
    """
    counts: list[int] = []
    for item in value.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if m is None:
            raise ValueError(f"parse_tasks_per_node: malformed entry {item!r} in {value!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts


def detect_environment(env: Mapping[str, str] = os.environ) -> DistributedInfo | None:
    """Read the launcher's environment variables: torchrun's first, then Slurm's.

    torchrun (and ``torch.distributed.launch``, and job operators that set the same variables)
    is recognised by ``RANK`` and ``WORLD_SIZE``. Missing optional variables default to:
    ``LOCAL_RANK`` 0, ``LOCAL_WORLD_SIZE`` 1, ``GROUP_RANK`` ``rank // local_world_size``;
    ``MASTER_ADDR``/``MASTER_PORT`` ``127.0.0.1``/29500 when all processes are on this machine
    (required otherwise). Slurm is recognised by ``SLURM_PROCID`` (set by ``srun`` for each task):
    see the module docstring; ``MASTER_ADDR``/``MASTER_PORT`` override the derived values.

    Args:
        env: the environment to read (default ``os.environ``).

    Returns:
        DistributedInfo | None: ``None`` when no launcher variable is set (a plain single
        process); ``backend`` is ``"auto"``.

    Raises:
        ValueError: naming the variable when one is malformed, missing or inconsistent.
    """
    if "RANK" in env and "WORLD_SIZE" in env:
        return _from_torchrun(env)
    if "SLURM_PROCID" in env:
        return _from_slurm(env)
    return None


def _from_torchrun(env: Mapping[str, str]) -> DistributedInfo:
    rank, world = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
    local_world = _env_int(env, "LOCAL_WORLD_SIZE", 1)
    single_node = local_world == world
    default_port = _DEFAULT_PORT if single_node else None
    addr = env.get("MASTER_ADDR") or ("127.0.0.1" if single_node else None)
    if addr is None:
        raise ValueError(
            f"detect_environment: MASTER_ADDR is not set but WORLD_SIZE={world} processes "
            f"span several machines (LOCAL_WORLD_SIZE={local_world})"
        )
    return _checked_info(
        env,
        rank=rank,
        local_rank=_env_int(env, "LOCAL_RANK", 0),
        world_size=world,
        local_world_size=local_world,
        node_rank=_env_int(env, "GROUP_RANK", rank // max(local_world, 1)),
        master_addr=addr,
        master_port=_env_int(env, "MASTER_PORT", default_port),
    )


def _from_slurm(env: Mapping[str, str]) -> DistributedInfo:
    rank = _env_int(env, "SLURM_PROCID")
    world = _env_int(env, "SLURM_NTASKS", _env_int(env, "SLURM_NPROCS", 1))
    node = _env_int(env, "SLURM_NODEID", 0)
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"):
        if env.get(name):
            per_node = parse_tasks_per_node(env[name])
            if name == "SLURM_NTASKS_PER_NODE":
                local_world = per_node[0]
            elif node < len(per_node):
                local_world = per_node[node]
            else:
                raise ValueError(
                    f"detect_environment: {name}={env[name]!r} lists {len(per_node)} nodes "
                    f"but SLURM_NODEID={node}"
                )
            break
    else:
        local_world = world
    addr = env.get("MASTER_ADDR")
    if not addr:
        for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
            if env.get(name):
                addr = expand_hostlist(env[name])[0]
                break
        else:
            addr = "127.0.0.1"
    port = _DEFAULT_PORT
    if env.get("SLURM_JOB_ID"):
        port = _SLURM_PORT_BASE + _env_int(env, "SLURM_JOB_ID") % _SLURM_PORT_SPAN
    return _checked_info(
        env,
        rank=rank,
        local_rank=_env_int(env, "SLURM_LOCALID", 0),
        world_size=world,
        local_world_size=local_world,
        node_rank=node,
        master_addr=addr,
        master_port=_env_int(env, "MASTER_PORT", port),
    )


def _checked_info(env: Mapping[str, str], **fields: Any) -> DistributedInfo:
    """Build the info, turning its consistency errors into errors about the environment."""
    try:
        return DistributedInfo(**fields)
    except ValueError as e:
        names = [k for k in env if k.startswith(("SLURM_", "RANK", "LOCAL_", "WORLD_", "GROUP_"))]
        shown = ", ".join(f"{k}={env[k]}" for k in sorted(names))
        raise ValueError(
            f"detect_environment: inconsistent launcher variables ({e}): {shown}"
        ) from e
