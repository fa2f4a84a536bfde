"""Conversions between detforge records / ``Instances`` and COCO's JSON formats.

* :func:`records_to_coco` builds a COCO ground-truth dict in memory from dataset records (for
  data that has no COCO file: VOC, the synthetic generator, a custom loader);
* :func:`instances_to_coco_results` turns one image's detections into COCO result entries.

Both undo the conversions the loaders made (see ``detforge/data/__init__.py``): xyxy boxes go back
to COCO's ``[x, y, width, height]``, contiguous labels back to the dataset's category ids, and
keypoints back to COCO's integer pixel indices (the loader added 0.5 to ``x`` and ``y`` of every
labelled point, see ``structures/keypoints.py``; it is subtracted here).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from detforge.data.catalog import DatasetMetadata
from detforge.structures.boxes import box_convert
from detforge.structures.instances import Instances
from detforge.structures.masks import polygons_to_bitmask, rle_area, rle_encode

__all__ = ["contiguous_to_dataset_ids", "instances_to_coco_results", "records_to_coco"]


def contiguous_to_dataset_ids(
    dataset_id_to_contiguous: Mapping[int, int] | None, num_classes: int, fn: str
) -> dict[int, int]:
    """Invert a ``dataset id -> contiguous label`` mapping.

    Args:
        dataset_id_to_contiguous: the mapping; ``None`` means the identity (dataset id = label).
        num_classes: K; the mapping must be a bijection onto ``0 .. K-1``.
        fn: caller name for error messages.

    Returns:
        ``contiguous label -> dataset id`` for the K labels.
    """
    if dataset_id_to_contiguous is None:
        return {k: k for k in range(num_classes)}
    inverse = {int(label): int(cid) for cid, label in dataset_id_to_contiguous.items()}
    if len(inverse) != len(dataset_id_to_contiguous) or set(inverse) != set(range(num_classes)):
        raise ValueError(
            f"{fn}: `dataset_id_to_contiguous` must map the dataset ids one-to-one onto the "
            f"labels 0..{num_classes - 1}, got {dict(dataset_id_to_contiguous)}"
        )
    return inverse


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _mask_area(segm: Any, height: int, width: int) -> float:
    if isinstance(segm, dict):
        return float(rle_area([segm])[0])
    return float(polygons_to_bitmask(segm, height, width).sum())


def _coco_keypoints(kps: Any, where: str) -> tuple[list[float], int]:
    """Record keypoints (continuous) back to COCO's integer-index convention."""
    if not isinstance(kps, (list, tuple)) or len(kps) % 3 != 0:
        raise ValueError(f"{where} field `keypoints`: must be a flat [x, y, v] * P list")
    out: list[float] = []
    labelled = 0
    for x, y, v in zip(kps[0::3], kps[1::3], kps[2::3], strict=True):
        if v > 0:
            out += [float(x) - 0.5, float(y) - 0.5, int(v)]
            labelled += 1
        else:
            out += [float(x), float(y), 0]
    return out, labelled


def _annotation(
    ann: Any, ann_id: int, image: dict[str, Any], to_dataset: dict[int, int], where: str
) -> dict[str, Any]:
    """One COCO ground-truth annotation from one record annotation."""
    if not isinstance(ann, dict):
        raise ValueError(f"{where}: must be a dict, got {type(ann).__name__}")
    box = ann.get("bbox")
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(map(_is_number, box)):
        raise ValueError(f"{where} field `bbox`: must be 4 finite numbers (xyxy), got {box!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    label = ann.get("category_id")
    if label not in to_dataset:
        raise ValueError(
            f"{where} field `category_id`: label {label!r} is not in [0, {len(to_dataset)})"
        )
    out: dict[str, Any] = {
        "id": ann_id,
        "image_id": image["id"],
        "category_id": to_dataset[label],
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "iscrowd": int(ann.get("iscrowd", 0)),
    }
    if "segmentation" in ann:
        out["segmentation"] = ann["segmentation"]
    if _is_number(ann.get("area")):
        out["area"] = float(ann["area"])
    elif "segmentation" in ann:
        try:
            out["area"] = _mask_area(ann["segmentation"], image["height"], image["width"])
        except ValueError as exc:
            raise ValueError(f"{where} field `segmentation`: {exc}") from exc
    else:
        out["area"] = (x2 - x1) * (y2 - y1)
    if "keypoints" in ann:
        out["keypoints"], out["num_keypoints"] = _coco_keypoints(ann["keypoints"], where)
    return out


def _categories(metadata: DatasetMetadata, to_dataset: dict[int, int]) -> list[dict[str, Any]]:
    cats = []
    for label, name in enumerate(metadata.class_names):
        cat: dict[str, Any] = {"id": to_dataset[label], "name": name}
        if metadata.keypoint_names:
            cat["keypoints"] = list(metadata.keypoint_names)
            cat["skeleton"] = [[a + 1, b + 1] for a, b in metadata.skeleton]
        cats.append(cat)
    return cats


def records_to_coco(records: Sequence[dict[str, Any]], metadata: DatasetMetadata) -> dict[str, Any]:
    """A COCO ground-truth dict (as in an ``instances_*.json``) built from dataset records.

    Category ids are the dataset's ids from ``metadata.dataset_id_to_contiguous`` (the identity,
    id = contiguous label, when it is ``None``); image ids are the records' ``image_id``
    (ints or strings; pycocotools accepts both). Annotation ids are renumbered ``1 .. N``
    (pycocotools needs positive ids). ``iscrowd`` is kept; ``area`` is the record's when it has
    one (the number the COCO file stated), else the mask area of ``segmentation``, else the box
    area. Polygons and RLE segmentations are kept as they are. VOC's ``difficult`` flag has no
    COCO equivalent (pycocotools overwrites ``ignore`` with ``iscrowd``) and is dropped.

    Args:
        records: dataset records (see ``detforge/data/__init__.py``).
        metadata: gives the class names (and keypoint names, written into the categories).

    Returns:
        dict with ``images``, ``annotations`` and ``categories``, ready for pycocotools.
    """
    fn = "records_to_coco"
    to_dataset = contiguous_to_dataset_ids(
        metadata.dataset_id_to_contiguous, len(metadata.class_names), fn
    )
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    seen: set[Any] = set()
    for r, record in enumerate(records):
        missing = [k for k in ("image_id", "height", "width") if k not in record]
        if missing:
            raise ValueError(f"{fn}: record {r} ({record.get('file_name')}) has no {missing}")
        iid = record["image_id"]
        if iid in seen:
            raise ValueError(f"{fn}: image_id {iid!r} appears in more than one record")
        seen.add(iid)
        image = {
            "id": iid,
            "file_name": str(record.get("file_name", "")),
            "height": int(record["height"]),
            "width": int(record["width"]),
        }
        images.append(image)
        for k, ann in enumerate(record.get("annotations", [])):
            where = f"{fn}: record {iid!r} ({image['file_name']}) annotation {k}"
            annotations.append(_annotation(ann, len(annotations) + 1, image, to_dataset, where))
    return {
        "info": {"description": "built by detforge.evaluation.records_to_coco"},
        "images": images,
        "annotations": annotations,
        "categories": _categories(metadata, to_dataset),
    }


def instances_to_coco_results(
    instances: Instances, image_id: Any, contiguous_to_dataset: Mapping[int, int]
) -> list[dict[str, Any]]:
    """COCO result entries (``image_id, category_id, bbox, score`` and, when the instances
    have them, ``segmentation`` and ``keypoints``) for one image's detections.

    Args:
        instances: detections with ``boxes`` (Tensor[N, 4], xyxy), ``scores`` (Tensor[N]),
            ``labels`` (Tensor[N], contiguous), optional ``masks`` (Tensor[N, H, W], bool or
            uint8) and ``keypoints`` (Tensor[N, P, 3], ``(x, y, score)``, continuous coords).
        image_id: the image's id in the ground truth.
        contiguous_to_dataset: contiguous label -> dataset category id.

    Returns:
        N dicts; ``bbox`` is xywh, ``segmentation`` a compressed RLE with ``str`` counts,
        ``keypoints`` a flat ``[x, y, score] * P`` list in COCO's integer-index convention
        (``x - 0.5, y - 0.5``).
    """
    fn = "instances_to_coco_results"
    n = len(instances)
    if n == 0:
        return []
    if instances.scores is None or instances.labels is None:
        raise ValueError(f"{fn}: image {image_id!r}: detections need `scores` and `labels`")
    inst = instances.to("cpu")
    boxes = box_convert(inst.boxes.detach().double(), "xyxy", "xywh").tolist()
    scores = inst.scores.detach().double().tolist()  # type: ignore[union-attr]
    labels = inst.labels.tolist()  # type: ignore[union-attr]
    rles = None
    if inst.masks is not None:
        masks = inst.masks
        if not isinstance(masks, torch.Tensor) or masks.is_floating_point():
            kind = type(masks).__name__ if not isinstance(masks, torch.Tensor) else masks.dtype
            raise TypeError(f"{fn}: image {image_id!r}: `masks` must be bool [N, H, W], got {kind}")
        rles = rle_encode(masks)
    kps = None
    if inst.keypoints is not None:
        k = inst.keypoints.detach().double().clone()
        k[..., :2] -= 0.5
        kps = k.flatten(1).tolist()
    results = []
    for i in range(n):
        if labels[i] not in contiguous_to_dataset:
            raise ValueError(f"{fn}: image {image_id!r}: label {labels[i]} has no category id")
        res: dict[str, Any] = {
            "image_id": image_id,
            "category_id": contiguous_to_dataset[labels[i]],
            "bbox": boxes[i],
            "score": scores[i],
        }
        if rles is not None:
            res["segmentation"] = rles[i]
        if kps is not None:
            res["keypoints"] = kps[i]
        results.append(res)
    return results
