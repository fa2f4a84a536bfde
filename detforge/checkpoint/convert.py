"""Convert detectron2, Detectron, torchvision and Caffe2 ImageNet weights to detforge names.

Each converter maps ``{name: Tensor | ndarray}`` to ``(state dict with detforge names,
ConversionReport)``; the report lists every converted, dropped (with the reason) and unknown
name, plus notes and the input normalisation the weights expect. :func:`main` is the command
line: ``python -m detforge.checkpoint.convert --from detectron2|detectron|torchvision|
caffe2-imagenet SRC --model NAME --num-classes K -o OUT``.

Where the conventions differ (and what the converters do about it):

* **Class order.** detforge, like detectron2, puts the background *last* in the ``K + 1``
  logits of ``box_predictor.cls_score`` and has no background rows in the class-specific
  ``bbox_pred`` (``4 K``) or mask logits (``K``). Detectron and torchvision put the background
  *first*: its row moves to the end of ``cls_score``, and its 4 ``bbox_pred`` rows and its mask
  channel are dropped. detectron2 files (``.pkl`` converted from Detectron included) are already
  in detectron2 order and are not reordered. torchvision RetinaNet's sigmoid logits still have a
  never-trained class 0, which is dropped. torchvision COCO models index classes by COCO
  category id (91 slots with 10 unused ids): they convert to ``K = 90``.
* **Anchor order.** detforge (and detectron2, Detectron) enumerate a location's anchors
  size-major (``size * R + ratio``); torchvision ratio-major. RetinaNet's ``cls_score`` and
  ``bbox_pred`` channels are permuted accordingly (``num_aspect_ratios`` ratios, 3 by default).
  torchvision also rounds its anchors to integers (sizes ``int(32 * 2 ** (1 / 3))``, ...):
  detections differ slightly.
* **Batch norm.** Caffe2 weights (Detectron, ``R-50.pkl``) store each BN as an affine map
  (``_bn_s`` scale, ``_bn_b`` bias) with the statistics folded in: only ``norm.weight``/``bias``
  are written, and ``FrozenBatchNorm2d`` then uses ``running_mean = 0`` and
  ``running_var = 1 - eps``, i.e. exactly that affine map. torchvision's v1 detection models run
  ``FrozenBatchNorm2d`` with ``eps = 0``; detforge's has ``eps = 1e-5``, so the converter rescales
  ``norm.weight`` by ``sqrt((var + 1e-5) / (var + source_eps))``, which gives the same map.
* **Stride placement.** MSRA/Caffe2 ResNets (Detectron, ``R-50.pkl``, most detectron2 R-50/R-101
  models) put a block's stride in its first 1x1 conv (``stride_in_1x1=True``, detforge's zoo
  default); torchvision's (and detectron2's X-101-32x8d) in the 3x3 conv: build the model with
  ``stride_in_1x1=False``. The weights have the same shapes either way: nothing detects a wrong
  choice, it only gives worse detections.
* **Colour and normalisation.** Caffe2-family weights expect BGR images in 0-255 minus the mean,
  std 1; torchvision weights RGB images with ImageNet mean and std (given here in 0-255 units).
  ``ConversionReport.input_format`` / ``pixel_mean`` / ``pixel_std`` say which.
* **Layout.** torchvision RetinaNet computes P6 from P5 (``p6`` takes ``C`` channels), detforge's
  zoo from res5 (2048): such weights need ``LastLevelP6P7(..., in_feature="p5")``.
  ``ConversionReport.model_kwargs`` records such architecture facts (``stride_in_1x1=False``,
  ``p6p7_in_feature="p5"``); :func:`main` builds the zoo model with them, gives it the input
  format and pixel statistics of the report, and stores all of it (with class names: COCO's
  for 80 classes or torchvision's 90 id-indexed labels, else ``--class-names``) in the
  checkpoint's metadata, so ``detforge eval``/``predict`` rebuild the same model. torchvision
  pools with ``aligned=False`` RoIAlign, and Detectron boxes use the legacy "+1" pixel
  convention; both give small, systematic box differences that no weight conversion removes.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from detforge.checkpoint.from_caffe2 import convert_caffe2_imagenet, convert_detectron
from detforge.checkpoint.from_torchvision import convert_torchvision
from detforge.checkpoint.io import save_checkpoint
from detforge.checkpoint.load import load_weights
from detforge.checkpoint.pickle_safe import load_pickle, torch_load_safe
from detforge.checkpoint.rules import ConversionReport, Dropped, Mapped, apply_rule, as_tensor
from detforge.checkpoint.spec import ModelSpec

__all__ = [
    "CONVERTERS",
    "ConversionReport",
    "convert_caffe2_imagenet",
    "convert_detectron",
    "convert_detectron2",
    "convert_torchvision",
    "class_names_for",
    "main",
    "read_weights",
]

logger = logging.getLogger(__name__)


def _detectron2_rule(name: str) -> Mapped | Dropped | None:
    if name in ("pixel_mean", "pixel_std"):
        return Dropped("input normalisation: set by the detforge model's arguments (see report)")
    if name.endswith("num_batches_tracked"):
        return Dropped("batch-norm step counter")
    if "anchor_generator." in name:
        return Dropped("anchors are computed, not stored")
    if name.startswith(("backbone.bottom_up.", "roi_heads.", "head.")):
        return Mapped(name)
    if re.match(r"(stem|res[2-5])\.", name):  # a bare backbone (ImageNetPretrained/*.pkl)
        return Mapped("backbone.bottom_up." + name)
    m = re.fullmatch(r"backbone\.((?:fpn_lateral|fpn_output)\d\..+|top_block\..+)", name)
    if m:
        return Mapped("backbone.fpn." + m.group(1))
    if name.startswith("proposal_generator.rpn_head."):
        return Mapped("rpn.head." + name[len("proposal_generator.rpn_head.") :])
    return None


def convert_detectron2(weights: Mapping[str, Any]) -> tuple[dict[str, Tensor], ConversionReport]:
    """Convert a detectron2 state dict (model-zoo ``.pkl`` or ``.pth``) to detforge names.

    Args:
        weights: ``{name: Tensor | ndarray}``, the ``"model"`` entry of the file.

    Returns:
        ``(state dict, report)``; ``report.pixel_mean/std`` come from the file when present.
    """
    report = ConversionReport("detectron2")
    out = apply_rule(weights, _detectron2_rule, report, "convert_detectron2")
    for key in ("pixel_mean", "pixel_std"):
        value = as_tensor(weights.get(key))
        if value is not None:
            setattr(report, key, tuple(float(v) for v in value.flatten()))
    report.notes.append(
        "detectron2 order already (background last); R-50/R-101 models are BGR caffe style "
        "(stride_in_1x1=True), X-101-32x8d pytorch style"
    )
    return out, report


CONVERTERS: dict[str, Callable[[Mapping[str, Any]], tuple[dict[str, Tensor], ConversionReport]]] = {
    "detectron2": convert_detectron2,
    "detectron": convert_detectron,
    "torchvision": convert_torchvision,
    "caffe2-imagenet": convert_caffe2_imagenet,
}


def read_weights(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``{name: array}`` from a ``.pkl`` (restricted unpickling) or a torch file.

    Containers are unwrapped: ``{"model": ...}`` (detectron2, torchvision references),
    ``{"blobs": ...}`` (Detectron), ``{"state_dict": ...}``; ``*_momentum`` blobs are dropped
    later by the converters.

    Args:
        path: the source file.

    Returns:
        dict: ``{name: ndarray | Tensor | other}`` (non-arrays are reported by converters).

    Raises:
        UnsafePickleError: when the file needs unrestricted pickle.
        ValueError: when the file holds no name -> array mapping.
    """
    source = os.fspath(path)
    if source.endswith(".pkl"):
        data = load_pickle(source)
    else:
        data = torch_load_safe(source, "read_weights")
    for key in ("model", "blobs", "state_dict"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
            break
    if not isinstance(data, Mapping) or not all(isinstance(k, str) for k in data):
        raise ValueError(f"read_weights: {source} does not hold a mapping of names to arrays")
    return dict(data)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from detforge.modeling.zoo import MODELS

    parser = argparse.ArgumentParser(
        prog="detforge convert",
        description="Convert foreign weights into a detforge checkpoint for a zoo model.",
    )
    parser.add_argument("--from", dest="source_format", choices=sorted(CONVERTERS), required=True)
    parser.add_argument("src", help="source weights (.pkl or .pth)")
    parser.add_argument("--model", required=True, choices=sorted(MODELS))
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("-o", "--output", required=True, help="detforge checkpoint to write")
    parser.add_argument("--strict", action="store_true", help="fail unless every tensor matches")
    parser.add_argument(
        "--class-names",
        metavar="coco|A,B,...",
        help="class names stored in the checkpoint, in label order; 'coco' for the COCO "
        "classes (the default when --num-classes is 80, or 90 for torchvision's id-indexed "
        "labels); otherwise eval/predict show class_0, class_1, ...",
    )
    return parser.parse_args(argv)


def class_names_for(spec: str | None, num_classes: int, source_format: str) -> list[str] | None:
    """The class names to store: from ``--class-names``, or COCO's when the count says so.

    torchvision's COCO detectors index labels by COCO category id (1-90 with 10 unused ids);
    converted, label ``j`` is category ``j + 1``, and unused ids are named ``unused_<id>``.
    """
    from detforge.data.catalog import COCO_CATEGORIES

    by_id = dict(COCO_CATEGORIES)
    if spec is None:
        if num_classes == 80 or (num_classes == 90 and source_format == "torchvision"):
            spec = "coco"
        else:
            return None
    if spec == "coco":
        if num_classes == 80:
            return [n for _, n in COCO_CATEGORIES]
        if num_classes == 90:
            return [by_id.get(j + 1, f"unused_{j + 1}") for j in range(90)]
        raise ValueError(f"convert: --class-names coco needs 80 or 90 classes, not {num_classes}")
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if len(names) != num_classes:
        raise ValueError(
            f"convert: --class-names gives {len(names)} names for --num-classes {num_classes}"
        )
    return names


def _buffer_list(model: torch.nn.Module, name: str) -> tuple[float, ...] | None:
    buffer = getattr(model, name, None)
    return tuple(float(v) for v in buffer.flatten()) if isinstance(buffer, Tensor) else None


def main(argv: Sequence[str] | None = None) -> int:
    """Convert ``src``, load it into the zoo model, and save a detforge checkpoint.

    Class-specific layers whose shapes differ (another ``--num-classes``) keep the model's
    initialisation; other model tensors missing from the source keep theirs too and are
    listed in the checkpoint's ``metadata["load"]["missing"]``.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        int: 0 on success, 1 when ``--strict`` and the weights do not cover the model.
    """
    args = _parse_args(argv)
    if args.num_classes <= 0:
        raise ValueError(f"convert: --num-classes must be positive, got {args.num_classes}")
    names = class_names_for(args.class_names, args.num_classes, args.source_format)
    state, report = CONVERTERS[args.source_format](read_weights(args.src))
    logger.info("%s", report.summary())
    kwargs = dict(report.model_kwargs)
    if "p6p7_in_feature" in kwargs and not args.model.startswith("retinanet"):
        kwargs.pop("p6p7_in_feature")
    fmt = report.input_format if report.input_format in ("RGB", "BGR") else None
    spec = ModelSpec(
        class_names=tuple(names or (f"class_{i}" for i in range(args.num_classes))),
        builder=args.model,
        model_kwargs=kwargs,
        input_format=fmt,  # type: ignore[arg-type]
        pixel_mean=None if report.pixel_mean is None else tuple(report.pixel_mean),
        pixel_std=None if report.pixel_std is None else tuple(report.pixel_std),
    )
    model = spec.build(f"convert: {args.model}")  # the input normalisation is built in
    loaded = load_weights(model, state, adapt_classes=True)
    if args.strict and not loaded.ok:
        logger.error("convert: --strict and the weights do not match:\n%s", loaded.summary())
        return 1
    spec = dataclasses.replace(
        spec,
        input_format=getattr(model, "input_format", None),
        pixel_mean=_buffer_list(model, "pixel_mean"),
        pixel_std=_buffer_list(model, "pixel_std"),
    )
    metadata = {
        "model_spec": spec.to_dict(),
        "class_names": list(spec.class_names),
        "source": {"format": args.source_format, "path": os.path.abspath(args.src)},
        "conversion": report.to_dict(),
        "load": {
            "missing": loaded.missing,
            "unexpected": loaded.unexpected,
            "mismatched": [[k, list(a), list(b)] for k, a, b in loaded.mismatched],
            "reinitialized": [k for k, _, _ in loaded.reinitialized],
        },
    }
    save_checkpoint(args.output, model, metadata=metadata)
    logger.info("convert: wrote %s", args.output)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
