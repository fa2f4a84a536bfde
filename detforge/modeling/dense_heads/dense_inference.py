"""Inference of dense (one-stage) detectors: per-level candidates, decoding and class-wise NMS.

detectron2's RetinaNet semantics, for one image: per level, sigmoid of the ``[N_l, K]`` logits
flattened (flat index ``i`` is anchor ``i // K``, class ``i % K``), keep scores
``> score_thresh``, then the ``topk_candidates`` best (ties by index); decode only those boxes.
Concatenate the levels, drop non-finite boxes (with a warning), class-wise NMS, keep the
``max_detections`` best. Boxes are not clipped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

from detforge.modeling.box_coder import BoxCoder
from detforge.ops.nms import batched_nms
from detforge.structures.instances import Instances

__all__ = ["dense_detection_inference", "stable_topk_subset"]

logger = logging.getLogger(__name__)


def stable_topk_subset(indices: Tensor, scores: Tensor, k: int) -> Tensor:
    """The ``k`` best of ``indices`` by score, ties broken by position, in their input order.

    Equal to ``indices[scores.sort(descending=True, stable=True).indices[:k]]`` as a set, but
    costs a ``topk`` instead of sorting every candidate (up to ``H * W * A * K``, 12 million on
    P3 of an 800x1333 image when the score threshold lets everything through).
    """
    if scores.numel() <= k:
        return indices
    kth = scores.topk(k, sorted=False).values.min()
    above = (scores > kth).nonzero().squeeze(1)
    ties = (scores == kth).nonzero().squeeze(1)[: k - above.numel()]
    return indices[torch.cat([above, ties]).sort().values]


@torch.no_grad()
def dense_detection_inference(
    anchors: Sequence[Tensor],
    logits: Sequence[Tensor],
    deltas: Sequence[Tensor],
    image_size: tuple[int, int],
    *,
    box_coder: BoxCoder,
    num_classes: int,
    score_thresh: float,
    topk_candidates: int,
    nms_thresh: float,
    max_detections: int,
) -> Instances:
    """Detections of one image (see the module docstring).

    Args:
        anchors (list[Tensor[N_l, 4]]): anchors per level.
        logits (list[Tensor[N_l, K]]): class logits per level.
        deltas (list[Tensor[N_l, 4]]): box deltas per level.
        image_size: ``(height, width)`` the coordinates refer to.
        box_coder: decodes the deltas against the anchors.
        num_classes: ``K``.
        score_thresh: candidates score strictly more.
        topk_candidates: at most this many candidates per level.
        nms_thresh: IoU threshold of the class-wise NMS.
        max_detections: detections kept.

    Returns:
        Instances: ``boxes``, ``scores`` (probabilities) and ``labels``, by decreasing score.
    """
    boxes_all, scores_all, classes_all = [], [], []
    for anchors_l, logits_l, deltas_l in zip(anchors, logits, deltas, strict=True):
        scores = logits_l.sigmoid().flatten()  # [N_l * K]
        candidates = (scores > score_thresh).nonzero().squeeze(1)
        candidates = stable_topk_subset(candidates, scores[candidates], topk_candidates)
        top, order = scores[candidates].sort(descending=True, stable=True)
        idx = candidates[order]
        anchor_idx = torch.div(idx, num_classes, rounding_mode="floor")
        boxes_all.append(box_coder.decode(deltas_l[anchor_idx], anchors_l[anchor_idx]))
        scores_all.append(top)
        classes_all.append(idx % num_classes)
    boxes, scores, classes = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(classes_all)
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
    if not bool(finite.all()):
        logger.warning("dense detector: dropping %d non-finite boxes", int((~finite).sum()))
        boxes, scores, classes = boxes[finite], scores[finite], classes[finite]
    keep = batched_nms(boxes, scores, classes, nms_thresh)[:max_detections]
    return Instances(image_size, boxes=boxes[keep], scores=scores[keep], labels=classes[keep])
