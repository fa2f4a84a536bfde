"""Launcher environment parsing, process-group setup and `launch`'s error propagation."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist

from detforge.engine import launch as launch_mod
from detforge.engine.launch import (
    DistributedInfo,
    WorkerError,
    detect_environment,
    expand_hostlist,
    init_distributed,
    is_distributed,
    launch,
    parse_tasks_per_node,
)


def _info(**overrides: object) -> DistributedInfo:
    fields: dict = dict(
        rank=0,
        local_rank=0,
        world_size=1,
        local_world_size=1,
        node_rank=0,
        master_addr="127.0.0.1",
        master_port=29500,
    )
    fields.update(overrides)
    return DistributedInfo(**fields)


# --------------------------------------------------------------------------- torchrun


def test_torchrun_single_node():
    env = {
        "RANK": "3",
        "LOCAL_RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "4",
        "GROUP_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29400",
    }
    assert detect_environment(env) == _info(
        rank=3, local_rank=3, world_size=4, local_world_size=4, master_port=29400
    )


def test_torchrun_two_nodes():
    env = {
        "RANK": "6",
        "LOCAL_RANK": "2",
        "WORLD_SIZE": "8",
        "LOCAL_WORLD_SIZE": "4",
        "GROUP_RANK": "1",
        "MASTER_ADDR": "10.0.0.5",
        "MASTER_PORT": "1234",
    }
    info = detect_environment(env)
    assert info == _info(
        rank=6,
        local_rank=2,
        world_size=8,
        local_world_size=4,
        node_rank=1,
        master_addr="10.0.0.5",
        master_port=1234,
    )
    assert info is not None and info.backend == "auto"


def test_torchrun_defaults():
    # No GROUP_RANK: rank // local_world_size; one node: local master on torch's default port.
    env = {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "2"}
    env |= {"MASTER_ADDR": "h", "MASTER_PORT": "7"}
    assert detect_environment(env) == _info(
        rank=5,
        local_rank=1,
        world_size=8,
        local_world_size=2,
        node_rank=2,
        master_addr="h",
        master_port=7,
    )
    assert detect_environment({"RANK": "0", "WORLD_SIZE": "1"}) == _info()


def test_torchrun_errors_name_the_variable():
    with pytest.raises(ValueError, match=r"RANK='x' is not an integer"):
        detect_environment({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="MASTER_ADDR is not set"):
        detect_environment({"RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="MASTER_PORT is not set"):
        env = {"RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "h"}
        detect_environment(env)
    with pytest.raises(ValueError, match=r"rank 4, world_size 4.*RANK=4"):
        detect_environment({"RANK": "4", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="local_rank 2, local_world_size 2"):
        detect_environment(
            {"RANK": "0", "LOCAL_RANK": "2", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
        )


def test_no_launcher_gives_none():
    assert detect_environment({}) is None
    assert detect_environment({"MASTER_ADDR": "h", "SLURM_JOB_ID": "3", "RANK": "0"}) is None


def test_torchrun_takes_precedence_over_slurm():
    # `srun torchrun ...`: torchrun's workers inherit the node's Slurm task variables.
    env = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    env |= {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_ID": "5"}
    assert detect_environment(env) == _info(rank=1, local_rank=1, world_size=2, local_world_size=2)


# --------------------------------------------------------------------------- slurm


def test_slurm_two_nodes_compressed_lists():
    env = {
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "8",
        "SLURM_NODEID": "1",
        "SLURM_TASKS_PER_NODE": "4(x2)",
        "SLURM_JOB_NODELIST": "node[01-03,07],gpu5",
        "SLURM_JOB_ID": "123456",
    }
    # 12000 + 123456 % 20000 = 12000 + 3456
    assert detect_environment(env) == _info(
        rank=5,
        local_rank=1,
        world_size=8,
        local_world_size=4,
        node_rank=1,
        master_addr="node01",
        master_port=15456,
    )


def test_slurm_uneven_tasks_per_node_and_step_variables():
    env = {
        "SLURM_PROCID": "4",
        "SLURM_LOCALID": "0",
        "SLURM_NTASKS": "5",
        "SLURM_NODEID": "2",
        "SLURM_TASKS_PER_NODE": "8(x3)",  # the allocation; the step below is what runs
        "SLURM_STEP_TASKS_PER_NODE": "2(x2),1",
        "SLURM_JOB_NODELIST": "a[1-9]",
        "SLURM_STEP_NODELIST": "b[7-9]",
    }
    assert detect_environment(env) == _info(
        rank=4,
        world_size=5,
        local_world_size=1,
        node_rank=2,
        master_addr="b7",
        master_port=29500,
    )


def test_slurm_ntasks_per_node_and_master_overrides():
    env = {
        "SLURM_PROCID": "2",
        "SLURM_LOCALID": "2",
        "SLURM_NTASKS": "4",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_NODELIST": "x",
        "SLURM_JOB_ID": "77",
        "MASTER_ADDR": "head",
        "MASTER_PORT": "4000",
    }
    assert detect_environment(env) == _info(
        rank=2, local_rank=2, world_size=4, local_world_size=4, master_addr="head", master_port=4000
    )


def test_slurm_errors():
    base = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NODEID": "3"}
    with pytest.raises(ValueError, match=r"SLURM_TASKS_PER_NODE='1\(x2\)' lists 2 nodes"):
        detect_environment(base | {"SLURM_TASKS_PER_NODE": "1(x2)"})
    with pytest.raises(ValueError, match="SLURM_NTASKS='two'"):
        detect_environment(base | {"SLURM_NTASKS": "two"})
    with pytest.raises(ValueError, match="unbalanced"):
        detect_environment(base | {"SLURM_JOB_NODELIST": "n[1-2"})


@pytest.mark.parametrize(
    ("hostlist", "expected"),
    [
        ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
        ("single", ["single"]),
        ("a,b", ["a", "b"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("gpu-[3]-x,c[1,5]", ["gpu-3-x", "c1", "c5"]),
    ],
)
def test_expand_hostlist(hostlist, expected):
    assert expand_hostlist(hostlist) == expected


@pytest.mark.parametrize("bad", ["n[1-2", "n]1[", "n[3-1]", "n[a]", "a,,b", "n[[1]]"])
def test_expand_hostlist_rejects_malformed(bad):
    with pytest.raises(ValueError, match="expand_hostlist"):
        expand_hostlist(bad)


def test_parse_tasks_per_node():
    assert parse_tasks_per_node("4(x2),3") == [4, 4, 3]
    assert parse_tasks_per_node("1") == [1]
    assert parse_tasks_per_node("2(x3)") == [2, 2, 2]
    with pytest.raises(ValueError, match="parse_tasks_per_node"):
        parse_tasks_per_node("4(2)")


def test_distributed_info_validation():
    with pytest.raises(ValueError, match="local_rank"):
        _info(local_rank=1)
    with pytest.raises(ValueError, match="master_port"):
        _info(master_port=70000)
    with pytest.raises(TypeError, match="`rank` must be an int"):
        _info(rank="0")
    with pytest.raises(TypeError):
        DistributedInfo(0, 0, 1, 1, 0, "h", 1)  # type: ignore[call-arg]  # keyword-only


# --------------------------------------------------------------------------- init_distributed


def test_backend_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    assert launch_mod._resolve_backend("auto", _info()) == "nccl"
    assert launch_mod._resolve_backend("auto", _info(backend="gloo")) == "gloo"
    assert launch_mod._resolve_backend("mpi", _info(backend="gloo")) == "mpi"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert launch_mod._resolve_backend("auto", _info()) == "gloo"


def test_init_distributed_picks_gloo_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    info = init_distributed(_info(), timeout_s=30, init_method=f"file://{tmp_path / 'store'}")
    try:
        assert info.backend == "gloo" and dist.get_backend() == "gloo"
        assert dist.get_world_size() == 1 and dist.get_rank() == 0
        assert not is_distributed()  # a group of one process
        x = torch.tensor([2.0])
        dist.all_reduce(x)
        assert x.item() == 2.0
        with pytest.raises(RuntimeError, match="already initialised"):
            init_distributed(_info())
    finally:
        dist.destroy_process_group()
    assert not dist.is_initialized()


def test_init_distributed_times_out_clearly_when_a_peer_is_missing():
    info = _info(world_size=2, local_world_size=2, master_port=launch_mod._free_port())
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"rank 0 of 2 could not join .* within 1(\.0)? s"):
        init_distributed(info, backend="gloo", timeout_s=1)
    assert time.monotonic() - start < 20
    assert not dist.is_initialized()


def test_init_distributed_argument_checks():
    with pytest.raises(TypeError, match="`info`"):
        init_distributed({"rank": 0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_s"):
        init_distributed(_info(), timeout_s=0)


# --------------------------------------------------------------------------- launch


def _report() -> tuple[int, int, str, float]:
    x = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(x)
    return dist.get_rank(), dist.get_world_size(), os.environ["LOCAL_RANK"], x.item()


def _fail_on_rank_one(message: str) -> None:
    if dist.get_rank() == 1:
        raise ValueError(message)


def _exit_on_rank_one() -> None:
    if dist.get_rank() == 1:
        os._exit(3)


def test_launch_two_processes_returns_results_by_rank():
    assert launch(_report, num_processes=2, backend="gloo") == [
        (0, 2, "0", 3.0),
        (1, 2, "1", 3.0),
    ]
    assert not dist.is_initialized()


def test_launch_reraises_child_error_with_rank_and_traceback():
    with pytest.raises(WorkerError, match=r"process rank 1 \(pid \d+\) failed") as err:
        launch(_fail_on_rank_one, num_processes=2, args=("boom in the child",), backend="gloo")
    assert err.value.rank == 1 and err.value.exit_code is None
    assert "ValueError: boom in the child" in str(err.value)
    assert "_fail_on_rank_one" in err.value.child_traceback  # the child's frames


def test_launch_reports_a_child_that_exits():
    with pytest.raises(WorkerError, match="process rank 1") as err:
        launch(_exit_on_rank_one, num_processes=2, backend="gloo")
    assert err.value.rank == 1 and err.value.exit_code == 3


def test_launch_single_process_runs_in_place():
    assert launch(is_distributed, num_processes=1) == [False]
    assert launch(max, num_processes=1, args=(2, 5)) == [5]


def test_launch_argument_checks():
    with pytest.raises(ValueError, match="num_processes"):
        launch(_report, num_processes=0)
    with pytest.raises(ValueError, match="timeout_s"):
        launch(_report, num_processes=2, timeout_s=-1)
    with pytest.raises(TypeError, match="picklable"):
        launch(lambda: None, num_processes=2)
    with pytest.raises(TypeError, match="callable"):
        launch("main", num_processes=2)  # type: ignore[arg-type]
