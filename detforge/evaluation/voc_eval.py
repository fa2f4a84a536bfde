"""Pascal VOC detection AP, computed as the official VOCdevkit does.

Per class, detections of all images are sorted by score (a stable sort, as MATLAB's ``sort`` in
the devkit); each is matched to the ground-truth box of its image and class with the highest
IoU. It is a true positive when that IoU is ``>= iou_threshold`` (the devkit's ``>=``;
py-faster-rcnn and detectron2 use ``>``, which differs only at exact ties) and the box is not
matched yet, a false positive when the box is already matched or the IoU is too low, and it is
ignored (neither) when the best box is ``difficult`` (or a crowd region). Recall is over the
boxes that are not difficult. AP is either VOC2007's 11-point interpolated AP (mean over
``t = 0, 0.1, ..., 1`` of the highest precision at recall ``>= t``; the thresholds are the
doubles nearest ``k / 10``) or, from VOC2010 on, the area under the precision envelope.

Pixel convention and the devkit's "+1": the devkit reads 1-based inclusive integer corners and
computes widths as ``xmax - xmin + 1`` (intersections likewise). Our records store VOC boxes as
``(xmin - 1, ymin - 1, xmax, ymax)`` in the continuous pixel model of ``structures/boxes.py``,
whose width ``xmax - (xmin - 1)`` is exactly the devkit's ``xmax - xmin + 1``; the intersection
``min(xmax) - max(xmin - 1)`` is the devkit's ``min(xmax) - max(xmin) + 1`` too. So plain
continuous IoU on records equals the devkit's IoU on the original file boxes, and a prediction
``(x1, y1, x2, y2)`` corresponds to the devkit detection ``(x1 + 1, y1 + 1, x2, y2)`` (how
detectron2 writes its VOC result files). ``tests/evaluation/test_voc_eval.py`` checks this.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from detforge.structures.boxes import box_iou
from detforge.structures.instances import Instances
from detforge.utils import comm

__all__ = ["VOCEvaluator", "voc_ap", "voc_precision_recall"]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
# Per image: ground-truth boxes [G, 4] (xyxy) and their ignore flags [G] (difficult or crowd).
ClassGroundTruth = Mapping[Any, tuple[FloatArray, npt.NDArray[np.bool_]]]


def voc_ap(recall: FloatArray, precision: FloatArray, *, use_07_metric: bool) -> float:
    """Average precision from a precision/recall curve.

    Args:
        recall (ndarray[D]): recall after each detection, in score order (non-decreasing).
        precision (ndarray[D]): precision after each detection.
        use_07_metric: VOC2007's 11-point interpolated AP; else the area under the precision
            envelope (VOC2010 and later).

    Returns:
        AP in ``[0, 1]``; 0 for an empty curve.
    """
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if recall.shape != precision.shape or recall.ndim != 1:
        raise ValueError(
            f"voc_ap: `recall` and `precision` must be 1-D of one length, got "
            f"{recall.shape} and {precision.shape}"
        )
    if use_07_metric:
        ap = 0.0
        for t in np.arange(11) / 10.0:
            above = precision[recall >= t]
            ap += (float(above.max()) if above.size else 0.0) / 11.0
        return ap
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def voc_precision_recall(
    image_ids: Sequence[Any],
    scores: FloatArray,
    boxes: FloatArray,
    ground_truth: ClassGroundTruth,
    *,
    iou_threshold: float = 0.5,
) -> tuple[FloatArray, FloatArray, int]:
    """Precision/recall curve of one class (see the module docstring for the matching rule).

    Args:
        image_ids: D image ids, one per detection.
        scores (ndarray[D]): detection scores.
        boxes (ndarray[D, 4]): detections, xyxy, continuous pixels.
        ground_truth: image id -> ``(boxes [G, 4], ignore [G])`` of this class.
        iou_threshold: minimum IoU of a true positive.

    Returns:
        ``(recall [D], precision [D], npos)`` in decreasing-score order; ``npos`` is the number
        of ground-truth boxes not ignored. Recall is NaN when ``npos`` is 0.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not len(image_ids) == len(scores) == len(boxes):
        raise ValueError(
            f"voc_precision_recall: {len(image_ids)} image ids, {len(scores)} scores and "
            f"{len(boxes)} boxes must match"
        )
    npos = int(sum(int((~ignore).sum()) for _, ignore in ground_truth.values()))
    best_iou, best_gt = _best_matches(image_ids, boxes, ground_truth)
    used = {iid: np.zeros(len(g[0]), dtype=bool) for iid, g in ground_truth.items()}
    order = np.argsort(-scores, kind="stable")
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for rank, d in enumerate(order):
        g = best_gt[d]
        if g < 0 or best_iou[d] < iou_threshold:
            fp[rank] = 1
            continue
        iid = image_ids[d]
        if ground_truth[iid][1][g]:
            continue  # difficult: neither true nor false positive
        if used[iid][g]:
            fp[rank] = 1
        else:
            tp[rank], used[iid][g] = 1, True
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / npos if npos > 0 else np.full_like(tp, np.nan)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision, npos


def _best_matches(
    image_ids: Sequence[Any], boxes: FloatArray, ground_truth: ClassGroundTruth
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Per detection, the highest IoU with a ground-truth box of its image and that box."""
    best_iou = np.zeros(len(boxes))
    best_gt = np.full(len(boxes), -1, dtype=np.int64)
    by_image: dict[Any, list[int]] = {}
    for d, iid in enumerate(image_ids):
        by_image.setdefault(iid, []).append(d)
    for iid, dets in by_image.items():
        gt = ground_truth.get(iid)
        if gt is None or len(gt[0]) == 0:
            continue
        iou = box_iou(torch.from_numpy(boxes[dets]), torch.from_numpy(gt[0])).numpy()  # [d, G]
        best_iou[dets] = iou.max(axis=1)
        best_gt[dets] = iou.argmax(axis=1)  # first maximum, as the devkit's max()
    return best_iou, best_gt


class VOCEvaluator:
    """Pascal VOC box AP over the ground truth of dataset records.

    Only the processed images count (a partial run gives the AP of that part); the records of
    images never processed are left out with a warning.

    Args:
        records: dataset records (``image_id``, ``annotations`` with ``bbox``, ``category_id``
            and optionally ``difficult``/``iscrowd``, which mark ignored boxes).
        class_names: the K class names in contiguous-label order.
        use_07_metric: VOC2007's 11-point AP instead of the area under the curve.
    """

    def __init__(
        self, records: Sequence[dict[str, Any]], class_names: Sequence[str], *, use_07_metric: bool
    ) -> None:
        if isinstance(class_names, str) or len(class_names) == 0:
            raise ValueError(
                f"VOCEvaluator: `class_names` must be a non-empty list, got {class_names!r}"
            )
        self.class_names = tuple(class_names)
        self.use_07_metric = bool(use_07_metric)
        self._gt = _ground_truth(records, len(self.class_names))
        self._predictions: dict[Any, tuple[FloatArray, FloatArray, npt.NDArray[np.int64]]] = {}

    def reset(self) -> None:
        """Forget the processed predictions."""
        self._predictions = {}

    def process(self, inputs: list[dict[str, Any]], outputs: list[Instances]) -> None:
        """Keep each image's boxes, scores and labels (on the CPU, as float64 arrays)."""
        fn = "VOCEvaluator.process"
        if len(inputs) != len(outputs):
            raise ValueError(f"{fn}: got {len(inputs)} inputs but {len(outputs)} outputs")
        for i, (x, out) in enumerate(zip(inputs, outputs, strict=True)):
            iid = x.get("image_id")
            if iid not in self._gt[0]:
                raise ValueError(f"{fn}: input {i} has image_id {iid!r}, which is not in records")
            if not isinstance(out, Instances) or out.scores is None or out.labels is None:
                raise TypeError(f"{fn}: output {i} must be Instances with scores and labels")
            if "height" in x and "width" in x and out.image_size != (x["height"], x["width"]):
                raise ValueError(
                    f"{fn}: output for image {iid!r} has image_size {out.image_size}, the image "
                    f"is {(x['height'], x['width'])}; run the model with original_sizes"
                )
            self._predictions[iid] = (
                out.boxes.detach().cpu().double().numpy(),
                out.scores.detach().cpu().double().numpy(),
                out.labels.detach().cpu().numpy().astype(np.int64),
            )

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Per-class AP on rank 0 (``{}`` elsewhere).

        Returns:
            ``{"bbox": {"AP": mean over IoU 0.50:0.95 of the mAP, "AP50": mAP at IoU 0.5,
            "AP75", "AP50-<class>": per-class AP at IoU 0.5}}``, percentages. Classes without
            ground truth (that is not difficult) get NaN and are left out of the means.
        """
        parts = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return {}
        preds: dict[Any, Any] = {}
        for part in parts:
            for iid, p in part.items():
                preds.setdefault(iid, p)
        unseen = len(self._gt[0]) - len(preds)
        if unseen:
            logger.warning(
                "VOCEvaluator: %d of %d images were not processed", unseen, len(self._gt[0])
            )
        thresholds = np.arange(10) * 0.05 + 0.5
        aps = np.array([self._class_aps(preds, float(t)) for t in thresholds])  # [T, K]
        metrics = {
            "AP": _nanmean(aps.mean(axis=0)),
            "AP50": _nanmean(aps[0]),
            "AP75": _nanmean(aps[5]),
        }
        metrics.update(
            {f"AP50-{n}": float(v) for n, v in zip(self.class_names, aps[0], strict=True)}
        )
        table = ", ".join(f"{n}: {v:.2f}" for n, v in zip(self.class_names, aps[0], strict=True))
        logger.info(
            "VOC AP50 per class (%s metric): %s", "07" if self.use_07_metric else "AUC", table
        )
        return {"bbox": metrics}

    def _class_aps(self, preds: dict[Any, Any], iou_threshold: float) -> list[float]:
        """AP ×100 of every class at one IoU threshold, over the processed images."""
        out = []
        for k in range(len(self.class_names)):
            gt = {iid: g for iid, g in self._gt[1][k].items() if iid in preds}
            ids: list[Any] = []
            scores, boxes = [], []
            for iid, (b, s, labels) in preds.items():
                keep = labels == k
                ids += [iid] * int(keep.sum())
                scores.append(s[keep])
                boxes.append(b[keep])
            rec, prec, npos = voc_precision_recall(
                ids,
                np.concatenate(scores) if scores else np.zeros(0),
                np.concatenate(boxes) if boxes else np.zeros((0, 4)),
                gt,
                iou_threshold=iou_threshold,
            )
            ap = voc_ap(rec, prec, use_07_metric=self.use_07_metric) if npos else math.nan
            out.append(ap * 100.0)
        return out


def _nanmean(values: FloatArray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _ground_truth(
    records: Sequence[dict[str, Any]], num_classes: int
) -> tuple[set[Any], list[dict[Any, tuple[FloatArray, npt.NDArray[np.bool_]]]]]:
    """All image ids, and per class: image id -> (boxes [G, 4], ignore [G])."""
    fn = "VOCEvaluator"
    ids: set[Any] = set()
    per_class: list[dict[Any, tuple[list[list[float]], list[bool]]]] = [
        {} for _ in range(num_classes)
    ]
    for r, record in enumerate(records):
        iid = record.get("image_id")
        if iid is None or iid in ids:
            raise ValueError(f"{fn}: record {r} has a missing or repeated `image_id` ({iid!r})")
        ids.add(iid)
        for k in range(num_classes):
            per_class[k][iid] = ([], [])
        for a, ann in enumerate(record.get("annotations", [])):
            label, box = ann.get("category_id"), ann.get("bbox")
            where = f"{fn}: record {iid!r} ({record.get('file_name')}) annotation {a}"
            if not isinstance(label, int) or not 0 <= label < num_classes:
                raise ValueError(
                    f"{where} field `category_id`: {label!r} not in [0, {num_classes})"
                )
            if not isinstance(box, (list, tuple)) or len(box) != 4:
                raise ValueError(f"{where} field `bbox`: must be 4 numbers (xyxy), got {box!r}")
            per_class[label][iid][0].append([float(v) for v in box])
            per_class[label][iid][1].append(
                bool(ann.get("difficult", False) or ann.get("iscrowd", 0))
            )
    arrays = [
        {
            iid: (np.asarray(b, np.float64).reshape(-1, 4), np.asarray(ign, dtype=bool))
            for iid, (b, ign) in cls.items()
        }
        for cls in per_class
    ]
    return ids, arrays
