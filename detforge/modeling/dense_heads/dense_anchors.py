"""What anchor-based dense heads (RPN, RetinaNet) share: predictions in anchor order, anchor
matching and the box-regression loss.

Anchor order (``detforge.modeling.anchors``): per level, location-major (row-major over the map),
then the ``A`` anchors of a location. A head predicts ``C`` numbers per anchor as a map
``[B, A * C, H, W]`` whose channel ``a * C + c`` is anchor ``a``, number ``c``;
:func:`permute_to_n_hwa_k` turns it into ``[B, H * W * A, C]`` rows in anchor order, and the
levels concatenated along dim 1 give ``[B, sum(H * W * A), C]``, the order of
``torch.cat(anchor_generator(features))``.

The box-regression loss selects the foreground anchors first and encodes (or decodes) only
those: the same numbers as detectron2's ``_dense_box_regression_loss``, which encodes every
anchor and masks afterwards, because the coder works on each box on its own.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from detforge.modeling.box_coder import BoxCoder
from detforge.modeling.matcher import Matcher
from detforge.ops.losses import giou_loss, smooth_l1_loss
from detforge.structures.boxes import box_iou

__all__ = ["dense_box_regression_loss", "match_anchors", "permute_to_n_hwa_k"]


def permute_to_n_hwa_k(x: Tensor, k: int) -> Tensor:
    """``Tensor[B, A * k, H, W] -> Tensor[B, H * W * A, k]``, rows in anchor order.

    Row ``(y * W + x) * A + a``, column ``c`` of the result is channel ``a * k + c`` of
    ``x[:, :, y, x]``. The result is contiguous (a view when ``x`` is channels-last).
    """
    b, _, h, w = x.shape
    return x.view(b, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, k)


@torch.no_grad()
def match_anchors(
    anchors: Tensor, gt_boxes: Tensor, matcher: Matcher
) -> tuple[Tensor, Tensor, Tensor]:
    """Match every anchor of one image to a ground-truth box by IoU.

    Args:
        anchors (Tensor[N, 4]): anchors of all levels, concatenated.
        gt_boxes (Tensor[G, 4]): ground-truth boxes (any floating dtype; used in the anchors'),
            on the anchors' device; ``G`` may be 0.
        matcher: labels each anchor from its IoU with the ground truth.

    Returns:
        matches (Tensor[N] int64): index of each anchor's ground truth (0 when ``G == 0``).
        match_labels (Tensor[N] int8): the matcher's label of each anchor (e.g. 1 foreground,
        0 background, -1 ignored).
        matched_boxes (Tensor[N, 4]): ``gt_boxes[matches]`` in the anchors' dtype (zeros when
        ``G == 0``); meaningful for foreground anchors only.
    """
    boxes = gt_boxes.to(anchors.dtype)
    matches, match_labels = matcher(box_iou(boxes, anchors))  # [N], [N]
    matched_boxes = boxes[matches] if len(boxes) > 0 else torch.zeros_like(anchors)
    return matches, match_labels, matched_boxes


def dense_box_regression_loss(
    anchors: Tensor,
    pred_deltas: Tensor,
    matched_boxes: Tensor,
    foreground: Tensor,
    *,
    box_coder: BoxCoder,
    loss_type: Literal["smooth_l1", "giou"],
    smooth_l1_beta: float,
) -> Tensor:
    """Box-regression loss summed over the foreground anchors of a batch.

    Args:
        anchors (Tensor[N, 4]): anchors of all levels (the same for every image).
        pred_deltas (Tensor[B, N, 4]): predicted deltas, in anchor order.
        matched_boxes (Tensor[B, N, 4]): each anchor's ground-truth box.
        foreground (Tensor[B, N] bool): the anchors that regress.
        box_coder: encodes the targets (``"smooth_l1"``) or decodes the predictions (``"giou"``).
        loss_type: ``"smooth_l1"`` on encoded deltas or ``"giou"`` on decoded boxes.
        smooth_l1_beta: change point of the smooth-L1 loss (0 is L1).

    Returns:
        Tensor: scalar sum over the ``F`` foreground anchors (0 when there are none).
    """
    fg_anchors = anchors.expand(foreground.shape[0], -1, -1)[foreground]  # [F, 4]
    fg_deltas = pred_deltas[foreground]  # [F, 4]
    fg_boxes = matched_boxes[foreground]  # [F, 4]
    if loss_type == "smooth_l1":
        gt_deltas = box_coder.encode(fg_anchors, fg_boxes)
        return smooth_l1_loss(fg_deltas, gt_deltas, beta=smooth_l1_beta, reduction="sum")
    pred_boxes = box_coder.decode(fg_deltas, fg_anchors)
    return giou_loss(pred_boxes, fg_boxes.to(pred_boxes.dtype), reduction="sum")
