"""FrozenBatchNorm2d, SyncBatchNorm2d, get_norm, convert_frozen_batchnorm and Conv2dNormAct."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from detforge.layers.conv import Conv2dNormAct, ShapeSpec
from detforge.layers.norms import (
    FrozenBatchNorm2d,
    SyncBatchNorm2d,
    convert_frozen_batchnorm,
    get_norm,
)


def _random_bn(channels: int, dtype: torch.dtype = torch.float32) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels).to(dtype)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
        bn.running_mean.uniform_(-1.0, 1.0)
        bn.running_var.uniform_(0.2, 3.0)
    return bn


def test_frozen_bn_hand_computed() -> None:
    # ch0: scale = 2 / sqrt(4) = 1, shift = 1 - 3 * 1 = -2
    # ch1: scale = 1 / sqrt(16) = 1/4, shift = 0 - (-1) / 4 = 1/4
    m = FrozenBatchNorm2d(2, eps=0.0)
    m.weight.copy_(torch.tensor([2.0, 1.0]))
    m.bias.copy_(torch.tensor([1.0, 0.0]))
    m.running_mean.copy_(torch.tensor([3.0, -1.0]))
    m.running_var.copy_(torch.tensor([4.0, 16.0]))
    x = torch.tensor([5.0, 7.0]).view(1, 2, 1, 1)
    # ch0: 5 * 1 - 2 = 3; ch1: 7 / 4 + 1 / 4 = 2
    assert m(x).flatten().tolist() == [3.0, 2.0]


def test_frozen_bn_has_buffers_only_and_default_identity() -> None:
    m = FrozenBatchNorm2d(3)
    assert list(m.parameters()) == []
    assert sorted(n for n, _ in m.named_buffers()) == [
        "bias",
        "running_mean",
        "running_var",
        "weight",
    ]
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(m(x), x, rtol=0, atol=1e-6)


def test_frozen_bn_equals_bn_in_eval_and_ignores_train_mode() -> None:
    bn = _random_bn(5).eval()
    frozen = FrozenBatchNorm2d(5)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped silently
    x = torch.randn(3, 5, 6, 7)
    torch.testing.assert_close(frozen(x), bn(x))
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    frozen.train()
    torch.testing.assert_close(frozen(x), bn(x))
    for k, v in frozen.state_dict().items():
        assert torch.equal(v, before[k])


def test_frozen_bn_loads_state_dict_without_running_stats() -> None:
    m = FrozenBatchNorm2d(2)
    m.load_state_dict({"weight": torch.tensor([2.0, 3.0]), "bias": torch.tensor([1.0, -1.0])})
    x = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(m(x).flatten(), torch.tensor([3.0, 5.0]))


def test_frozen_bn_load_still_strict_about_other_keys() -> None:
    with pytest.raises(RuntimeError, match="bias"):
        FrozenBatchNorm2d(2).load_state_dict({"weight": torch.ones(2)})


def test_frozen_bn_rejects_bad_input() -> None:
    m = FrozenBatchNorm2d(3)
    with pytest.raises(ValueError, match=r"FrozenBatchNorm2d\.forward.*\[B, 3, H, W\]"):
        m(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="FrozenBatchNorm2d.forward"):
        m(torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match="num_features"):
        FrozenBatchNorm2d(0)


def test_frozen_bn_half_input_keeps_dtype() -> None:
    m = FrozenBatchNorm2d(2)
    assert m(torch.ones(1, 2, 2, 2, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_convert_frozen_batchnorm_recursive_and_copies_stats() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        _random_bn(4),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 1), SyncBatchNorm2d(4)),
    )
    with torch.no_grad():
        sync = model[3][1]
        sync.running_mean.uniform_(-1, 1)
        sync.running_var.uniform_(0.5, 2)
        sync.weight.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    converted = convert_frozen_batchnorm(model)
    assert converted is model
    assert isinstance(model[1], FrozenBatchNorm2d) and isinstance(model[3][1], FrozenBatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d | nn.SyncBatchNorm) for m in model.modules())
    torch.testing.assert_close(model.train()(x), expected)


def test_convert_frozen_batchnorm_top_level_dtype_and_affine_false() -> None:
    bn = _random_bn(3, torch.float64).eval()
    frozen = convert_frozen_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d) and frozen.weight.dtype == torch.float64
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(frozen(x), bn(x))
    plain = nn.BatchNorm2d(3, affine=False, eps=1e-3).eval()
    plain.running_mean.fill_(1.0)
    frozen = convert_frozen_batchnorm(plain)
    assert isinstance(frozen, FrozenBatchNorm2d) and frozen.eps == 1e-3
    torch.testing.assert_close(frozen(x.float()), plain(x.float()))


def test_convert_frozen_batchnorm_refuses_untracked_stats_without_changes() -> None:
    model = nn.Sequential(nn.BatchNorm2d(2), nn.BatchNorm2d(2, track_running_stats=False))
    with pytest.raises(ValueError, match=r"convert_frozen_batchnorm.*'1'"):
        convert_frozen_batchnorm(model)
    assert type(model[0]) is nn.BatchNorm2d


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("", nn.Identity),
        ("FrozenBN", FrozenBatchNorm2d),
        ("BN", nn.BatchNorm2d),
        ("SyncBN", SyncBatchNorm2d),
        ("GN", nn.GroupNorm),
    ],
)
def test_get_norm_kinds(kind: str, cls: type[nn.Module]) -> None:
    norm = get_norm(kind, 64)  # type: ignore[arg-type]
    assert type(norm) is cls
    assert norm(torch.randn(2, 64, 3, 3)).shape == (2, 64, 3, 3)


def test_get_norm_group_count_and_errors() -> None:
    gn = get_norm("GN", 64, num_groups=16)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 16
    with pytest.raises(ValueError, match="get_norm: GN"):
        get_norm("GN", 48)
    with pytest.raises(ValueError, match="get_norm: `kind`"):
        get_norm("LN", 8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="get_norm: `channels`"):
        get_norm("BN", 0)


def test_sync_bn_without_process_group_matches_batchnorm() -> None:
    assert not dist.is_initialized()
    sync, bn = SyncBatchNorm2d(4), nn.BatchNorm2d(4)
    sync.load_state_dict(bn.state_dict())
    x1 = torch.randn(3, 4, 5, 5, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = sync.train()(x1), bn.train()(x2)
    torch.testing.assert_close(y1, y2)
    weights = torch.randn(3, 4, 5, 5)
    (y1 * weights).sum().backward()
    (y2 * weights).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(sync.weight.grad, bn.weight.grad)
    torch.testing.assert_close(sync.running_mean, bn.running_mean)
    torch.testing.assert_close(sync.running_var, bn.running_var)
    assert int(sync.num_batches_tracked) == 1
    torch.testing.assert_close(sync.eval()(x1), bn.eval()(x2))
    with pytest.raises(ValueError, match="SyncBatchNorm2d.forward"):
        sync(torch.zeros(2, 4, 3))


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
def test_sync_bn_world_of_one_on_cpu() -> None:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        x = torch.randn(2, 4, 3, 3)
        with pytest.raises(ValueError, match="GPU"):
            nn.SyncBatchNorm(4).train()(x)  # what the wrapper exists to avoid
        sync, bn = SyncBatchNorm2d(4).train(), nn.BatchNorm2d(4).train()
        torch.testing.assert_close(sync(x), bn(x))
        torch.testing.assert_close(sync.running_var, bn.running_var)
    finally:
        dist.destroy_process_group()


def test_conv_norm_act_bias_rule_and_padding() -> None:
    assert Conv2dNormAct(3, 8, 3).bias is not None
    assert Conv2dNormAct(3, 8, 3, norm=nn.Identity()).bias is not None
    assert Conv2dNormAct(3, 8, 3, norm=nn.BatchNorm2d(8)).bias is None
    assert Conv2dNormAct(3, 8, 3, norm=nn.BatchNorm2d(8), bias=True).bias is not None
    assert Conv2dNormAct(3, 8, 7).padding == (3, 3)
    assert Conv2dNormAct(3, 8, 3, dilation=2).padding == (2, 2)
    assert Conv2dNormAct(3, 8, 3, padding=0).padding == (0, 0)
    with pytest.raises(ValueError, match="kernel_size"):
        Conv2dNormAct(3, 8, 0)


def test_conv_norm_act_matches_functional_oracle() -> None:
    bn = _random_bn(8).eval()
    m = Conv2dNormAct(3, 8, 3, stride=2, norm=bn, activation=nn.ReLU()).eval()
    x = torch.randn(2, 3, 9, 10)
    ref = F.conv2d(x, m.weight, None, stride=2, padding=1)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    ref = torch.relu(
        ref * scale.view(1, -1, 1, 1) + (bn.bias - bn.running_mean * scale).view(1, -1, 1, 1)
    )
    out = m(x)
    assert out.shape == (2, 8, math.ceil(9 / 2), math.ceil(10 / 2))
    torch.testing.assert_close(out, ref)
    names = {n for n, _ in m.named_parameters()}
    assert names == {"weight", "norm.weight", "norm.bias"}


def test_shape_spec_validation() -> None:
    assert ShapeSpec(channels=256, stride=4) == ShapeSpec(256, 4)
    with pytest.raises(ValueError, match="ShapeSpec: `stride`"):
        ShapeSpec(256, 0)
    with pytest.raises(ValueError, match="ShapeSpec: `channels`"):
        ShapeSpec(2.5, 4)  # type: ignore[arg-type]
