"""Detection losses in pure PyTorch: sigmoid focal loss, smooth-L1, L1 and GIoU.

The definitions, constants and order of operations are those of fvcore (which detectron2 uses),
so losses computed here match detectron2's to the last bit on the same inputs:

* :func:`sigmoid_focal_loss` (Lin et al., 2017): ``alpha_t * (1 - p_t) ** gamma * BCE``; a
  negative ``alpha`` switches the class weighting off.
* :func:`smooth_l1_loss` (Fast R-CNN): ``0.5 * x ** 2 / beta`` for ``|x| < beta``, else
  ``|x| - 0.5 * beta``; with ``beta < 1e-5`` it is exactly the L1 loss (which also avoids NaN
  gradients at ``beta = 0``). It is the Huber loss divided by ``beta``, not the Huber loss.
* :func:`giou_loss` (Rezatofighi et al., 2019): ``1 - GIoU`` of *paired* boxes, with ``eps`` in
  both denominators.

``reduction`` is ``"none"``, ``"mean"`` or ``"sum"``. The mean of an empty input is ``0`` (kept
in the autograd graph) rather than NaN, so an image without foreground does not poison the
total loss. Cross-entropy is ``torch.nn.functional.cross_entropy``; no wrapper is needed.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from detforge.utils.checks import check_floating, check_tensor

__all__ = ["Reduction", "giou_loss", "l1_loss", "sigmoid_focal_loss", "smooth_l1_loss"]

Reduction = Literal["none", "mean", "sum"]
_REDUCTIONS = ("none", "mean", "sum")


def _check_pair(fn: str, names: tuple[str, str], x: object, y: object, reduction: str) -> None:
    """Validate two same-shaped floating tensors on one device and the reduction."""
    a = check_tensor(x, names[0], fn)
    b = check_tensor(y, names[1], fn)
    check_floating(a, names[0], fn)
    check_floating(b, names[1], fn)
    if a.shape != b.shape:
        raise ValueError(
            f"{fn}: `{names[0]}` and `{names[1]}` must have the same shape, got "
            f"{list(a.shape)} and {list(b.shape)}"
        )
    if a.device != b.device:
        raise ValueError(f"{fn}: `{names[0]}` on {a.device}, `{names[1]}` on {b.device}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{fn}: `reduction` must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction``; the mean of an empty tensor is a differentiable 0."""
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    return loss


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: Reduction = "none",
) -> Tensor:
    """Focal loss on sigmoid logits (RetinaNet).

    ``loss = alpha_t * (1 - p_t) ** gamma * BCE(inputs, targets)`` with ``p = sigmoid(inputs)``,
    ``p_t = p * t + (1 - p) * (1 - t)`` and ``alpha_t = alpha * t + (1 - alpha) * (1 - t)``.
    With ``gamma = 0`` and ``alpha < 0`` it is binary cross-entropy with logits.

    Args:
        inputs (Tensor[*]): logits, any shape.
        targets (Tensor[*]): same shape; 1 for positives, 0 for negatives (soft targets in
            ``[0, 1]`` are accepted).
        alpha: weight of positives in ``[0, 1]``; negatives get ``1 - alpha``. A negative value
            disables the weighting (fvcore's convention).
        gamma: focusing exponent, ``>= 0``.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
        Tensor[*] for ``"none"``, otherwise a scalar tensor.
    """
    fn = "sigmoid_focal_loss"
    _check_pair(fn, ("inputs", "targets"), inputs, targets, reduction)
    if not math.isfinite(alpha) or alpha > 1:
        raise ValueError(f"{fn}: `alpha` must be <= 1 (negative disables it), got {alpha}")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"{fn}: `gamma` must be finite and >= 0, got {gamma}")
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return _reduce(loss, reduction)


def smooth_l1_loss(
    input: Tensor,
    target: Tensor,
    *,
    beta: float,
    reduction: Reduction = "none",
) -> Tensor:
    """Smooth-L1 loss of Fast R-CNN (fvcore's definition).

    ``0.5 * x ** 2 / beta`` where ``|x| < beta``, ``|x| - 0.5 * beta`` elsewhere, with
    ``x = input - target``. For ``beta < 1e-5`` the loss is exactly ``|x|``.

    Args:
        input (Tensor[*]): predictions, any shape (e.g. ``[R, 4]`` box deltas).
        target (Tensor[*]): targets of the same shape.
        beta: L1/L2 change point, ``>= 0``.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
        Tensor[*] for ``"none"``, otherwise a scalar tensor.
    """
    fn = "smooth_l1_loss"
    _check_pair(fn, ("input", "target"), input, target, reduction)
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"{fn}: `beta` must be finite and >= 0, got {beta}")
    n = torch.abs(input - target)
    # beta < 1e-5 is exactly L1: `where` would give NaN gradients through 0.5 * n**2 / 0
    loss = n if beta < 1e-5 else torch.where(n < beta, 0.5 * n**2 / beta, n - 0.5 * beta)
    return _reduce(loss, reduction)


def l1_loss(input: Tensor, target: Tensor, *, reduction: Reduction = "none") -> Tensor:
    """L1 loss ``|input - target|``.

    Args:
        input (Tensor[*]): predictions, any shape.
        target (Tensor[*]): targets of the same shape.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
        Tensor[*] for ``"none"``, otherwise a scalar tensor.
    """
    _check_pair("l1_loss", ("input", "target"), input, target, reduction)
    return _reduce(torch.abs(input - target), reduction)


def giou_loss(
    boxes1: Tensor,
    boxes2: Tensor,
    *,
    reduction: Reduction = "none",
    eps: float = 1e-7,
) -> Tensor:
    """``1 - GIoU`` of paired boxes (symmetric in its two arguments).

    ``GIoU = IoU - (area(C) - union) / area(C)`` with ``C`` the smallest box enclosing both;
    ``eps`` is added to the union and to ``area(C)`` before dividing. Unlike
    :func:`detforge.structures.boxes.generalized_box_iou`, which is pairwise ``[N, M]``, this
    compares ``boxes1[i]`` with ``boxes2[i]`` only. The loss is in ``[0, 2]``; identical boxes
    give 0.

    Args:
        boxes1 (Tensor[*, 4]): xyxy boxes (e.g. decoded predictions ``[R, 4]``) with
            ``x2 >= x1`` and ``y2 >= y1``.
        boxes2 (Tensor[*, 4]): xyxy boxes of the same shape, also ordered.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        eps: small positive number guarding the divisions.

    Returns:
        Tensor[*] for ``"none"``, otherwise a scalar tensor.
    """
    fn = "giou_loss"
    _check_pair(fn, ("boxes1", "boxes2"), boxes1, boxes2, reduction)
    if boxes1.dim() == 0 or boxes1.shape[-1] != 4:
        raise ValueError(f"{fn}: `boxes1` must have shape [..., 4], got {list(boxes1.shape)}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"{fn}: `eps` must be positive, got {eps}")
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        flat = boxes.reshape(-1, 4)
        bad = ~((flat[:, 2] >= flat[:, 0]) & (flat[:, 3] >= flat[:, 1]))
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"{fn}: `{name}` must be ordered xyxy boxes (x2 >= x1, y2 >= y1, no NaN); "
                f"box {i} (flattened) is {flat[i].tolist()} ({int(bad.sum())} bad boxes)"
            )

    # intersection; `where` (not clamp) so that non-overlapping pairs get exactly zero gradient
    ix1, iy1 = torch.max(x1, x1g), torch.max(y1, y1g)
    ix2, iy2 = torch.min(x2, x2g), torch.min(y2, y2g)
    overlap = (ix2 > ix1) & (iy2 > iy1)
    inter = torch.where(overlap, (ix2 - ix1) * (iy2 - iy1), torch.zeros_like(x1))
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)

    # smallest enclosing box
    cx1, cy1 = torch.min(x1, x1g), torch.min(y1, y1g)
    cx2, cy2 = torch.max(x2, x2g), torch.max(y2, y2g)
    area_c = (cx2 - cx1) * (cy2 - cy1)
    giou = iou - (area_c - union) / (area_c + eps)
    return _reduce(1 - giou, reduction)
