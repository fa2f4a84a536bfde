"""Region Proposal Network (Ren et al., 2015) with FPN support.

Semantics follow detectron2's ``RPN`` exactly where results depend on them (anchor order,
label sampling, per-level pre-NMS top-k, clipping, minimum size, NMS *within each level*, per-image
post-NMS top-k), so that converted detectron2 checkpoints give the same proposals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detforge.modeling.anchors import AnchorGenerator
from detforge.modeling.box_coder import BoxCoder
from detforge.modeling.dense_heads.dense_anchors import (
    dense_box_regression_loss,
    match_anchors,
    permute_to_n_hwa_k,
)
from detforge.modeling.matcher import Matcher
from detforge.modeling.sampling import subsample_labels
from detforge.ops.nms import batched_nms
from detforge.structures.boxes import clip_boxes, nonempty_boxes
from detforge.structures.instances import Instances

__all__ = ["RPN", "RPNHead", "find_top_proposals"]


class RPNHead(nn.Module):
    """A shared 3x3 conv + ReLU, then 1x1 convs for objectness and box deltas, on every level.

    Args:
        in_channels: channels of every input level.
        num_anchors: anchors per location ``A`` (the same on every level).
        box_dim: numbers per box delta (4).
    """

    def __init__(self, in_channels: int, num_anchors: int, *, box_dim: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(in_channels, num_anchors * box_dim, 1)
        for layer in (self.conv, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Predict on each level.

        Args:
            features: ``Tensor[B, C, H_l, W_l]`` per level.

        Returns:
            logits: ``Tensor[B, A, H_l, W_l]`` per level; deltas: ``Tensor[B, A * 4, H_l, W_l]``.
        """
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


def find_top_proposals(
    proposals: Sequence[Tensor],
    logits: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    *,
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
) -> list[Instances]:
    """Select proposals: top-k per level, clip, drop small boxes, NMS per level, top-k per image.

    Args:
        proposals: ``Tensor[B, N_l, 4]`` decoded boxes per level.
        logits: ``Tensor[B, N_l]`` objectness logits per level.
        image_sizes: ``(height, width)`` of each image.
        nms_thresh: IoU threshold of the NMS, applied within each level separately.
        pre_nms_topk: proposals kept per level and image before NMS.
        post_nms_topk: proposals kept per image after NMS.
        min_box_size: boxes with a side ``<=`` this (after clipping) are dropped.
        training: raise ``FloatingPointError`` on non-finite boxes or scores (the run diverged)
            instead of dropping them.

    Returns:
        One ``Instances`` per image with ``boxes`` and ``scores`` (the objectness *logits*),
        sorted by decreasing score; no labels.
    """
    num_images = len(image_sizes)
    device = proposals[0].device
    batch_idx = torch.arange(num_images, device=device)
    top_scores, top_boxes, level_ids = [], [], []
    for level, (boxes_l, logits_l) in enumerate(zip(proposals, logits, strict=True)):
        k = min(logits_l.shape[1], pre_nms_topk)
        scores_l, idx = logits_l.topk(k, dim=1)  # [B, k], sorted
        top_scores.append(scores_l)
        top_boxes.append(boxes_l[batch_idx[:, None], idx])  # [B, k, 4]
        level_ids.append(torch.full((k,), level, dtype=torch.int64, device=device))
    scores_all = torch.cat(top_scores, dim=1)
    boxes_all = torch.cat(top_boxes, dim=1)
    levels = torch.cat(level_ids)

    results = []
    for n, size in enumerate(image_sizes):
        boxes, scores, lvl = boxes_all[n], scores_all[n], levels
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        if not bool(valid.all()):
            if training:
                raise FloatingPointError(
                    "RPN: predicted proposal boxes or scores are Inf/NaN; training has diverged"
                )
            boxes, scores, lvl = boxes[valid], scores[valid], lvl[valid]
        boxes = clip_boxes(boxes, size)
        keep = nonempty_boxes(boxes, min_box_size)
        if not bool(keep.all()):
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
        keep = batched_nms(boxes, scores, lvl, nms_thresh)[:post_nms_topk]
        results.append(Instances(size, boxes=boxes[keep], scores=scores[keep]))
    return results


class RPN(nn.Module):
    """Region Proposal Network.

    Args:
        in_features: names of the feature maps to use, finest first (e.g. ``p2 .. p6``).
        head: predicts objectness and deltas (e.g. :class:`RPNHead`).
        anchor_generator: anchors per level; its levels match ``in_features``.
        anchor_matcher: labels anchors from their IoU with the ground truth.
        box_coder: encodes the regression targets and decodes the proposals.
        batch_size_per_image: anchors sampled per image for the losses.
        positive_fraction: largest fraction of positives among them.
        pre_nms_topk: ``(train, test)`` proposals per level and image before NMS.
        post_nms_topk: ``(train, test)`` proposals per image after NMS.
        nms_thresh: NMS IoU threshold.
        min_box_size: proposals with a side ``<=`` this are dropped.
        box_reg_loss_type: ``"smooth_l1"`` on deltas or ``"giou"`` on decoded boxes.
        smooth_l1_beta: beta of the smooth-L1 loss (0 is L1).
        loss_weights: factors of ``loss_rpn_cls`` and ``loss_rpn_box``.
    """

    def __init__(
        self,
        *,
        in_features: Sequence[str],
        head: nn.Module,
        anchor_generator: AnchorGenerator,
        anchor_matcher: Matcher,
        box_coder: BoxCoder,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_topk: tuple[int, int] = (2000, 1000),
        post_nms_topk: tuple[int, int] = (1000, 1000),
        nms_thresh: float = 0.7,
        min_box_size: float = 0.0,
        box_reg_loss_type: Literal["smooth_l1", "giou"] = "smooth_l1",
        smooth_l1_beta: float = 0.0,
        loss_weights: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        if len(in_features) != anchor_generator.num_levels:
            raise ValueError(
                f"RPN: {len(in_features)} in_features but the anchor generator has "
                f"{anchor_generator.num_levels} levels"
            )
        if box_reg_loss_type not in ("smooth_l1", "giou"):
            raise ValueError(f"RPN: unknown box_reg_loss_type {box_reg_loss_type!r}")
        self.in_features = list(in_features)
        self.head = head
        self.anchor_generator = anchor_generator
        self.anchor_matcher = anchor_matcher
        self.box_coder = box_coder
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.nms_thresh = nms_thresh
        self.min_box_size = min_box_size
        self.box_reg_loss_type = box_reg_loss_type
        self.smooth_l1_beta = smooth_l1_beta
        self.loss_weights = {"loss_rpn_cls": 1.0, "loss_rpn_box": 1.0, **(loss_weights or {})}

    def forward(
        self,
        image_sizes: Sequence[tuple[int, int]],
        features: dict[str, Tensor],
        targets: Sequence[Instances] | None = None,
    ) -> tuple[list[Instances], dict[str, Tensor]]:
        """Propose boxes, and in training compute the RPN losses.

        Args:
            image_sizes: ``(height, width)`` of each image (before padding).
            features: named feature maps ``Tensor[B, C, H_l, W_l]``.
            targets: ground truth per image (``boxes``), needed in training.

        Returns:
            proposals: per image, ``Instances`` with ``boxes`` and ``scores`` (objectness logits);
            losses: ``{"loss_rpn_cls", "loss_rpn_box"}`` in training, else empty.
        """
        feats = [features[f] for f in self.in_features]
        anchors = self.anchor_generator(feats)  # list of [N_l, 4]
        logits, deltas = self.head(feats)
        # [B, A, H, W] -> [B, H*W*A]; [B, A*4, H, W] -> [B, H*W*A, 4] (the anchor order)
        logits = [permute_to_n_hwa_k(x, 1).squeeze(-1) for x in logits]
        deltas = [permute_to_n_hwa_k(x, 4) for x in deltas]
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("RPN: `targets` are required in training mode")
            labels, matched_boxes = self.label_and_sample_anchors(torch.cat(anchors), targets)
            losses = self.losses(anchors, logits, labels, deltas, matched_boxes)
        mode = 0 if self.training else 1
        with torch.no_grad():
            decoded = [self._decode(d, a) for d, a in zip(deltas, anchors, strict=True)]
            proposals = find_top_proposals(
                decoded,
                [x.detach() for x in logits],
                image_sizes,
                nms_thresh=self.nms_thresh,
                pre_nms_topk=self.pre_nms_topk[mode],
                post_nms_topk=self.post_nms_topk[mode],
                min_box_size=self.min_box_size,
                training=self.training,
            )
        return proposals, losses

    def _decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        b, n = deltas.shape[:2]
        boxes = self.box_coder.decode(
            deltas.detach().reshape(-1, 4), anchors.repeat(b, 1)
        )  # [B * N, 4]
        return boxes.view(b, n, 4)

    @torch.no_grad()
    def label_and_sample_anchors(
        self, anchors: Tensor, targets: Sequence[Instances]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Label every anchor 1 (foreground), 0 (background) or -1 (ignored), after sampling.

        Args:
            anchors (Tensor[N, 4]): all anchors of all levels.
            targets: ground truth per image.

        Returns:
            labels: ``Tensor[N]`` int64 per image; matched ground-truth boxes: ``Tensor[N, 4]``
            per image (zeros for an image without ground truth).
        """
        labels, matched = [], []
        for t in targets:
            _, lab, boxes = match_anchors(anchors, t.boxes, self.anchor_matcher)
            lab = lab.to(torch.int64)
            pos, neg = subsample_labels(lab, self.batch_size_per_image, self.positive_fraction, 0)
            lab = torch.full_like(lab, -1)
            lab[pos] = 1
            lab[neg] = 0
            labels.append(lab)
            matched.append(boxes)
        return labels, matched

    def losses(
        self,
        anchors: Sequence[Tensor],
        logits: Sequence[Tensor],
        labels: Sequence[Tensor],
        deltas: Sequence[Tensor],
        matched_boxes: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        """Objectness (binary cross-entropy) and box regression losses, both summed over the
        sampled anchors and divided by ``batch_size_per_image * B``."""
        gt_labels = torch.stack(list(labels))  # [B, N]
        valid = gt_labels >= 0
        loss_box = dense_box_regression_loss(
            torch.cat(list(anchors)),  # [N, 4]
            torch.cat(list(deltas), dim=1),  # [B, N, 4]
            torch.stack(list(matched_boxes)),  # [B, N, 4]
            gt_labels == 1,
            box_coder=self.box_coder,
            loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        pred_logits = torch.cat(list(logits), dim=1)  # [B, N]
        loss_cls = F.binary_cross_entropy_with_logits(
            pred_logits[valid], gt_labels[valid].to(pred_logits.dtype), reduction="sum"
        )
        normalizer = self.batch_size_per_image * gt_labels.shape[0]
        return {
            "loss_rpn_cls": loss_cls / normalizer * self.loss_weights["loss_rpn_cls"],
            "loss_rpn_box": loss_box / normalizer * self.loss_weights["loss_rpn_box"],
        }
