"""torchvision state dicts (ImageNet ResNets, ``*_resnet50_fpn`` detectors) to detforge names.

ResNet: ``conv1 -> stem.conv1``, ``bn1 -> stem.conv1.norm``, ``layer{k}.{i}.conv{j}`` ->
``res{k+1}.{i}.conv{j}``, ``bn{j} -> conv{j}.norm``, ``downsample.0/1 -> shortcut(.norm)``.
Detectors: ``backbone.body`` is the ResNet, ``backbone.fpn.inner_blocks.N`` /
``layer_blocks.N`` the FPN's lateral / output convs of the N-th input level,
``rpn.head.{conv,cls_logits,bbox_pred}``, ``roi_heads.box_head.fc6/fc7``, the
``roi_heads.mask_head`` convs and ``roi_heads.mask_predictor.{conv5_mask,mask_fcn_logits}``,
RetinaNet's ``head.classification_head`` / ``regression_head``; both the pre-0.13 names
(``conv.0``, ``mask_fcn1``) and the ``Conv2dNormActivation`` ones (``conv.0.0``, ``0.0``) are
read. See :mod:`detforge.checkpoint.convert` for the conventions that differ.
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
    anchors_ratio_major_to_size_major,
    apply_rule,
    as_tensor,
    bg_first_to_last,
    drop_bg_box,
    drop_bg_mask,
    set_input,
)

__all__ = ["convert_torchvision"]

_BN_EPS = 1e-5  # eps of detforge's FrozenBatchNorm2d
_TORCHVISION = ("RGB", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))


def _tv_resnet_name(name: str) -> str | None:
    """torchvision ResNet name (no prefix) -> detforge ResNet name, or None."""
    if name == "conv1.weight":
        return "stem.conv1.weight"
    if m := re.fullmatch(r"bn1\.(\w+)", name):
        return f"stem.conv1.norm.{m.group(1)}"
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.conv(\d)\.weight", name):
        return f"res{int(m.group(1)) + 1}.{m.group(2)}.conv{m.group(3)}.weight"
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.bn(\d)\.(\w+)", name):
        return f"res{int(m.group(1)) + 1}.{m.group(2)}.conv{m.group(3)}.norm.{m.group(4)}"
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])\.(\w+)", name):
        norm = ".norm" if m.group(3) == "1" else ""
        return f"res{int(m.group(1)) + 1}.{m.group(2)}.shortcut{norm}.{m.group(4)}"
    return None


def _tv_detection_rule(name: str, ctx: dict[str, int]) -> Mapped | Dropped | None:
    if m := re.fullmatch(r"backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(?:([01])\.)?(\w+)", name):
        kind = "fpn_lateral" if m.group(1) == "inner" else "fpn_output"
        norm = ".norm" if m.group(3) == "1" else ""
        return Mapped(
            f"backbone.fpn.{kind}{int(m.group(2)) + ctx['first_level']}{norm}.{m.group(4)}"
        )
    if m := re.fullmatch(r"backbone\.fpn\.extra_blocks\.(p6|p7)\.(\w+)", name):
        return Mapped(f"backbone.fpn.top_block.{m.group(1)}.{m.group(2)}")
    if m := re.fullmatch(r"rpn\.head\.(conv(?:\.0\.0)?|cls_logits|bbox_pred)\.(\w+)", name):
        new = {"cls_logits": "objectness_logits", "bbox_pred": "anchor_deltas"}
        return Mapped(f"rpn.head.{new.get(m.group(1), 'conv')}.{m.group(2)}")
    r = "roi_heads."
    fixed: dict[str, tuple[str, Transform | None]] = {
        "roi_heads.box_head.fc6": (r + "box_head.fc1", None),
        "roi_heads.box_head.fc7": (r + "box_head.fc2", None),
        "roi_heads.box_predictor.cls_score": (r + "box_predictor.cls_score", bg_first_to_last),
        "roi_heads.box_predictor.bbox_pred": (r + "box_predictor.bbox_pred", drop_bg_box),
        "roi_heads.mask_predictor.conv5_mask": (r + "mask_head.deconv", None),
        "roi_heads.mask_predictor.mask_fcn_logits": (r + "mask_head.predictor", drop_bg_mask),
    }
    layer, _, attr = name.rpartition(".")
    if layer in fixed:
        return Mapped(f"{fixed[layer][0]}.{attr}", fixed[layer][1])
    if m := re.fullmatch(r"roi_heads\.mask_head\.mask_fcn(\d)\.(\w+)", name):
        return Mapped(f"{r}mask_head.mask_fcn{m.group(1)}.{m.group(2)}")
    if m := re.fullmatch(r"roi_heads\.mask_head\.(\d+)\.([01])\.(\w+)", name):
        norm = ".norm" if m.group(2) == "1" else ""
        return Mapped(f"{r}mask_head.mask_fcn{int(m.group(1)) + 1}{norm}.{m.group(3)}")
    return _tv_retina_rule(name, ctx)


def _tv_retina_rule(name: str, ctx: dict[str, int]) -> Mapped | Dropped | None:
    subnet = {"classification": "cls_subnet", "regression": "bbox_subnet"}
    if m := re.fullmatch(
        r"head\.(classification|regression)_head\.conv\.(\d+)\.(?:([01])\.)?(\w+)", name
    ):
        kind, i, sub, attr = m.groups()
        index = int(i) if sub is None else int(i) * ctx["retina_step"] + int(sub)
        return Mapped(f"head.{subnet[kind]}.{index}.{attr}")
    ratios, num_anchors = ctx["num_ratios"], ctx["num_anchors"]
    if m := re.fullmatch(r"head\.classification_head\.cls_logits\.(\w+)", name):

        def cls(t: Tensor) -> Tensor:
            per_anchor = t.shape[0] // num_anchors  # K + 1 with the unused class 0
            t = t.reshape(num_anchors, per_anchor, *t.shape[1:])[:, 1:].flatten(0, 1)
            return anchors_ratio_major_to_size_major(t, per_anchor - 1, ratios)

        return Mapped(f"head.cls_score.{m.group(1)}", cls)
    if m := re.fullmatch(r"head\.regression_head\.bbox_reg\.(\w+)", name):
        return Mapped(
            f"head.bbox_pred.{m.group(1)}",
            lambda t: anchors_ratio_major_to_size_major(t, 4, ratios),
        )
    return None


def _tv_context(weights: Mapping[str, Any], num_aspect_ratios: int) -> dict[str, int]:
    inner = {
        m.group(1) for k in weights if (m := re.match(r"backbone\.fpn\.inner_blocks\.(\d+)", k))
    }
    normed = any(re.match(r"head\.classification_head\.conv\.\d+\.1\.", k) for k in weights)
    reg = as_tensor(weights.get("head.regression_head.bbox_reg.bias"))
    return {
        "first_level": 6 - len(inner),  # 4 inputs: res2..res5 -> P2..; 3: res3..res5 -> P3..
        "retina_step": 3 if normed else 2,
        "num_ratios": num_aspect_ratios,
        "num_anchors": reg.shape[0] // 4 if reg is not None else 0,
    }


def _fold_bn_eps(out: dict[str, Tensor], source_eps: float) -> None:
    """Rescale FrozenBN weights so that eps ``_BN_EPS`` gives the map that ``source_eps`` gave."""
    for key in [
        k for k in out if k.startswith("backbone.bottom_up.") and k.endswith(".norm.weight")
    ]:
        var = out.get(key[: -len("weight")] + "running_var")
        if var is not None:
            ratio = ((var.double() + _BN_EPS) / (var.double() + source_eps)).sqrt()
            out[key] = (out[key].double() * ratio).to(out[key].dtype)


def convert_torchvision(
    weights: Mapping[str, Any],
    *,
    num_aspect_ratios: int = 3,
    source_bn_eps: float | None = None,
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Convert a torchvision ResNet/ResNeXt or ``*_resnet50_fpn`` detection state dict.

    Args:
        weights: ``{name: Tensor}``; detection state dicts are recognised by ``backbone.body.``.
        num_aspect_ratios: aspect ratios per location of a RetinaNet's anchors (anchor order).
        source_bn_eps: eps of the source's frozen batch norms; None means 0.0 for the v1
            detection models (``fc6`` box head), else 1e-5 (no change).

    Returns:
        ``(state dict, report)``: backbone under ``backbone.bottom_up.``, heads reordered to
        background last and anchors to size-major (see the module docstring).
    """
    fn = "convert_torchvision"
    if not isinstance(num_aspect_ratios, int) or num_aspect_ratios <= 0:
        raise ValueError(
            f"{fn}: `num_aspect_ratios` must be a positive int, got {num_aspect_ratios!r}"
        )
    heads = ("backbone.", "rpn.", "roi_heads.", "head.")
    detection = any(str(k).startswith(heads) for k in weights)
    ctx = _tv_context(weights, num_aspect_ratios)

    def rule(name: str) -> Mapped | Dropped | None:
        if name.endswith("num_batches_tracked"):
            return Dropped("batch-norm step counter")
        if not detection:
            if name.startswith("fc."):
                return Dropped("ImageNet classifier")
            new = _tv_resnet_name(name)
        elif name.startswith("backbone.body."):
            new = _tv_resnet_name(name[len("backbone.body.") :])
        else:
            return _tv_detection_rule(name, ctx)
        return Mapped("backbone.bottom_up." + new) if new else None

    report = ConversionReport("torchvision")
    out = apply_rule(weights, rule, report, fn)
    set_input(report, _TORCHVISION)
    if source_bn_eps is None:
        v1 = detection and any(str(k).startswith("roi_heads.box_head.fc6") for k in weights)
        source_bn_eps = 0.0 if v1 else _BN_EPS
    if source_bn_eps != _BN_EPS:
        _fold_bn_eps(out, source_bn_eps)
        report.notes.append(f"FrozenBN eps {source_bn_eps} folded into norm.weight (eps 1e-5)")
    report.notes.append("pytorch style: build the ResNet with stride_in_1x1=False; RGB input")
    report.model_kwargs["stride_in_1x1"] = False
    if detection:
        report.notes.append("background moved last / dropped; COCO models have K = 90 (ids - 1)")
    p6 = out.get("backbone.fpn.top_block.p6.weight")
    if p6 is not None and p6.shape[0] == p6.shape[1]:
        report.notes.append("P6 is computed from P5: use LastLevelP6P7(..., in_feature='p5')")
        report.model_kwargs["p6p7_in_feature"] = "p5"
    return out, report
