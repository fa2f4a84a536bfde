"""ResNet/ResNeXt backbones: published parameter counts, shapes, strides, freezing, styles."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detforge.layers.conv import ShapeSpec
from detforge.layers.norms import FrozenBatchNorm2d
from detforge.modeling.backbones.resnet import (
    BottleneckBlock,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnext50_32x4d,
    resnext101_32x8d,
    resnext101_64x4d,
)

ALL = ("stem", "res2", "res3", "res4", "res5")
STRIDES = {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}
BASIC_CHANNELS = {"stem": 64, "res2": 64, "res3": 128, "res4": 256, "res5": 512}
BOTTLENECK_CHANNELS = {"stem": 64, "res2": 256, "res3": 512, "res4": 1024, "res5": 2048}

# torchvision's published ``num_params`` minus its 1000-way fc layer (C * 1000 + 1000):
# the trunk of each model, with BatchNorm weight and bias counted as parameters.
PUBLISHED_TRUNK_PARAMS = [
    (resnet18, 11_689_512 - 513_000),  # 11,176,512
    (resnet34, 21_797_672 - 513_000),
    (resnet50, 25_557_032 - 2_049_000),  # 23,508,032
    (resnet101, 44_549_160 - 2_049_000),
    (resnet152, 60_192_808 - 2_049_000),
    (resnext50_32x4d, 25_028_904 - 2_049_000),  # 22,979,904
    (resnext101_32x8d, 88_791_336 - 2_049_000),
    (resnext101_64x4d, 83_455_272 - 2_049_000),
]


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("builder", "expected"), PUBLISHED_TRUNK_PARAMS)
def test_parameter_count_matches_published(builder: Callable[..., ResNet], expected: int) -> None:
    with torch.device("meta"):
        model = builder(norm="BN", out_features=("res5",))
    assert _num_params(model) == expected


def test_resnet18_parameter_count_by_hand() -> None:
    # Independent of the published figure: 3x3 convs + BN pairs, stage by stage.
    def conv(cin: int, cout: int, k: int) -> int:
        return cin * cout * k * k + 2 * cout  # conv weight + BN weight and bias

    total = conv(3, 64, 7)
    cin = 64
    for c in (64, 128, 256, 512):
        for b in range(2):
            total += conv(cin, c, 3) + conv(c, c, 3)
            if b == 0 and cin != c:
                total += conv(cin, c, 1)
            cin = c
    assert total == 11_176_512
    with torch.device("meta"):
        assert _num_params(resnet18(norm="BN")) == total


def _expected_shapes(channels: dict[str, int], h: int, w: int, dilated: bool = False) -> dict:
    strides = dict(STRIDES, res5=16) if dilated else STRIDES
    return {k: (2, channels[k], math.ceil(h / s), math.ceil(w / s)) for k, s in strides.items()}


@pytest.mark.parametrize("size", [(64, 96), (67, 93)])
@pytest.mark.parametrize(
    ("builder", "channels"), [(resnet18, BASIC_CHANNELS), (resnet50, BOTTLENECK_CHANNELS)]
)
def test_forward_shapes_and_output_shape(
    builder: Callable[..., ResNet], channels: dict[str, int], size: tuple[int, int]
) -> None:
    model = builder(out_features=ALL, norm="FrozenBN").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert list(out) == list(ALL)
    assert {k: tuple(v.shape) for k, v in out.items()} == _expected_shapes(channels, *size)
    assert model.output_shape() == {k: ShapeSpec(channels[k], STRIDES[k]) for k in ALL}


@pytest.mark.parametrize(
    ("builder", "channels"),
    [
        (resnet34, BASIC_CHANNELS),
        (resnet101, BOTTLENECK_CHANNELS),
        (resnet152, BOTTLENECK_CHANNELS),
        (resnext50_32x4d, BOTTLENECK_CHANNELS),
        (resnext101_32x8d, BOTTLENECK_CHANNELS),
        (resnext101_64x4d, BOTTLENECK_CHANNELS),
    ],
)
def test_forward_shapes_on_meta_device(
    builder: Callable[..., ResNet], channels: dict[str, int]
) -> None:
    with torch.device("meta"):
        model = builder(out_features=ALL)
        out = model(torch.empty(2, 3, 67, 93))
    assert {k: tuple(v.shape) for k, v in out.items()} == _expected_shapes(channels, 67, 93)


def test_resnext_group_widths() -> None:
    with torch.device("meta"):
        x32 = resnext101_32x8d()
        x64 = resnext101_64x4d()
    assert (x32.res2[0].conv2.groups, x32.res2[0].conv2.out_channels) == (32, 256)
    assert (x32.res5[0].conv2.groups, x32.res5[0].conv2.out_channels) == (32, 2048)
    assert (x64.res3[1].conv2.groups, x64.res3[1].conv2.out_channels) == (64, 512)


def test_out_features_subset_builds_only_needed_stages() -> None:
    model = resnet18(out_features=("res3", "stem"))
    assert not hasattr(model, "res4") and not hasattr(model, "res5")
    out = model(torch.randn(1, 3, 32, 32))
    assert list(out) == ["stem", "res3"]
    assert list(model.output_shape()) == ["stem", "res3"]


def test_parameter_names_follow_detectron2() -> None:
    with torch.device("meta"):
        keys = set(resnet50(norm="FrozenBN").state_dict())
    for key in [
        "stem.conv1.weight",
        "stem.conv1.norm.running_var",
        "res2.0.shortcut.weight",
        "res2.0.shortcut.norm.bias",
        "res2.0.conv1.weight",
        "res2.2.conv3.norm.weight",
        "res5.2.conv3.norm.running_mean",
    ]:
        assert key in keys
    assert "res2.1.shortcut.weight" not in keys
    assert not any(k.endswith("conv1.bias") for k in keys)


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 5])
def test_freeze_at(freeze_at: int) -> None:
    model = resnet18(norm="BN", freeze_at=freeze_at)
    frozen_prefixes = ALL[:freeze_at]
    for name, p in model.named_parameters():
        assert p.requires_grad == (name.split(".")[0] not in frozen_prefixes), name
    for name, m in model.named_modules():
        if not (isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d)):
            continue
        is_frozen = name.split(".")[0] in frozen_prefixes
        assert isinstance(m, FrozenBatchNorm2d if is_frozen else nn.BatchNorm2d), name


def test_frozen_stages_keep_stats_and_get_no_gradient_in_training() -> None:
    model = resnet18(norm="BN", freeze_at=2).train()
    stem_stats = model.stem.conv1.norm.running_mean.clone()
    res3_stats = model.res3[0].conv1.norm.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))["res5"].sum().backward()
    assert torch.equal(model.stem.conv1.norm.running_mean, stem_stats)
    assert not torch.equal(model.res3[0].conv1.norm.running_mean, res3_stats)
    assert model.stem.conv1.weight.grad is None and model.res2[0].conv1.weight.grad is None
    assert model.res3[0].conv1.weight.grad is not None


def test_freeze_with_group_norm_keeps_group_norm() -> None:
    model = resnet18(norm="GN", freeze_at=1)
    assert isinstance(model.stem.conv1.norm, nn.GroupNorm)
    assert not model.stem.conv1.norm.weight.requires_grad
    assert model.res2[0].conv1.norm.weight.requires_grad


def test_frozen_bn_model_has_no_norm_parameters() -> None:
    with torch.device("meta"):
        model = resnet50(norm="FrozenBN", out_features=("res5",))
    # 23,508,032 minus 2 per BN channel: the FrozenBN affine terms are buffers.
    bn_channels = sum(m.num_features for m in model.modules() if isinstance(m, FrozenBatchNorm2d))
    assert _num_params(model) == 23_508_032 - 2 * bn_channels


def test_stride_placement_caffe_vs_pytorch_style() -> None:
    caffe = resnet50(stride_in_1x1=True)
    torch_style = resnet50(stride_in_1x1=False)
    for stage in ("res3", "res4", "res5"):
        first_c, first_p = getattr(caffe, stage)[0], getattr(torch_style, stage)[0]
        assert (first_c.conv1.stride, first_c.conv2.stride) == ((2, 2), (1, 1))
        assert (first_p.conv1.stride, first_p.conv2.stride) == ((1, 1), (2, 2))
        assert first_c.shortcut.stride == first_p.shortcut.stride == (2, 2)
    for model in (caffe, torch_style):
        assert model.res2[0].conv1.stride == model.res2[0].conv2.stride == (1, 1)
    x = torch.randn(1, 3, 45, 61)
    shapes_c = {k: v.shape for k, v in caffe(x).items()}
    assert shapes_c == {k: v.shape for k, v in torch_style(x).items()}


def _bottleneck_oracle(block: BottleneckBlock, x: torch.Tensor) -> torch.Tensor:
    """The block's computation written out with functional ops (norm-free model)."""

    def conv(m: nn.Conv2d, t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)

    out = F.relu(conv(block.conv1, x))
    out = F.relu(conv(block.conv2, out))
    out = conv(block.conv3, out)
    short = x if block.shortcut is None else conv(block.shortcut, x)
    return F.relu(out + short)


@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_bottleneck_matches_functional_oracle(stride_in_1x1: bool) -> None:
    model = ResNet(depth=50, norm="", stride_in_1x1=stride_in_1x1, groups=2, width_per_group=8)
    x = torch.randn(1, 256, 11, 9)
    for block in (model.res3[0], model.res2[1]):
        xin = x if block is model.res3[0] else torch.randn(1, 256, 6, 5)
        torch.testing.assert_close(block(xin), _bottleneck_oracle(block, xin))


def test_res5_dilation_gives_stride_16() -> None:
    model = resnet50(res5_dilation=2, out_features=ALL, norm="FrozenBN").eval()
    assert model.output_shape()["res5"] == ShapeSpec(2048, 16)
    for block in model.res5:
        assert block.conv2.dilation == (2, 2) and block.conv2.padding == (2, 2)
        assert block.conv1.stride == block.conv2.stride == (1, 1)
    assert model.res5[0].shortcut.stride == (1, 1)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 67, 93))
    expected = _expected_shapes(BOTTLENECK_CHANNELS, 67, 93, dilated=True)
    assert {k: tuple(v.shape) for k, v in out.items()} == expected


@pytest.mark.parametrize("norm", ["GN", "SyncBN", "BN", ""])
def test_norm_kinds_train_forward_backward(norm: str) -> None:
    model = resnet18(norm=norm).train()  # type: ignore[arg-type]
    out = model(torch.randn(2, 3, 40, 36))
    sum(v.square().mean() for v in out.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_init_msra_and_zero_init_residual() -> None:
    model = resnet50(zero_init_residual=True, norm="BN", out_features=("res4",))
    w = model.res4[0].conv2.weight  # fan_out = 256 * 3 * 3
    assert abs(w.std().item() / math.sqrt(2 / (256 * 9)) - 1) < 0.05
    assert model.res4[0].conv1.norm.weight.eq(1).all()
    for stage in (model.res2, model.res3, model.res4):
        for block in stage:
            assert block.conv3.norm.weight.eq(0).all()
    # With a zeroed residual branch, a block with identity shortcut is relu(x).
    x = torch.randn(2, 512, 5, 5)
    torch.testing.assert_close(model.res3[1].eval()(x), F.relu(x))
    plain = resnet18()
    assert plain.res2[0].conv2.norm.weight.eq(1).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": 42}, "depth"),
        ({"depth": 18, "out_features": ("res6",)}, "out_features"),
        ({"depth": 18, "out_features": "res5"}, "out_features"),
        ({"depth": 18, "out_features": ()}, "out_features"),
        ({"depth": 18, "freeze_at": 6}, "freeze_at"),
        ({"depth": 18, "groups": 32, "width_per_group": 4}, "groups"),
        ({"depth": 50, "res5_dilation": 4}, "res5_dilation"),
        ({"depth": 50, "zero_init_residual": True, "norm": ""}, "zero_init_residual"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=f"ResNet.*{match}"):
        ResNet(**kwargs)


def test_bad_input() -> None:
    model = resnet18(out_features=("stem",))
    with pytest.raises(ValueError, match=r"ResNet\.forward.*\[B, 3, H, W\]"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(TypeError, match="ResNet.forward"):
        model([torch.zeros(1, 3, 32, 32)])  # type: ignore[arg-type]
