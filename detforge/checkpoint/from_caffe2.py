"""Caffe2 blob names (original Detectron and the ImageNet ``R-50.pkl`` family) to detforge names.

The renaming facts follow detectron2's documented Caffe2 mapping: ``_`` separates the parts of
a blob name, ``_w``/``_b`` are a layer's weight and bias, ``_bn_s``/``_bn_b`` (or ``_gn_*``) the
scale and bias of the norm after a conv, ``res{stage}_{block}_branch{1,2a,2b,2c}`` the
shortcut and the three convs of a bottleneck block, ``res_conv1`` the stem's norm. See
:mod:`detforge.checkpoint.convert` for the conventions that differ (class order, BN folding,
stride placement, BGR input).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from detforge.checkpoint.rules import (
    ConversionReport,
    Dropped,
    Mapped,
    Transform,
    apply_rule,
    bg_first_to_last,
    drop_bg_box,
    drop_bg_mask,
    set_input,
)

__all__ = ["convert_caffe2_imagenet", "convert_detectron"]

_CAFFE = ("BGR", (103.530, 116.280, 123.675), (1.0, 1.0, 1.0))
_DETECTRON = ("BGR", (102.9801, 115.9465, 122.7717), (1.0, 1.0, 1.0))
_SFX = r"(w|b|bn_s|bn_b|gn_s|gn_b|bn_rm|bn_riv)"
_SUFFIX = {
    "w": "weight",
    "b": "bias",
    "bn_s": "norm.weight",
    "bn_b": "norm.bias",
    "gn_s": "norm.weight",
    "gn_b": "norm.bias",
    "bn_rm": "norm.running_mean",
    "bn_riv": "norm.running_var",
}
_BRANCH = {"1": "shortcut", "2a": "conv1", "2b": "conv2", "2c": "conv3"}


def _c2_backbone_rule(name: str) -> Mapped | Dropped | None:
    """Caffe2 ResNet blob -> ``backbone.bottom_up.*`` (shared by Detectron and R-50.pkl)."""
    if name.endswith("_momentum"):
        return Dropped("optimizer momentum")
    p = "backbone.bottom_up."
    if m := re.fullmatch(r"conv1_(w|b)", name):
        return Mapped(f"{p}stem.conv1.{_SUFFIX[m.group(1)]}")
    if m := re.fullmatch(rf"res_conv1_{_SFX}", name):
        return Mapped(f"{p}stem.conv1.{_SUFFIX[m.group(1)]}")
    if m := re.fullmatch(rf"res(\d)_(\d+)_branch(1|2a|2b|2c)_{_SFX}", name):
        stage, block, branch, sfx = m.groups()
        return Mapped(f"{p}res{stage}.{block}.{_BRANCH[branch]}.{_SUFFIX[sfx]}")
    return None


def convert_caffe2_imagenet(
    weights: Mapping[str, Any],
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Convert a Caffe2 ImageNet ResNet (``R-50.pkl``, ...) to ``backbone.bottom_up.*`` names.

    Args:
        weights: ``{blob name: ndarray}``.

    Returns:
        ``(state dict, report)``; the classifier (``pred_*``) is dropped.
    """

    def rule(name: str) -> Mapped | Dropped | None:
        if re.fullmatch(r"(pred|fc1000)_(w|b)", name):
            return Dropped("ImageNet classifier")
        return _c2_backbone_rule(name)

    report = ConversionReport("caffe2-imagenet")
    out = apply_rule(weights, rule, report, "convert_caffe2_imagenet")
    set_input(report, _CAFFE)
    report.notes.append(
        "BN folded into an affine map (no running stats); MSRA stride_in_1x1=True; BGR, std 1"
    )
    return out, report


def _detectron_head_rule(name: str, retina_step: int) -> Mapped | Dropped | None:
    r = "roi_heads."
    if m := re.fullmatch(rf"fpn_inner_res(\d)_\d+_sum(?:_lateral)?_{_SFX}", name):
        return Mapped(f"backbone.fpn.fpn_lateral{m.group(1)}.{_SUFFIX[m.group(2)]}")
    if m := re.fullmatch(rf"fpn_res(\d)_\d+_sum_{_SFX}", name):
        return Mapped(f"backbone.fpn.fpn_output{m.group(1)}.{_SUFFIX[m.group(2)]}")
    if m := re.fullmatch(r"fpn_([67])_(w|b)", name):
        return Mapped(f"backbone.fpn.top_block.p{m.group(1)}.{_SUFFIX[m.group(2)]}")
    rpn = {
        "conv_rpn": "conv",
        "rpn_cls_logits": "objectness_logits",
        "rpn_bbox_pred": "anchor_deltas",
    }
    if m := re.fullmatch(r"(conv_rpn|rpn_cls_logits|rpn_bbox_pred)(?:_fpn(\d))?_(w|b)", name):
        if m.group(2) not in (None, "2"):
            return Dropped("RPN blobs of FPN levels 3-6 share fpn2's weights")
        return Mapped(f"rpn.head.{rpn[m.group(1)]}.{_SUFFIX[m.group(3)]}")
    simple: dict[str, tuple[str, Transform | None]] = {
        "fc6": (r + "box_head.fc1", None),
        "fc7": (r + "box_head.fc2", None),
        "cls_score": (r + "box_predictor.cls_score", bg_first_to_last),
        "bbox_pred": (r + "box_predictor.bbox_pred", drop_bg_box),
        "conv5_mask": (r + "mask_head.deconv", None),
        "mask_fcn_logits": (r + "mask_head.predictor", drop_bg_mask),
    }
    if (m := re.fullmatch(r"(\w+?)_(w|b)", name)) and m.group(1) in simple:
        target, transform = simple[m.group(1)]
        return Mapped(f"{target}.{_SUFFIX[m.group(2)]}", transform)
    if m := re.fullmatch(rf"_\[mask\]_fcn(\d)_{_SFX}", name):
        return Mapped(f"{r}mask_head.mask_fcn{m.group(1)}.{_SUFFIX[m.group(2)]}")
    if m := re.fullmatch(rf"retnet_(cls|bbox)_conv_n(\d)_fpn(\d)_{_SFX}", name):
        kind, i, level, sfx = m.groups()
        if level != "3":
            return Dropped("RetinaNet blobs of FPN levels 4-7 share fpn3's weights")
        index = int(i) * retina_step + (1 if sfx.startswith(("gn", "bn")) else 0)
        return Mapped(f"head.{kind}_subnet.{index}.{_SUFFIX[sfx].split('.')[-1]}")
    if m := re.fullmatch(r"retnet_(cls|bbox)_pred_fpn(\d)_(w|b)", name):
        if m.group(2) != "3":
            return Dropped("RetinaNet blobs of FPN levels 4-7 share fpn3's weights")
        return Mapped(
            f"head.{m.group(1)}_{'score' if m.group(1) == 'cls' else 'pred'}.{_SUFFIX[m.group(3)]}"
        )
    return None


def convert_detectron(weights: Mapping[str, Any]) -> tuple[dict[str, Tensor], ConversionReport]:
    """Convert original Detectron (Caffe2) blobs to detforge names.

    Args:
        weights: ``{blob name: ndarray}`` (the ``"blobs"`` entry of the ``.pkl``).

    Returns:
        ``(state dict, report)``, with the background moved last (``cls_score``) or dropped
        (``bbox_pred``, mask logits); see the module docstring.
    """
    normed = any(re.fullmatch(r"retnet_\w+_conv_n\d_fpn3_(gn|bn)_s", k) for k in weights)
    step = 3 if normed else 2  # detforge subnets: [conv, (norm), ReLU] per block

    def rule(name: str) -> Mapped | Dropped | None:
        return _c2_backbone_rule(name) or _detectron_head_rule(name, step)

    report = ConversionReport("detectron")
    out = apply_rule(weights, rule, report, "convert_detectron")
    set_input(report, _DETECTRON)
    report.notes += [
        "background moved from first to last in cls_score; its bbox_pred rows and mask logit "
        "dropped",
        "BN folded into an affine map (no running stats); MSRA stride_in_1x1=True; BGR, std 1",
        "Detectron's legacy +1 box convention: boxes differ slightly from the original",
    ]
    return out, report
