"""load_weights / adapt_num_classes: what loads, what is reported, the fine-tuning path."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from detforge.checkpoint.load import adapt_num_classes, load_weights
from detforge.layers.norms import FrozenBatchNorm2d
from detforge.modeling import zoo


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_full_load() -> None:
    src, dst = _net(0), _net(1)
    report = load_weights(dst, src.state_dict(), strict=True)
    assert report.ok and report.missing == report.unexpected == report.mismatched == []
    assert report.loaded == sorted(src.state_dict())
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)
    assert report.summary().startswith(f"loaded {len(report.loaded)}, missing 0,")


def test_missing_unexpected_mismatched(caplog: pytest.LogCaptureFixture) -> None:
    src, dst = _net(0), _net(1)
    state = dict(src.state_dict())
    del state["0.bias"]
    state["extra.weight"] = torch.zeros(3)
    state["2.weight"] = torch.zeros(5, 4, 1, 1)
    before = _snapshot(dst)

    with pytest.raises(ValueError, match=r"load_weights: .*strict=True") as err:
        load_weights(dst, state, strict=True)
    assert "0.bias" in str(err.value) and "extra.weight" in str(err.value)
    for k, v in before.items():  # strict failure leaves the model unchanged
        assert torch.equal(dst.state_dict()[k], v)

    with caplog.at_level(logging.WARNING, logger="detforge.checkpoint.load"):
        report = load_weights(dst, state)
    assert report.missing == ["0.bias"]
    assert report.unexpected == ["extra.weight"]
    assert report.mismatched == [("2.weight", (5, 4, 1, 1), (2, 4, 1, 1))]
    assert not report.ok
    assert torch.equal(dst.state_dict()["2.weight"], before["2.weight"])  # not loaded
    assert torch.equal(dst.state_dict()["0.weight"], src.state_dict()["0.weight"])
    table = report.summary()
    assert "mismatched" in table and "ckpt [5, 4, 1, 1] vs model [2, 4, 1, 1]" in table
    assert "extra.weight" in caplog.text


def test_frozen_bn_without_statistics_is_not_missing() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), FrozenBatchNorm2d(3))
    w, b = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([0.1, 0.2, 0.3])
    conv = torch.randn(3, 2, 1, 1)
    report = load_weights(model, {"0.weight": conv, "1.weight": w, "1.bias": b}, strict=True)
    assert report.ok
    x = torch.randn(1, 2, 4, 4)
    expected = torch.nn.functional.conv2d(x, conv) * w.view(1, 3, 1, 1) + b.view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), expected)
    # Only one of the two statistics: the other is reported missing.
    report = load_weights(model, {"1.running_mean": torch.zeros(3)})
    assert "1.running_var" in report.missing


def test_rejects_non_tensor_values() -> None:
    with pytest.raises(TypeError, match=r"load_weights: `state_dict` entry '0.weight'.*ndarray"):
        load_weights(_net(0), {"0.weight": np.zeros((4, 3, 3, 3))})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="`model` must be an nn.Module"):
        load_weights({}, {})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "specific"),
    [
        (
            "mask_rcnn_r18_fpn_tiny",
            [
                "roi_heads.box_predictor.cls_score",
                "roi_heads.box_predictor.bbox_pred",
                "roi_heads.mask_head.predictor",
            ],
        ),
        ("retinanet_r18_fpn_tiny", ["head.cls_score"]),
    ],
)
def test_fine_tune_on_other_classes(name: str, specific: list[str]) -> None:
    torch.manual_seed(0)
    ckpt = zoo.build_model(name, num_classes=3).state_dict()
    torch.manual_seed(1)
    model = zoo.build_model(name, num_classes=5)
    init = _snapshot(model)

    with pytest.raises(ValueError, match="mismatched"):
        load_weights(model, ckpt, strict=True)
    report = load_weights(model, ckpt, strict=True, adapt_classes=True)
    assert report.ok
    expected = sorted(f"{layer}.{attr}" for layer in specific for attr in ("weight", "bias"))
    assert sorted(k for k, _, _ in report.reinitialized) == expected
    assert f"re-initialised for a new number of classes {len(expected)}" in report.summary()
    for k, v in model.state_dict().items():
        source = init if k in expected else ckpt
        assert torch.equal(v, source[k]), k
    if name.startswith("retinanet"):  # class-agnostic box deltas load
        assert "head.bbox_pred.weight" in report.loaded


def test_adapt_num_classes_keeps_matching_shapes() -> None:
    torch.manual_seed(0)
    model = zoo.build_model("retinanet_r18_fpn_tiny", num_classes=3)
    state = model.state_dict()
    kept, dropped = adapt_num_classes(state, model)
    assert dropped == [] and kept.keys() == state.keys()
    wrong = dict(state)
    wrong["backbone.fpn.fpn_output3.weight"] = torch.zeros(1)  # not class-specific: kept
    kept, dropped = adapt_num_classes(wrong, model)
    assert dropped == [] and "backbone.fpn.fpn_output3.weight" in kept
