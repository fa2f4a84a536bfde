"""Fast R-CNN outputs: per-RoI class scores and box deltas, their losses, and detection inference.

Semantics follow detectron2's ``FastRCNNOutputLayers`` and ``fast_rcnn_inference`` exactly where
results depend on them, so converted detectron2 checkpoints give the same detections:

* Classes: ``K`` foreground classes ``0 .. K-1`` and the background class ``K``, which is the
  *last* column of the ``K + 1`` logits.
* Box deltas are class-specific (``K * 4`` columns, class ``k`` in columns ``4k .. 4k+3``) or
  class-agnostic (4 columns); they are decoded with the R-CNN coder, weights ``(10, 10, 5, 5)``.
* Losses: ``loss_cls`` is the softmax cross-entropy averaged over the sampled proposals;
  ``loss_box`` (smooth-L1 on the deltas of the ground-truth class, or GIoU on the decoded boxes)
  is computed on the foreground proposals only, summed, and divided by the number of *sampled*
  proposals (not of foreground ones), so that each foreground example weighs the same in every
  batch.
* Inference, per image: drop proposals with non-finite boxes or scores, softmax, decode, clip to
  the image, keep ``(proposal, class)`` pairs with score ``> score_thresh`` (pairs enumerated
  proposal-major), per-class NMS, then the ``topk`` best by score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detforge.modeling.box_coder import BoxCoder
from detforge.ops.losses import giou_loss, smooth_l1_loss
from detforge.ops.nms import batched_nms
from detforge.structures.boxes import clip_boxes
from detforge.structures.instances import Instances
from detforge.utils.checks import check_boxes, check_int, check_tensor

__all__ = ["FastRCNNOutputLayers", "fast_rcnn_inference", "fast_rcnn_inference_single_image"]


def fast_rcnn_inference_single_image(
    boxes: Tensor,
    scores: Tensor,
    image_size: tuple[int, int],
    *,
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> tuple[Instances, Tensor]:
    """Detections of one image from per-proposal class probabilities and decoded boxes.

    Args:
        boxes (Tensor[R, K * 4] or Tensor[R, 4]): class-specific or class-agnostic decoded
            boxes, xyxy, absolute pixels.
        scores (Tensor[R, K + 1]): class probabilities; the last column is the background.
        image_size: ``(height, width)``; boxes are clipped to it.
        score_thresh: keep ``(proposal, class)`` pairs whose score is strictly greater.
        nms_thresh: IoU threshold of the per-class NMS.
        topk_per_image: keep at most this many detections; a negative value keeps all.

    Returns:
        detections: ``Instances(image_size, boxes [N, 4], scores [N], labels [N] int64)``, by
        decreasing score; and ``Tensor[N]`` (int64): for each detection the row of ``boxes``
        (the proposal) it came from.
    """
    fn = "fast_rcnn_inference_single_image"
    check_tensor(boxes, "boxes", fn)
    check_tensor(scores, "scores", fn)
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"{fn}: `scores` must have shape [R, K + 1], got {list(scores.shape)}")
    num_classes = scores.shape[1] - 1
    if (
        boxes.dim() != 2
        or boxes.shape[0] != scores.shape[0]
        or boxes.shape[1]
        not in (
            4,
            4 * num_classes,
        )
    ):
        raise ValueError(
            f"{fn}: `boxes` must have shape [{scores.shape[0]}, {4 * num_classes}] or "
            f"[{scores.shape[0]}, 4] for scores of shape {list(scores.shape)}, "
            f"got {list(boxes.shape)}"
        )
    rows = torch.arange(boxes.shape[0], device=boxes.device)
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not bool(valid.all()):
        boxes, scores, rows = boxes[valid], scores[valid], rows[valid]

    scores = scores[:, :-1]  # [R, K], background dropped
    num_reg = boxes.shape[1] // 4
    boxes = clip_boxes(boxes.reshape(-1, 4), image_size).view(-1, num_reg, 4)  # [R, num_reg, 4]

    keep_mask = scores > score_thresh  # [R, K]
    pairs = keep_mask.nonzero()  # [P, 2]: (proposal, class), proposal-major
    boxes = boxes[pairs[:, 0], 0] if num_reg == 1 else boxes[keep_mask]  # [P, 4]
    scores = scores[keep_mask]  # [P]

    keep = batched_nms(boxes, scores, pairs[:, 1], nms_thresh)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    boxes, scores, pairs = boxes[keep], scores[keep], pairs[keep]
    detections = Instances(image_size, boxes=boxes, scores=scores, labels=pairs[:, 1])
    return detections, rows[pairs[:, 0]]


def fast_rcnn_inference(
    boxes: Sequence[Tensor],
    scores: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    *,
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> tuple[list[Instances], list[Tensor]]:
    """Run :func:`fast_rcnn_inference_single_image` on every image.

    Args:
        boxes: per image, ``Tensor[R_i, K * 4]`` or ``Tensor[R_i, 4]`` decoded boxes.
        scores: per image, ``Tensor[R_i, K + 1]`` class probabilities (background last).
        image_sizes: per image, ``(height, width)``.
        score_thresh: see :func:`fast_rcnn_inference_single_image`.
        nms_thresh: see :func:`fast_rcnn_inference_single_image`.
        topk_per_image: see :func:`fast_rcnn_inference_single_image`.

    Returns:
        Per image, the detections and the ``Tensor[N_i]`` proposal index of each.
    """
    if not len(boxes) == len(scores) == len(image_sizes):
        raise ValueError(
            f"fast_rcnn_inference: got {len(boxes)} box tensors, {len(scores)} score tensors "
            f"and {len(image_sizes)} image sizes; need one of each per image"
        )
    results = [
        fast_rcnn_inference_single_image(
            b,
            s,
            size,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            topk_per_image=topk_per_image,
        )
        for b, s, size in zip(boxes, scores, image_sizes, strict=True)
    ]
    return [r[0] for r in results], [r[1] for r in results]


class FastRCNNOutputLayers(nn.Module):
    """Two linear layers, ``cls_score`` (``K + 1`` logits) and ``bbox_pred`` (box deltas).

    Args:
        input_size: size ``D`` of the flattened per-RoI feature (the box head's
            ``output_size``).
        num_classes: number of foreground classes ``K``.
        box_coder: decodes and encodes the deltas; default weights ``(10, 10, 5, 5)``.
        class_agnostic: predict one set of 4 deltas for all classes instead of ``K * 4``.
        box_reg_loss_type: ``"smooth_l1"`` on the deltas or ``"giou"`` on the decoded boxes.
        smooth_l1_beta: beta of the smooth-L1 loss (0 is the L1 loss).
        test_score_thresh: inference keeps class scores strictly above this.
        test_nms_thresh: IoU threshold of the per-class NMS at inference.
        test_topk_per_image: detections kept per image (negative: all).
        loss_weights: factors for ``loss_cls`` and ``loss_box`` (default 1).
    """

    def __init__(
        self,
        input_size: int,
        *,
        num_classes: int,
        box_coder: BoxCoder | None = None,
        class_agnostic: bool = False,
        box_reg_loss_type: Literal["smooth_l1", "giou"] = "smooth_l1",
        smooth_l1_beta: float = 0.0,
        test_score_thresh: float = 0.05,
        test_nms_thresh: float = 0.5,
        test_topk_per_image: int = 100,
        loss_weights: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        fn = "FastRCNNOutputLayers"
        for name, value in (("input_size", input_size), ("num_classes", num_classes)):
            check_int(value, name, fn, low=1)
        if box_reg_loss_type not in ("smooth_l1", "giou"):
            raise ValueError(
                f"{fn}: `box_reg_loss_type` must be 'smooth_l1' or 'giou', "
                f"got {box_reg_loss_type!r}"
            )
        weights = {"loss_cls": 1.0, "loss_box": 1.0}
        unknown = set(loss_weights or {}) - set(weights)
        if unknown:
            raise ValueError(f"{fn}: unknown `loss_weights` keys {sorted(unknown)}")
        self.num_classes = int(num_classes)
        self.cls_score = nn.Linear(input_size, num_classes + 1)
        self.bbox_pred = nn.Linear(input_size, 4 if class_agnostic else 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)
        self.box_coder = box_coder if box_coder is not None else BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.class_agnostic = bool(class_agnostic)
        self.box_reg_loss_type = box_reg_loss_type
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.test_score_thresh = float(test_score_thresh)
        self.test_nms_thresh = float(test_nms_thresh)
        self.test_topk_per_image = int(test_topk_per_image)
        self.loss_weights = {**weights, **(loss_weights or {})}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Predict class logits and box deltas.

        Args:
            x (Tensor[R, D] or Tensor[R, ...]): per-RoI features; flattened from dim 1.

        Returns:
            scores (Tensor[R, K + 1]): class logits, background last; deltas
            (Tensor[R, K * 4] or Tensor[R, 4]): box deltas for each class (or all classes).
        """
        check_tensor(x, "x", "FastRCNNOutputLayers.forward")
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)

    def losses(
        self,
        scores: Tensor,
        deltas: Tensor,
        proposal_boxes: Tensor,
        gt_labels: Tensor,
        gt_boxes: Tensor,
    ) -> dict[str, Tensor]:
        """Classification and box regression losses over the sampled proposals of the batch.

        Args:
            scores (Tensor[R, K + 1]): predicted logits (``forward``'s first output).
            deltas (Tensor[R, K * 4] or Tensor[R, 4]): predicted deltas.
            proposal_boxes (Tensor[R, 4]): the sampled proposals, xyxy (no gradient).
            gt_labels (Tensor[R]): int64 class of each proposal in ``[0, K]``, ``K`` meaning
                background.
            gt_boxes (Tensor[R, 4]): the matched ground-truth box of each proposal; only the
                rows of foreground proposals are read.

        Returns:
            ``{"loss_cls", "loss_box"}``: scalar tensors, already multiplied by
            ``loss_weights``. Both are 0 (still in the graph) when ``R = 0``.
        """
        self._check_loss_inputs(scores, deltas, proposal_boxes, gt_labels, gt_boxes)
        if gt_labels.numel() == 0:
            loss_cls = scores.sum() * 0.0
        else:
            loss_cls = F.cross_entropy(scores, gt_labels, reduction="mean")

        fg = ((gt_labels >= 0) & (gt_labels < self.num_classes)).nonzero(as_tuple=True)[0]
        if self.class_agnostic:
            fg_deltas = deltas[fg]  # [F, 4]
        else:
            fg_deltas = deltas.reshape(-1, self.num_classes, 4)[fg, gt_labels[fg]]  # [F, 4]
        fg_proposals, fg_gt = proposal_boxes[fg], gt_boxes[fg]
        if self.box_reg_loss_type == "smooth_l1":
            targets = self.box_coder.encode(fg_proposals, fg_gt)
            loss_box = smooth_l1_loss(
                fg_deltas, targets.to(fg_deltas.dtype), beta=self.smooth_l1_beta, reduction="sum"
            )
        else:
            pred = self.box_coder.decode(fg_deltas, fg_proposals)
            loss_box = giou_loss(pred, fg_gt.to(pred.dtype), reduction="sum")
        loss_box = loss_box / max(gt_labels.numel(), 1)
        return {
            "loss_cls": loss_cls * self.loss_weights["loss_cls"],
            "loss_box": loss_box * self.loss_weights["loss_box"],
        }

    def _check_loss_inputs(
        self, scores: Tensor, deltas: Tensor, boxes: Tensor, labels: Tensor, gt_boxes: Tensor
    ) -> None:
        fn = "FastRCNNOutputLayers.losses"
        r = self._check_predictions(fn, scores, deltas)
        check_boxes(boxes, "proposal_boxes", fn, ordered=False)
        check_boxes(gt_boxes, "gt_boxes", fn, ordered=False)
        check_tensor(labels, "gt_labels", fn)
        if labels.dtype != torch.int64:
            raise TypeError(f"{fn}: `gt_labels` must be int64, got {labels.dtype}")
        if labels.dim() != 1:
            raise ValueError(f"{fn}: `gt_labels` must be a Tensor[R], got {list(labels.shape)}")
        for name, t in (("proposal_boxes", boxes), ("gt_labels", labels), ("gt_boxes", gt_boxes)):
            if t.shape[0] != r:
                raise ValueError(f"{fn}: `{name}` has {t.shape[0]} rows for {r} predictions")

    def _check_predictions(self, fn: str, scores: Tensor, deltas: Tensor) -> int:
        """Check the shapes of ``forward``'s outputs; return the number of RoIs."""
        check_tensor(scores, "scores", fn)
        check_tensor(deltas, "deltas", fn)
        k = self.num_classes
        reg = 4 if self.class_agnostic else 4 * k
        if scores.dim() != 2 or scores.shape[1] != k + 1:
            raise ValueError(
                f"{fn}: `scores` must have shape [R, {k + 1}], got {list(scores.shape)}"
            )
        if deltas.dim() != 2 or tuple(deltas.shape) != (scores.shape[0], reg):
            raise ValueError(
                f"{fn}: `deltas` must have shape [{scores.shape[0]}, {reg}], "
                f"got {list(deltas.shape)}"
            )
        return int(scores.shape[0])

    def predict_boxes(self, deltas: Tensor, proposals: Sequence[Instances]) -> list[Tensor]:
        """Decode the deltas on their proposals.

        Args:
            deltas (Tensor[R, K * 4] or Tensor[R, 4]): predicted deltas of all images.
            proposals: per image, ``Instances`` whose ``boxes`` (``R_i`` rows, summing to ``R``)
                produced the deltas.

        Returns:
            Per image, ``Tensor[R_i, K * 4]`` (or ``[R_i, 4]``) boxes, float32 (float64 for
            float64 inputs), not clipped.
        """
        boxes = torch.cat([p.boxes for p in proposals]) if proposals else deltas.new_zeros(0, 4)
        decoded = self.box_coder.decode(deltas, boxes)  # [R, K * 4]
        return list(decoded.split([len(p) for p in proposals]))

    def predict_probs(self, scores: Tensor, proposals: Sequence[Instances]) -> list[Tensor]:
        """Softmax class probabilities, split per image.

        Args:
            scores (Tensor[R, K + 1]): predicted logits of all images.
            proposals: per image, the ``Instances`` of its ``R_i`` proposals.

        Returns:
            Per image, ``Tensor[R_i, K + 1]`` probabilities (background last).
        """
        return list(F.softmax(scores, dim=-1).split([len(p) for p in proposals]))

    def inference(
        self, scores: Tensor, deltas: Tensor, proposals: Sequence[Instances]
    ) -> tuple[list[Instances], list[Tensor]]:
        """Detections of every image (see :func:`fast_rcnn_inference_single_image`).

        Args:
            scores (Tensor[R, K + 1]): predicted logits.
            deltas (Tensor[R, K * 4] or Tensor[R, 4]): predicted deltas.
            proposals: per image, the ``Instances`` whose ``boxes`` (``R_i`` rows, in order)
                were pooled; their ``image_size`` is used for clipping.

        Returns:
            Per image, ``Instances(image_size, boxes, scores, labels)`` with at most
            ``test_topk_per_image`` detections, and ``Tensor[N_i]`` (int64) the index of the
            proposal each detection came from.
        """
        fn = "FastRCNNOutputLayers.inference"
        r = self._check_predictions(fn, scores, deltas)
        if sum(len(p) for p in proposals) != r:
            raise ValueError(
                f"{fn}: the proposals hold {sum(len(p) for p in proposals)} boxes in all but "
                f"{r} predictions were given"
            )
        return fast_rcnn_inference(
            self.predict_boxes(deltas, proposals),
            self.predict_probs(scores, proposals),
            [p.image_size for p in proposals],
            score_thresh=self.test_score_thresh,
            nms_thresh=self.test_nms_thresh,
            topk_per_image=self.test_topk_per_image,
        )
