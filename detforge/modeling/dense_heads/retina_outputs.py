"""RetinaNet's losses and inference, from the head's predictions in anchor order.

detectron2's ``RetinaNet`` semantics wherever results depend on them, so that converted
detectron2 checkpoints give the same detections:

- **Train**: ``anchor_matcher`` labels anchors by IoU (background < 0.4 <= ignored < 0.5 <=
  foreground, plus each ground truth's best anchors). ``loss_cls`` is the sigmoid focal loss
  summed over non-ignored anchors and all classes (background: all-zero targets); ``loss_box``
  is smooth-L1 on encoded deltas (or GIoU on decoded boxes) summed over foreground anchors. Both
  are divided by ``loss_normalizer``, an EMA of the number of foreground anchors *per process*
  updated once per training forward: ``new = m * old + (1 - m) * max(num_fg, 1)``, starting at
  ``loss_normalizer_init`` (100). ``num_fg`` counts the foreground anchors of this process's
  images; under DDP (``torch.distributed`` initialised, world size ``P > 1``) it is instead the
  count summed over all processes (an all-reduce) divided by ``P``, as in mmdetection's
  ``reduce_mean`` of the positives, so every process holds the same normaliser. Because DDP
  averages gradients, ``P`` processes of ``n`` images then train exactly like one process of
  ``P * n`` images whose normaliser (and ``loss_normalizer_init``) is ``P`` times larger: the
  EMA is in units of foreground anchors per process's batch, so scale ``loss_normalizer_init``
  with the images per process (detectron2's standard schedules use 100 with 2 images per
  GPU). The all-reduce is a collective: every process must run the same number of training
  forwards.
- **Infer**, per image and level: sigmoid of the ``[H * W * A, K]`` logits, flattened; keep
  scores ``> test_score_thresh``, then the ``test_topk_candidates`` best; flat index ``i`` is
  anchor ``i // K``, class ``i % K``; decode only those boxes. Concatenate the levels, run
  class-wise NMS (``test_nms_thresh``), keep the top ``max_detections_per_image``. Boxes are
  *not* clipped before NMS (see ``dense_inference.py``).

Deliberate differences that leave results on clean data unchanged: zero-size ground-truth boxes
are dropped before matching (detectron2's mapper drops them earlier); score ties in the per-level
top-k are broken by index (stable sort) rather than in ``topk``'s unspecified order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from detforge.modeling.box_coder import BoxCoder
from detforge.modeling.dense_heads.dense_anchors import dense_box_regression_loss, match_anchors
from detforge.modeling.dense_heads.dense_inference import dense_detection_inference
from detforge.modeling.matcher import Matcher
from detforge.ops.focal_loss import sigmoid_focal_loss_from_labels
from detforge.structures.boxes import nonempty_boxes
from detforge.structures.instances import Instances
from detforge.utils.checks import check_float, check_int
from detforge.utils.comm import reduce_mean

__all__ = ["RetinaNetOutputs"]

_FN = "RetinaNet"  # the settings are the detector's constructor arguments


class RetinaNetOutputs:
    """Anchor labels, losses and detections of RetinaNet (see the module docstring).

    No parameters: the head's layers are ``RetinaNetHead``; this object holds the settings and
    the loss normaliser's state. ``K`` is ``num_classes``; anchors of all levels are in the
    order of ``torch.cat(anchor_generator(features))``.

    Args:
        box_coder: encodes regression targets and decodes predictions (weights ``(1, 1, 1, 1)``).
        anchor_matcher: labels anchors from their IoU with the ground truth
            (``Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)``).
        num_classes: number of classes ``K`` (no background class).
        focal_loss_alpha: focal loss weight of positives (negative disables it).
        focal_loss_gamma: focal loss focusing exponent.
        smooth_l1_beta: smooth-L1 change point (0 is L1); used with ``"smooth_l1"``.
        box_reg_loss_type: ``"smooth_l1"`` on deltas or ``"giou"`` on decoded boxes.
        test_score_thresh: inference keeps class scores (probabilities) strictly above this.
        test_topk_candidates: at most this many (anchor, class) candidates per level and image.
        test_nms_thresh: IoU threshold of the class-wise NMS.
        max_detections_per_image: detections kept per image after NMS.
        loss_normalizer_momentum: momentum ``m`` of the foreground-count EMA.
        loss_normalizer_init: its starting value.
    """

    def __init__(
        self,
        *,
        box_coder: BoxCoder,
        anchor_matcher: Matcher,
        num_classes: int,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        smooth_l1_beta: float = 0.1,
        box_reg_loss_type: Literal["smooth_l1", "giou"] = "smooth_l1",
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
        loss_normalizer_momentum: float = 0.9,
        loss_normalizer_init: float = 100.0,
    ) -> None:
        if box_reg_loss_type not in ("smooth_l1", "giou"):
            raise ValueError(f"{_FN}: `box_reg_loss_type` must be 'smooth_l1' or 'giou'")
        self.box_coder = box_coder
        self.anchor_matcher = anchor_matcher
        self.num_classes = check_int(num_classes, "num_classes", _FN, low=1)
        self.focal_loss_alpha = check_float(focal_loss_alpha, "focal_loss_alpha", _FN, high=1)
        self.focal_loss_gamma = check_float(focal_loss_gamma, "focal_loss_gamma", _FN, low=0)
        self.smooth_l1_beta = check_float(smooth_l1_beta, "smooth_l1_beta", _FN, low=0)
        self.box_reg_loss_type: Literal["smooth_l1", "giou"] = box_reg_loss_type
        self.test_score_thresh = check_float(test_score_thresh, "test_score_thresh", _FN, high=1)
        self.test_topk_candidates = check_int(
            test_topk_candidates, "test_topk_candidates", _FN, low=1
        )
        self.test_nms_thresh = check_float(test_nms_thresh, "test_nms_thresh", _FN, low=0, high=1)
        self.max_detections_per_image = check_int(
            max_detections_per_image, "max_detections_per_image", _FN, low=1
        )
        self.loss_normalizer_momentum = check_float(
            loss_normalizer_momentum, "loss_normalizer_momentum", _FN, low=0, high=1
        )
        #: EMA of the foreground-anchor count per process (mean over processes under DDP; see
        #: the module docstring); a plain attribute, not saved in the state dict.
        self.loss_normalizer = check_float(loss_normalizer_init, "loss_normalizer_init", _FN, low=1)

    def __repr__(self) -> str:
        return (
            f"RetinaNetOutputs(num_classes={self.num_classes}, "
            f"box_reg_loss_type={self.box_reg_loss_type!r}, "
            f"test_score_thresh={self.test_score_thresh}, test_nms_thresh={self.test_nms_thresh})"
        )

    @torch.no_grad()
    def label_anchors(
        self, anchors: Tensor, targets: Sequence[Instances]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Assign a class (or background / ignore) and a ground-truth box to every anchor.

        Args:
            anchors (Tensor[N, 4]): anchors of all levels, concatenated.
            targets: ground truth per image (``boxes``, ``labels``), on the anchors' device.

        Returns:
            labels: per image ``Tensor[N]`` int64 with values in ``[0, K)`` (foreground class),
            ``K`` (background) or ``-1`` (ignored). matched: per image ``Tensor[N, 4]``, the
            matched ground-truth box of each anchor (meaningful for foreground anchors only;
            zeros for an image without ground truth).
        """
        labels, matched = [], []
        for t in targets:
            t = t[nonempty_boxes(t.boxes)]
            idx, match_labels, boxes = match_anchors(anchors, t.boxes, self.anchor_matcher)
            if len(t) > 0:
                assert t.labels is not None
                lab = t.labels.to(torch.int64)[idx]
                lab[match_labels == 0] = self.num_classes
                lab[match_labels == -1] = -1
            else:
                lab = torch.full_like(idx, self.num_classes)
            labels.append(lab)
            matched.append(boxes)
        return labels, matched

    def losses(
        self,
        anchors: Sequence[Tensor],
        logits: Sequence[Tensor],
        deltas: Sequence[Tensor],
        targets: Sequence[Instances],
    ) -> dict[str, Tensor]:
        """Focal classification loss and box regression loss, over the EMA foreground count.

        Updates ``loss_normalizer`` (see the module docstring); under DDP this all-reduces the
        foreground count, so every process must call it.

        Args:
            anchors (list[Tensor[N_l, 4]]): anchors per level.
            logits (list[Tensor[B, N_l, K]]): class logits per level, in anchor order.
            deltas (list[Tensor[B, N_l, 4]]): box deltas per level, in anchor order.
            targets: ground truth per image (``boxes``, ``labels``), on the anchors' device.

        Returns:
            dict[str, Tensor]: ``loss_cls`` and ``loss_box``, scalars.
        """
        all_anchors = torch.cat(list(anchors))  # [N, 4]
        labels, matched = self.label_anchors(all_anchors, targets)
        gt_labels = torch.stack(labels)  # [B, N]
        fg = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_fg = float(reduce_mean(fg.sum()))  # a collective under DDP (see the module doc)
        m = self.loss_normalizer_momentum
        self.loss_normalizer = m * self.loss_normalizer + (1 - m) * max(num_fg, 1.0)

        # Focal loss summed over the valid anchors (label -1 is ignored), fused (see the op).
        loss_cls = sigmoid_focal_loss_from_labels(
            torch.cat(list(logits), dim=1).flatten(0, 1),  # [B * N, K]
            gt_labels.flatten(),
            alpha=self.focal_loss_alpha,
            gamma=self.focal_loss_gamma,
        )
        loss_box = dense_box_regression_loss(
            all_anchors,
            torch.cat(list(deltas), dim=1),  # [B, N, 4]
            torch.stack(matched),  # [B, N, 4]
            fg,
            box_coder=self.box_coder,
            loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        return {
            "loss_cls": loss_cls / self.loss_normalizer,
            "loss_box": loss_box / self.loss_normalizer,
        }

    @torch.no_grad()
    def inference(
        self,
        anchors: Sequence[Tensor],
        logits: Sequence[Tensor],
        deltas: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Instances]:
        """Detections of every image, in input-image coordinates (before rescaling).

        Args:
            anchors (list[Tensor[N_l, 4]]): anchors per level.
            logits (list[Tensor[B, N_l, K]]): class logits per level, in anchor order.
            deltas (list[Tensor[B, N_l, 4]]): box deltas per level, in anchor order.
            image_sizes: ``(height, width)`` of each image before padding.

        Returns:
            list[Instances]: per image, ``boxes``, ``scores`` (probabilities) and ``labels``,
            sorted by decreasing score (threshold, per-level top-k, decode, class-wise NMS:
            :func:`~detforge.modeling.dense_heads.dense_inference.dense_detection_inference`);
            boxes are not clipped.
        """
        return [
            dense_detection_inference(
                anchors,
                [x[i] for x in logits],
                [x[i] for x in deltas],
                size,
                box_coder=self.box_coder,
                num_classes=self.num_classes,
                score_thresh=self.test_score_thresh,
                topk_candidates=self.test_topk_candidates,
                nms_thresh=self.test_nms_thresh,
                max_detections=self.max_detections_per_image,
            )
            for i, size in enumerate(image_sizes)
        ]
