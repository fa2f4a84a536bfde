import math

import pytest
import torch
from torch import nn

from detforge.solver.lr_schedule import (
    CosineSchedule,
    MultiStepSchedule,
    PolySchedule,
    WarmupSchedule,
    scale_for_batch_size,
)
from detforge.solver.param_groups import param_groups


def test_param_groups_split_norm_bias():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 4, 1))
    model[2].weight.requires_grad_(False)
    groups = param_groups(
        model, base_lr=0.1, weight_decay=1e-4, weight_decay_norm=0.0, weight_decay_bias=0.0,
        bias_lr_factor=2.0,
    )  # fmt: skip
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert by_id[id(model[0].weight)] == (0.1, 1e-4)
    assert by_id[id(model[0].bias)] == (0.2, 0.0)
    assert by_id[id(model[1].weight)] == (0.1, 0.0) and by_id[id(model[1].bias)] == (0.1, 0.0)
    assert id(model[2].weight) not in by_id  # frozen
    assert all(g["initial_lr"] == g["lr"] for g in groups)
    torch.optim.SGD(groups, lr=0.1, momentum=0.9)  # accepted by torch


def test_schedules():
    ms = MultiStepSchedule([10, 20], gamma=0.1)
    assert [ms(i) for i in (0, 9, 10, 19, 20, 100)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cos = CosineSchedule(100, final=0.1)
    assert cos(0) == 1 and cos(100) == pytest.approx(0.1) and cos(50) == pytest.approx(0.55)
    poly = PolySchedule(100, power=1.0)
    assert poly(25) == pytest.approx(0.75) and poly(200) == 0.0
    warm = WarmupSchedule(ms, warmup_iters=10, warmup_factor=0.01)
    assert warm(0) == pytest.approx(0.01) and warm(5) == pytest.approx(0.505)
    assert warm(10) == pytest.approx(0.1)
    const = WarmupSchedule(ms, warmup_iters=4, warmup_factor=0.5, method="constant")
    assert const(3) == 0.5 and const(4) == 1.0
    with pytest.raises(ValueError, match="increase"):
        MultiStepSchedule([5, 3])
    with pytest.raises(ValueError, match="method"):
        WarmupSchedule(ms, method="exp")  # type: ignore[arg-type]


def test_linear_scaling_rule():
    out = scale_for_batch_size(
        base_lr=0.02, max_iter=90000, steps=[60000, 80000], warmup_iters=1000,
        reference_batch_size=16, batch_size=8,
    )  # fmt: skip
    assert out == {
        "base_lr": 0.01,
        "max_iter": 180000,
        "steps": [120000, 160000],
        "warmup_iters": 2000,
    }
    assert math.isclose(
        scale_for_batch_size(
            base_lr=0.02,
            max_iter=10,
            steps=[],
            warmup_iters=0,
            reference_batch_size=16,
            batch_size=32,
        )["base_lr"],
        0.04,
    )
