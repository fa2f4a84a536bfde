"""Plain builder functions for every model, and the one explicit name -> builder table.

Each builder returns a ready ``nn.Module`` from keyword arguments: no config is needed. A zoo
model is defined here and only here: its config in ``configs/`` calls its builder lazily, and
edits of the config (``model.freeze_at=3``, ``model.fc_dim=512``) are keyword arguments of it.
Defaults are detectron2's for the same model (so that its checkpoints, once converted, load and
reproduce its detections):

* ResNet trunks in MSRA/caffe style (``stride_in_1x1=True``) with FrozenBN and the stem plus
  ``res2`` frozen, pixel mean ``(103.530, 116.280, 123.675)`` and std 1 on BGR images, as the
  ImageNet ``R-50.pkl`` / ``R-101.pkl`` weights of the Detectron family expect;
* X-101-32x8d in pytorch style with std ``(57.375, 57.120, 58.395)``, as its Facebook weights;
* Faster/Mask R-CNN: RPN anchors 32-512 on P2-P6, RoIAlignV2 7x7 box pooler with a 2-FC head of
  1024, 14x14 mask pooler with 4 convs; RetinaNet: 3 scales x 3 ratios on P3-P7.

The ``*_tiny`` builders are small models for tests and CPU training from scratch: ResNet-18 with
GroupNorm (trainable from scratch, unlike FrozenBN), narrow FPN and heads.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

from torch import nn

from detforge.layers.norms import NormKind
from detforge.modeling.anchors import AnchorGenerator
from detforge.modeling.backbones.resnet import ResNet
from detforge.modeling.box_coder import BoxCoder
from detforge.modeling.dense_heads.retina_head import RetinaNetHead
from detforge.modeling.dense_heads.rpn import RPN, RPNHead
from detforge.modeling.detectors.generalized_rcnn import GeneralizedRCNN
from detforge.modeling.detectors.retinanet import RetinaNet
from detforge.modeling.matcher import Matcher
from detforge.modeling.necks.fpn import FPN, BackboneWithFPN, LastLevelMaxPool, LastLevelP6P7
from detforge.modeling.roi_heads.box_head import FastRCNNConvFCHead
from detforge.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detforge.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead
from detforge.modeling.roi_heads.roi_heads import StandardROIHeads
from detforge.ops.poolers import MultiLevelRoIPooler

__all__ = [
    "MODELS",
    "build_model",
    "faster_rcnn",
    "faster_rcnn_r18_fpn_tiny",
    "faster_rcnn_r50_fpn",
    "faster_rcnn_r101_fpn",
    "faster_rcnn_x101_32x8d_fpn",
    "mask_rcnn_r18_fpn_tiny",
    "mask_rcnn_r50_fpn",
    "mask_rcnn_r101_fpn",
    "mask_rcnn_x101_32x8d_fpn",
    "resnet_fpn_backbone",
    "retinanet",
    "retinanet_r18_fpn_tiny",
    "retinanet_r50_fpn",
    "retinanet_r101_fpn",
    "retinanet_x101_32x8d_fpn",
]

CAFFE_MEAN = (103.530, 116.280, 123.675)  # BGR
CAFFE_STD = (1.0, 1.0, 1.0)
X101_STD = (57.375, 57.120, 58.395)
_STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}


def resnet_fpn_backbone(
    *,
    depth: Literal[18, 34, 50, 101, 152] = 50,
    groups: int = 1,
    width_per_group: int = 64,
    norm: NormKind = "FrozenBN",
    freeze_at: int = 2,
    stride_in_1x1: bool = True,
    out_channels: int = 256,
    fpn_norm: NormKind = "",
    top_block: Literal["maxpool", "p6p7"] = "maxpool",
    in_features: tuple[str, ...] = ("res2", "res3", "res4", "res5"),
    p6p7_in_feature: Literal["res5", "p5"] = "res5",
) -> BackboneWithFPN:
    """A ResNet/ResNeXt trunk with an FPN: P2-P6 by max-pool (R-CNN) or P3-P7 (RetinaNet).

    ``p6p7_in_feature``: P6 of ``top_block="p6p7"`` is computed from ``res5`` (RetinaNet paper,
    detectron2) or from ``p5`` (torchvision's RetinaNet).
    """
    trunk = ResNet(
        depth=depth,
        out_features=in_features,
        norm=norm,
        freeze_at=freeze_at,
        stride_in_1x1=stride_in_1x1,
        groups=groups,
        width_per_group=width_per_group,
    )
    shapes = trunk.output_shape()
    block = (
        LastLevelMaxPool()
        if top_block == "maxpool"
        else LastLevelP6P7(
            shapes["res5"].channels if p6p7_in_feature == "res5" else out_channels,
            out_channels,
            in_feature=p6p7_in_feature,
        )
    )
    fpn = FPN(shapes, in_features, out_channels, norm=fpn_norm, top_block=block)
    return BackboneWithFPN(trunk, fpn)


def faster_rcnn(
    *,
    num_classes: int,
    backbone: BackboneWithFPN,
    mask: bool = False,
    fc_dim: int = 1024,
    mask_conv_dim: int = 256,
    head_norm: NormKind = "",
    rpn_batch_size_per_image: int = 256,
    roi_batch_size_per_image: int = 512,
    pixel_mean: tuple[float, ...] = CAFFE_MEAN,
    pixel_std: tuple[float, ...] = CAFFE_STD,
    input_format: Literal["BGR", "RGB"] = "BGR",
) -> GeneralizedRCNN:
    """Faster R-CNN (``mask=False``) or Mask R-CNN (``mask=True``) on an FPN backbone."""
    shapes = backbone.output_shape()
    channels = next(iter(shapes.values())).channels
    rpn_levels = ("p2", "p3", "p4", "p5", "p6")
    anchors = AnchorGenerator(
        [[32], [64], [128], [256], [512]], [[0.5, 1.0, 2.0]], [_STRIDES[f] for f in rpn_levels]
    )
    rpn = RPN(
        in_features=rpn_levels,
        head=RPNHead(channels, anchors.num_anchors_per_location()[0]),
        anchor_generator=anchors,
        anchor_matcher=Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
        box_coder=BoxCoder((1.0, 1.0, 1.0, 1.0)),
        batch_size_per_image=rpn_batch_size_per_image,
    )
    roi_levels = ("p2", "p3", "p4", "p5")
    scales = [1.0 / _STRIDES[f] for f in roi_levels]
    box_head = FastRCNNConvFCHead(in_channels=channels, fc_dim=fc_dim, norm=head_norm)
    mask_kwargs = {}
    if mask:
        mask_kwargs = {
            "mask_in_features": roi_levels,
            "mask_pooler": MultiLevelRoIPooler(14, scales, pooler_type="roi_align_v2"),
            "mask_head": MaskRCNNConvUpsampleHead(
                in_channels=channels,
                num_classes=num_classes,
                conv_dim=mask_conv_dim,
                norm=head_norm,
            ),
        }
    roi_heads = StandardROIHeads(
        num_classes=num_classes,
        box_in_features=roi_levels,
        box_pooler=MultiLevelRoIPooler(7, scales, pooler_type="roi_align_v2"),
        box_head=box_head,
        box_predictor=FastRCNNOutputLayers(fc_dim, num_classes=num_classes),
        proposal_matcher=Matcher([0.5], [0, 1]),
        batch_size_per_image=roi_batch_size_per_image,
        **mask_kwargs,  # type: ignore[arg-type]
    )
    return GeneralizedRCNN(
        backbone=backbone,
        num_classes=num_classes,
        rpn=rpn,
        roi_heads=roi_heads,
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
        input_format=input_format,
        size_divisibility=backbone.size_divisibility,
    )


def retinanet(
    *,
    num_classes: int,
    backbone: BackboneWithFPN,
    head_norm: NormKind = "",
    pixel_mean: tuple[float, ...] = CAFFE_MEAN,
    pixel_std: tuple[float, ...] = CAFFE_STD,
    input_format: Literal["BGR", "RGB"] = "BGR",
) -> RetinaNet:
    """RetinaNet on a P3-P7 FPN backbone: 3 octave scales x 3 aspect ratios per level."""
    levels = ("p3", "p4", "p5", "p6", "p7")
    sizes = [[x * 2 ** (i / 3) for i in range(3)] for x in (32, 64, 128, 256, 512)]
    anchors = AnchorGenerator(sizes, [[0.5, 1.0, 2.0]], [_STRIDES[f] for f in levels])
    channels = backbone.output_shape()["p3"].channels
    head = RetinaNetHead(
        in_channels=channels,
        num_anchors=anchors.num_anchors_per_location()[0],
        num_classes=num_classes,
        norm=head_norm,
    )
    return RetinaNet(
        backbone=backbone,
        head=head,
        anchor_generator=anchors,
        box_coder=BoxCoder((1.0, 1.0, 1.0, 1.0)),
        anchor_matcher=Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True),
        num_classes=num_classes,
        in_features=levels,
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
        input_format=input_format,
        size_divisibility=backbone.size_divisibility,
    )


def _trunk(name: str) -> dict:
    return {
        "r50": {"depth": 50},
        "r101": {"depth": 101},
        "x101_32x8d": {"depth": 101, "groups": 32, "width_per_group": 8, "stride_in_1x1": False},
    }[name]


def _std(name: str) -> tuple[float, ...]:
    return X101_STD if name.startswith("x101") else CAFFE_STD


_BACKBONE_KEYS = frozenset(inspect.signature(resnet_fpn_backbone).parameters)


def _split(
    kwargs: dict[str, Any],
    backbone: dict[str, Any],
    detector: dict[str, Any],
    build: Callable[..., nn.Module] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(backbone keywords, detector keywords)``: the defaults updated by ``kwargs``, each
    keyword going to :func:`resnet_fpn_backbone` when it names one of its arguments.

    Raises:
        TypeError: a keyword that neither the backbone nor ``build`` takes (with close names).
    """
    import difflib

    if build is not None:
        known = _BACKBONE_KEYS | set(inspect.signature(build).parameters) - {"backbone"}
        for key in kwargs:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=2)
                hint = f"; did you mean {' or '.join(close)}?" if close else ""
                raise TypeError(f"unknown model keyword {key!r}{hint}")
    given_backbone = {k: v for k, v in kwargs.items() if k in _BACKBONE_KEYS}
    given_detector = {k: v for k, v in kwargs.items() if k not in _BACKBONE_KEYS}
    return backbone | given_backbone, detector | given_detector


def _rcnn(trunk: str, mask: bool, num_classes: int, kwargs: dict[str, Any]) -> GeneralizedRCNN:
    backbone, detector = _split(kwargs, _trunk(trunk), {"pixel_std": _std(trunk)}, faster_rcnn)
    return faster_rcnn(
        num_classes=num_classes, backbone=resnet_fpn_backbone(**backbone), mask=mask, **detector
    )


def _retina(trunk: str, num_classes: int, kwargs: dict[str, Any]) -> RetinaNet:
    p3_p7 = {"top_block": "p6p7", "in_features": ("res3", "res4", "res5")}
    defaults = {"pixel_std": _std(trunk)}
    backbone, detector = _split(kwargs, _trunk(trunk) | p3_p7, defaults, retinanet)
    return retinanet(num_classes=num_classes, backbone=resnet_fpn_backbone(**backbone), **detector)


# The zoo: one function per model, the one source of truth for it (configs/ call these). Keyword
# arguments naming an argument of `resnet_fpn_backbone` (depth, norm, freeze_at, stride_in_1x1,
# ...) go to the backbone; the others (fc_dim, pixel_mean, pixel_std, input_format, ...) to
# `faster_rcnn` / `retinanet`.


def faster_rcnn_r50_fpn(num_classes: int = 80, **kwargs: Any) -> GeneralizedRCNN:
    """Faster R-CNN, R50-FPN, detectron2 defaults (keywords: see the zoo comment above)."""
    return _rcnn("r50", False, num_classes, kwargs)


def faster_rcnn_r101_fpn(num_classes: int = 80, **kwargs: Any) -> GeneralizedRCNN:
    """Faster R-CNN, R101-FPN, detectron2 defaults."""
    return _rcnn("r101", False, num_classes, kwargs)


def faster_rcnn_x101_32x8d_fpn(num_classes: int = 80, **kwargs: Any) -> GeneralizedRCNN:
    """Faster R-CNN, X101-32x8d-FPN (pytorch-style ResNeXt, its std), detectron2 defaults."""
    return _rcnn("x101_32x8d", False, num_classes, kwargs)


def mask_rcnn_r50_fpn(num_classes: int = 80, **kwargs: Any) -> GeneralizedRCNN:
    """Mask R-CNN, R50-FPN, detectron2 defaults."""
    return _rcnn("r50", True, num_classes, kwargs)


def mask_rcnn_r101_fpn(num_classes: int = 80, **kwargs: Any) -> GeneralizedRCNN:
    """Mask R-CNN, R101-FPN, detectron2 defaults."""
    return _rcnn("r101", True, num_classes, kwargs)


def mask_rcnn_x101_32x8d_fpn(num_classes: int = 80, **kwargs: Any) -> GeneralizedRCNN:
    """Mask R-CNN, X101-32x8d-FPN, detectron2 defaults."""
    return _rcnn("x101_32x8d", True, num_classes, kwargs)


def retinanet_r50_fpn(num_classes: int = 80, **kwargs: Any) -> RetinaNet:
    """RetinaNet, R50-FPN (P3-P7, P6 from res5), detectron2 defaults."""
    return _retina("r50", num_classes, kwargs)


def retinanet_r101_fpn(num_classes: int = 80, **kwargs: Any) -> RetinaNet:
    """RetinaNet, R101-FPN, detectron2 defaults."""
    return _retina("r101", num_classes, kwargs)


def retinanet_x101_32x8d_fpn(num_classes: int = 80, **kwargs: Any) -> RetinaNet:
    """RetinaNet, X101-32x8d-FPN, detectron2 defaults."""
    return _retina("x101_32x8d", num_classes, kwargs)


#: The tiny models: ResNet-18 with GroupNorm (trainable from scratch, unlike FrozenBN), a
#: 64-channel FPN, GroupNorm heads, RGB input with ImageNet statistics.
_TINY_BACKBONE = {
    "depth": 18,
    "norm": "GN",
    "freeze_at": 0,
    "stride_in_1x1": False,
    "out_channels": 64,
    "fpn_norm": "GN",
}
_TINY_INPUT = {
    "pixel_mean": (123.675, 116.28, 103.53),
    "pixel_std": (58.395, 57.12, 57.375),
    "input_format": "RGB",
    "head_norm": "GN",
}


def faster_rcnn_r18_fpn_tiny(num_classes: int = 3, **kwargs: Any) -> GeneralizedRCNN:
    """A small Faster R-CNN (ResNet-18 GN, 64-channel FPN, 256-wide head) for CPU training."""
    head = {
        "fc_dim": 256,
        "mask_conv_dim": 64,
        "rpn_batch_size_per_image": 128,
        "roi_batch_size_per_image": 128,
    }
    backbone, detector = _split(kwargs, _TINY_BACKBONE, _TINY_INPUT | head, faster_rcnn)
    return faster_rcnn(
        num_classes=num_classes, backbone=resnet_fpn_backbone(**backbone), **detector
    )


def mask_rcnn_r18_fpn_tiny(num_classes: int = 3, **kwargs: Any) -> GeneralizedRCNN:
    """A small Mask R-CNN for CPU (see :func:`faster_rcnn_r18_fpn_tiny`)."""
    return faster_rcnn_r18_fpn_tiny(num_classes, mask=True, **kwargs)


def retinanet_r18_fpn_tiny(num_classes: int = 3, **kwargs: Any) -> RetinaNet:
    """A small RetinaNet (ResNet-18 GN, 64-channel P3-P7 FPN, GN heads) for CPU training."""
    p3_p7 = {"top_block": "p6p7", "in_features": ("res3", "res4", "res5")}
    backbone, detector = _split(kwargs, _TINY_BACKBONE | p3_p7, _TINY_INPUT, retinanet)
    return retinanet(num_classes=num_classes, backbone=resnet_fpn_backbone(**backbone), **detector)


MODELS: dict[str, Callable[..., nn.Module]] = {
    f.__name__: f
    for f in (
        faster_rcnn_r50_fpn,
        faster_rcnn_r101_fpn,
        faster_rcnn_x101_32x8d_fpn,
        mask_rcnn_r50_fpn,
        mask_rcnn_r101_fpn,
        mask_rcnn_x101_32x8d_fpn,
        retinanet_r50_fpn,
        retinanet_r101_fpn,
        retinanet_x101_32x8d_fpn,
        faster_rcnn_r18_fpn_tiny,
        mask_rcnn_r18_fpn_tiny,
        retinanet_r18_fpn_tiny,
    )
}


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build a model by name (for command lines); raises ``KeyError`` listing close names."""
    if name not in MODELS:
        import difflib

        close = difflib.get_close_matches(name, MODELS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint} Known: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)
