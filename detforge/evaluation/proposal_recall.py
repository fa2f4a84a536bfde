"""Recall of region proposals (the RPN's output) at IoU 0.50:0.95, as in detectron2 and Hosang
et al., "What makes for effective detection proposals?" (2016).

Per image, the top ``limit`` proposals by score are matched greedily to the ground-truth boxes:
repeatedly, the (proposal, box) pair with the highest IoU among the boxes' best proposals is
taken and both leave the pool, ``min(#proposals, #boxes)`` times. Each box's IoU with its
proposal is its *overlap* (boxes left over have none). Recall at threshold ``t`` is the fraction
of ground-truth boxes with overlap ``>= t``; average recall (AR) is the mean over
``t = 0.50, 0.55, ..., 0.95``. Crowd boxes are not counted.

One difference from detectron2's ``_evaluate_box_proposals``: an image with ground truth but no
proposal counts its boxes as missed (detectron2 skips such images, which overstates recall).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from detforge.structures.boxes import box_area, box_iou, scale_boxes
from detforge.structures.instances import Instances
from detforge.utils import comm

__all__ = ["AREA_RANGES", "ProposalRecall", "ProposalRecallEvaluator", "proposal_recall"]

logger = logging.getLogger(__name__)

AREA_RANGES: dict[str, tuple[float, float]] = {
    "": (0.0, 1e10),
    "s": (0.0, 32.0**2),
    "m": (32.0**2, 96.0**2),
    "l": (96.0**2, 1e10),
}
"""COCO's area ranges (pixels², bounds inclusive) keyed by the suffix of ``AR``."""


@dataclass(frozen=True)
class ProposalRecall:
    """Result of :func:`proposal_recall`.

    Attributes:
        ar: average recall over ``thresholds`` (NaN without ground truth).
        recalls (Tensor[T]): recall at each threshold.
        thresholds (Tensor[T]): the IoU thresholds.
        overlaps (Tensor[M]): the IoU of each matched ground-truth box with its proposal.
        num_pos: number of ground-truth boxes counted.
    """

    ar: float
    recalls: Tensor
    thresholds: Tensor
    overlaps: Tensor
    num_pos: int


def _greedy_overlaps(overlaps: Tensor) -> Tensor:
    """IoUs (Tensor[min(R, G)]) of the greedy one-to-one matching of ``overlaps`` [R, G]."""
    overlaps = overlaps.clone()
    out = overlaps.new_zeros(min(overlaps.shape))
    for j in range(out.numel()):
        best_iou, best_prop = overlaps.max(dim=0)  # [G]: each box's best remaining proposal
        gt_iou, gt_ind = best_iou.max(dim=0)  # the box covered best
        out[j] = gt_iou
        overlaps[best_prop[gt_ind], :] = -1.0
        overlaps[:, gt_ind] = -1.0
    return out


def proposal_recall(
    proposals: Sequence[Instances],
    gt_boxes: Sequence[Tensor],
    *,
    gt_areas: Sequence[Tensor] | None = None,
    area_range: tuple[float, float] = AREA_RANGES[""],
    limit: int | None = None,
    thresholds: Tensor | None = None,
) -> ProposalRecall:
    """Recall of proposals over a set of images (see the module docstring).

    Args:
        proposals: per image, ``Instances`` with ``boxes`` (Tensor[R, 4], xyxy) and ``scores``
            (Tensor[R], objectness), in the coordinates of ``gt_boxes``.
        gt_boxes: per image, Tensor[G, 4] of non-crowd ground-truth boxes, xyxy.
        gt_areas: per image, Tensor[G] of areas used for ``area_range`` (e.g. COCO's mask
            areas); default the box areas.
        area_range: ``(low, high)``; only boxes with ``low <= area <= high`` count.
        limit: use the ``limit`` highest-scoring proposals of each image; ``None`` uses all.
        thresholds (Tensor[T]): IoU thresholds; default ``0.50:0.05:0.95``.

    Returns:
        ProposalRecall.
    """
    fn = "proposal_recall"
    if len(proposals) != len(gt_boxes) or (gt_areas is not None and len(gt_areas) != len(gt_boxes)):
        raise ValueError(f"{fn}: `proposals`, `gt_boxes` (and `gt_areas`) need one entry per image")
    if limit is not None and limit <= 0:
        raise ValueError(f"{fn}: `limit` must be positive, got {limit}")
    if thresholds is None:
        thresholds = torch.arange(0.5, 0.95 + 1e-5, 0.05, dtype=torch.float64)
    matched: list[Tensor] = []
    num_pos = 0
    for i, (props, gt) in enumerate(zip(proposals, gt_boxes, strict=True)):
        if not isinstance(props, Instances) or props.scores is None:
            raise TypeError(f"{fn}: proposals {i} must be Instances with `scores`")
        gt = gt.detach().to("cpu", torch.float64).reshape(-1, 4)
        areas = box_area(gt) if gt_areas is None else gt_areas[i].detach().to("cpu", torch.float64)
        gt = gt[(areas >= area_range[0]) & (areas <= area_range[1])]
        num_pos += len(gt)
        if len(gt) == 0 or len(props) == 0:
            continue
        order = torch.sort(props.scores.detach().cpu(), descending=True, stable=True).indices
        boxes = props.boxes.detach().to("cpu", torch.float64)[order[:limit]]
        matched.append(_greedy_overlaps(box_iou(boxes, gt)))
    overlaps = torch.cat(matched) if matched else torch.zeros(0, dtype=torch.float64)
    thresholds = thresholds.to(torch.float64)
    if num_pos == 0:
        recalls = torch.full_like(thresholds, math.nan)
    else:
        recalls = (overlaps[None, :] >= thresholds[:, None]).sum(dim=1).double() / num_pos
    return ProposalRecall(
        ar=float(recalls.mean()) if len(recalls) else math.nan,
        recalls=recalls,
        thresholds=thresholds,
        overlaps=overlaps,
        num_pos=num_pos,
    )


class ProposalRecallEvaluator:
    """AR@N of region proposals against the non-crowd boxes of dataset records.

    ``process`` takes the proposals as ``Instances`` (``boxes``, ``scores``); proposals whose
    ``image_size`` differs from the input's ``(height, width)`` (an RPN works on the resized
    image) are scaled to the original image first. Only processed images count.

    Args:
        records: dataset records with ``image_id`` and ``annotations`` (``bbox``, ``iscrowd``,
            optional ``area``, used for the area ranges; default the box area).
        limits: numbers of proposals per image N to report ``AR@N`` for.
    """

    def __init__(self, records: Sequence[dict[str, Any]], *, limits: Sequence[int] = (100, 1000)):
        if len(limits) == 0 or any(int(n) <= 0 for n in limits):
            raise ValueError(f"ProposalRecallEvaluator: `limits` must be positive, got {limits}")
        self.limits = tuple(int(n) for n in limits)
        self._gt: dict[Any, tuple[Tensor, Tensor]] = {}
        for r, record in enumerate(records):
            iid = record.get("image_id")
            if iid is None or iid in self._gt:
                raise ValueError(
                    f"ProposalRecallEvaluator: record {r} has a missing or repeated `image_id`"
                )
            anns = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
            boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
            areas = box_area(boxes)
            for k, a in enumerate(anns):
                if "area" in a:
                    areas[k] = float(a["area"])
            self._gt[iid] = (boxes, areas)
        self._proposals: dict[Any, Instances] = {}

    def reset(self) -> None:
        """Forget the processed proposals."""
        self._proposals = {}

    def process(self, inputs: list[dict[str, Any]], outputs: list[Instances]) -> None:
        """Keep the top ``max(limits)`` proposals of each image, in original image coordinates."""
        fn = "ProposalRecallEvaluator.process"
        if len(inputs) != len(outputs):
            raise ValueError(f"{fn}: got {len(inputs)} inputs but {len(outputs)} outputs")
        for i, (x, props) in enumerate(zip(inputs, outputs, strict=True)):
            iid = x.get("image_id")
            if iid not in self._gt:
                raise ValueError(f"{fn}: input {i} has image_id {iid!r}, which is not in records")
            if not isinstance(props, Instances) or props.scores is None:
                raise TypeError(f"{fn}: output {i} must be Instances with `scores`")
            props = props.to("cpu")
            order = torch.sort(props.scores, descending=True, stable=True).indices  # type: ignore[arg-type]
            props = props[order[: max(self.limits)]]
            h, w = (
                int(x.get("height", props.image_size[0])),
                int(x.get("width", props.image_size[1])),
            )
            boxes = props.boxes
            if props.image_size != (h, w):  # proposals of the resized image
                sy, sx = h / props.image_size[0], w / props.image_size[1]
                boxes = scale_boxes(boxes, sx, sy)
            self._proposals[iid] = Instances((h, w), boxes=boxes, scores=props.scores)

    def evaluate(self) -> dict[str, dict[str, float]]:
        """``{"box_proposals": {"AR@N", "ARs@N", "ARm@N", "ARl@N" for each N}}`` ×100 on rank 0."""
        parts = comm.gather(self._proposals, dst=0)
        if not comm.is_main_process():
            return {}
        props: dict[Any, Instances] = {}
        for part in parts:
            for iid, p in part.items():
                props.setdefault(iid, p)
        if not props:
            logger.warning("ProposalRecallEvaluator: no image was processed")
        ids = list(props)
        boxes = [self._gt[i][0] for i in ids]
        areas = [self._gt[i][1] for i in ids]
        metrics: dict[str, float] = {}
        for n in self.limits:
            for suffix, rng in AREA_RANGES.items():
                res = proposal_recall(
                    [props[i] for i in ids], boxes, gt_areas=areas, area_range=rng, limit=n
                )
                metrics[f"AR{suffix}@{n}"] = res.ar * 100.0
        logger.info("Proposal recall: %s", ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        return {"box_proposals": metrics}
