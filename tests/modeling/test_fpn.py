"""FPN neck and its top blocks: shapes at odd sizes, a functional oracle, gradients, checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from detforge.layers.conv import ShapeSpec
from detforge.modeling.backbones.resnet import resnet18
from detforge.modeling.necks.fpn import FPN, LastLevelMaxPool, LastLevelP6P7

IN = ("res2", "res3", "res4", "res5")


def _shapes(channels: tuple[int, ...] = (8, 16, 32, 64)) -> dict[str, ShapeSpec]:
    return {f: ShapeSpec(c, 4 * 2**i) for i, (f, c) in enumerate(zip(IN, channels, strict=True))}


def _features(h: int, w: int, channels: tuple[int, ...] = (8, 16, 32, 64)) -> dict:
    return {
        f: torch.randn(2, c, math.ceil(h / (4 * 2**i)), math.ceil(w / (4 * 2**i)))
        for i, (f, c) in enumerate(zip(IN, channels, strict=True))
    }


def _upsample_crop(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """2x nearest upsampling by repetition, cropped to ``size`` (the oracle's top-down step)."""
    up = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    return up[:, :, : size[0], : size[1]]


@pytest.mark.parametrize("fuse", ["sum", "avg"])
@pytest.mark.parametrize("size", [(64, 96), (67, 93)])
def test_fpn_matches_functional_oracle(fuse: str, size: tuple[int, int]) -> None:
    fpn = FPN(_shapes(), IN, 12, fuse=fuse)  # type: ignore[arg-type]
    feats = _features(*size)
    out = fpn(feats)
    prev = None
    expected = {}
    for lvl in (5, 4, 3, 2):
        lat_conv = getattr(fpn, f"fpn_lateral{lvl}")
        out_conv = getattr(fpn, f"fpn_output{lvl}")
        lat = F.conv2d(feats[f"res{lvl}"], lat_conv.weight, lat_conv.bias)
        if prev is not None:
            lat = lat + _upsample_crop(prev, lat.shape[-2:])
            if fuse == "avg":
                lat = lat / 2
        prev = lat
        expected[f"p{lvl}"] = F.conv2d(lat, out_conv.weight, out_conv.bias, padding=1)
    assert list(out) == ["p2", "p3", "p4", "p5"]
    for k, v in expected.items():
        torch.testing.assert_close(out[k], v)


def test_fpn_on_resnet_with_max_pool_top_block_odd_size() -> None:
    backbone = resnet18(norm="FrozenBN")
    fpn = FPN(backbone.output_shape(), IN, 32, top_block=LastLevelMaxPool())
    out = fpn(backbone(torch.randn(2, 3, 67, 93)))
    expected = {
        f"p{lvl}": (2, 32, math.ceil(67 / 2**lvl), math.ceil(93 / 2**lvl)) for lvl in range(2, 6)
    }
    expected["p6"] = (2, 32, 2, 2)  # ceil(3 / 2), ceil(3 / 2) from P5 = 3 x 3
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    assert fpn.output_shape() == {f"p{lvl}": ShapeSpec(32, 2**lvl) for lvl in range(2, 7)}
    assert torch.equal(out["p6"], out["p5"][:, :, ::2, ::2])
    assert fpn.size_divisibility == 32  # the res5 stride, as detectron2 pads


@pytest.mark.parametrize("in_feature", ["res5", "p5"])
def test_fpn_p6p7_shapes_and_gradients_reach_every_parameter(in_feature: str) -> None:
    in_ch = 64 if in_feature == "res5" else 32
    top = LastLevelP6P7(in_ch, 32, in_feature=in_feature)
    fpn = FPN(_shapes(), ("res3", "res4", "res5"), 32, top_block=top, norm="GN")
    out = fpn(_features(67, 93))
    sizes = {"p3": 9, "p4": 5, "p5": 3, "p6": 2, "p7": 1}
    assert {k: v.shape[2] for k, v in out.items()} == sizes
    assert list(fpn.output_shape()) == list(sizes)
    assert fpn.output_shape()["p7"] == ShapeSpec(32, 128)
    sum(v.square().mean() for v in out.values()).backward()
    names = [n for n, _ in fpn.named_parameters()]
    assert "top_block.p6.weight" in names and "fpn_lateral3.norm.weight" in names
    for name, p in fpn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_p6p7_oracle() -> None:
    top = LastLevelP6P7(4, 6)
    x = torch.randn(1, 4, 5, 7)
    p6, p7 = top(x)
    ref6 = F.conv2d(x, top.p6.weight, top.p6.bias, stride=2, padding=1)
    ref7 = F.conv2d(F.relu(ref6), top.p7.weight, top.p7.bias, stride=2, padding=1)
    torch.testing.assert_close(p6, ref6)
    torch.testing.assert_close(p7, ref7)
    assert p6.shape == (1, 6, 3, 4) and p7.shape == (1, 6, 2, 2)


def test_fpn_init_is_caffe2_xavier_fill() -> None:
    fpn = FPN(_shapes((256, 256, 256, 512)), IN, 64, top_block=LastLevelP6P7(512, 64))
    for conv in (fpn.fpn_lateral5, fpn.fpn_output2, fpn.top_block.p6):
        fan_in = conv.weight[0].numel()
        bound = math.sqrt(3 / fan_in)  # kaiming_uniform with a=1: sqrt(6 / ((1 + 1) * fan_in))
        assert conv.weight.abs().max() <= bound
        assert conv.weight.abs().max() > 0.95 * bound
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))


def test_fpn_norm_means_no_conv_bias() -> None:
    fpn = FPN(_shapes(), IN, 16, norm="BN")
    assert fpn.fpn_lateral2.bias is None and fpn.fpn_output5.bias is None
    assert FPN(_shapes(), IN, 16).fpn_lateral2.bias is not None


@pytest.mark.parametrize(
    ("shapes", "features", "match"),
    [
        (_shapes(), (), "in_features"),
        (_shapes(), ("res2", "res6"), "not in `in_shapes`"),
        (_shapes(), ("res2", "res4"), "twice the previous"),
        (_shapes(), ("res3", "res2"), "twice the previous"),
        ({"a": ShapeSpec(8, 6), "b": ShapeSpec(8, 12)}, ("a", "b"), "power-of-two"),
    ],
)
def test_fpn_rejects_bad_inputs_spec(shapes: dict, features: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FPN(shapes, features, 8)


def test_fpn_rejects_bad_top_blocks_and_arguments() -> None:
    with pytest.raises(ValueError, match="neither an FPN output"):
        FPN(_shapes(), IN, 8, top_block=LastLevelMaxPool("p9"))
    with pytest.raises(ValueError, match="channels 32"):
        FPN(_shapes(), IN, 8, top_block=LastLevelP6P7(32, 8))  # res5 has 64 channels
    with pytest.raises(ValueError, match="must output 8"):
        FPN(_shapes(), IN, 8, top_block=LastLevelP6P7(64, 16))
    with pytest.raises(ValueError, match="stride 32"):
        FPN(_shapes(), IN, 8, top_block=LastLevelMaxPool("p4"))
    with pytest.raises(ValueError, match="must output 8"):
        FPN(_shapes(), IN, 8, top_block=LastLevelMaxPool("res5"))  # 64-channel P6
    with pytest.raises(TypeError, match="TopBlock"):
        FPN(_shapes(), IN, 8, top_block=torch.nn.MaxPool2d(1, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fuse"):
        FPN(_shapes(), IN, 8, fuse="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out_channels"):
        FPN(_shapes(), IN, 0)


def test_fpn_forward_rejects_bad_features() -> None:
    fpn = FPN(_shapes(), IN, 8, top_block=LastLevelP6P7(64, 8))
    feats = _features(64, 64)
    with pytest.raises(ValueError, match=r"FPN\.forward.*lacks \['res3'\]"):
        fpn({k: v for k, v in feats.items() if k != "res3"})
    feats["res4"] = torch.randn(2, 31, 4, 4)
    with pytest.raises(ValueError, match=r"features\['res4'\].*\[B, 32, H, W\]"):
        fpn(feats)
