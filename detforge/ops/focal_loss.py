"""Fused sigmoid focal loss over class labels, for dense detectors.

RetinaNet's classification loss is a sum over every (anchor, class) pair: about 40 million
logits for two 800x1333 images with 80 classes. Written as elementwise tensor operations
(:func:`detforge.ops.losses.sigmoid_focal_loss`), autograd keeps a dozen intermediates of that
size and runs as many passes again backwards, and the one-hot targets and the gather of the
non-ignored anchors are full-size copies too. :func:`sigmoid_focal_loss_from_labels` takes the
integer labels instead and walks the rows in cache-sized chunks, computing the loss and its
gradient in the same pass (the gradient has a closed form), so backward is one multiplication.

With ``p = sigmoid(x)``, target ``t`` in {0, 1}, ``q = 1 - p_t`` (``p`` for a negative,
``1 - p`` for a positive) and ``ce = BCE(x, t)``::

    loss = alpha_t * q ** gamma * ce
    d loss / dx = alpha_t * ((p - t) * q ** gamma + gamma * q ** (gamma - 1) * p * (1 - p)
                             * (1 - 2 t) * ce)

The loss equals ``sigmoid_focal_loss(x[valid], one_hot, reduction="sum")`` up to float rounding
in the order of the summation (checked in float64 by the tests).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from detforge.utils.checks import check_floating, check_tensor

__all__ = ["sigmoid_focal_loss_from_labels"]

_FN = "sigmoid_focal_loss_from_labels"


def _chunk_loss_and_grad(
    x: Tensor, labels: Tensor, alpha: float, gamma: float, want_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Loss sum (float64 scalar) and gradient (x's shape) of one chunk of rows."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()  # half precision (AMP): compute in float32
    k = x.shape[1]
    valid = labels >= 0
    t = torch.zeros_like(x)
    fg = valid & (labels < k)
    t[fg.nonzero().squeeze(1), labels[fg]] = 1.0
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    q = p + t * (1 - 2 * p)  # 1 - p_t
    weight = q.pow(gamma) if gamma != 0 else torch.ones_like(q)
    if alpha >= 0:
        alpha_t = (1 - alpha) + t * (2 * alpha - 1)
        weight = weight * alpha_t
    else:
        alpha_t = None
    row_mask = valid.to(x.dtype)[:, None]
    loss = (weight * ce * row_mask).sum(dtype=torch.float64)
    if not want_grad:
        return loss, None
    grad = (p - t) * weight
    if gamma != 0:
        dq = p * (1 - p) * (1 - 2 * t)
        qg = q.pow(gamma - 1)
        if gamma < 1:  # q = 0 only where p is exactly 0 or 1, where dq = 0 too
            qg = torch.where(q > 0, qg, torch.zeros_like(qg))
        extra = gamma * qg * dq * ce
        grad = grad + (extra * alpha_t if alpha_t is not None else extra)
    return loss, grad * row_mask


class _FocalLossFromLabels(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, labels: Tensor, alpha: float, gamma: float, chunk_rows: int
    ) -> Tensor:
        want_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(logits) if want_grad else None
        total = torch.zeros((), dtype=torch.float64, device=logits.device)
        for start in range(0, logits.shape[0], chunk_rows):
            stop = start + chunk_rows
            loss, g = _chunk_loss_and_grad(
                logits[start:stop], labels[start:stop], alpha, gamma, want_grad
            )
            total += loss
            if grad is not None and g is not None:
                grad[start:stop] = g
        ctx.save_for_backward(grad)
        return total.to(logits.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad * grad_out.to(grad.dtype), None, None, None, None


def sigmoid_focal_loss_from_labels(
    logits: Tensor,
    labels: Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    chunk_rows: int = 4096,
) -> Tensor:
    """Summed sigmoid focal loss of ``[M, K]`` logits against class labels.

    Args:
        logits (Tensor[M, K]): one row of class logits per anchor (floating).
        labels (Tensor[M]): int64 per row: a class in ``[0, K)`` (that class is the positive,
            the others negatives), ``K`` for background (all ``K`` are negatives), ``-1`` to
            ignore the row (no loss, no gradient).
        alpha: weight of positives in ``[0, 1]``, negatives get ``1 - alpha``; negative
            disables the weighting.
        gamma: focusing exponent, ``>= 0``.
        chunk_rows: rows processed per step (memory/speed trade-off only).

    Returns:
        Tensor: the sum over valid rows and all classes, a scalar in ``logits``' dtype,
        differentiable with respect to ``logits``.
    """
    check_tensor(logits, "logits", _FN)
    check_floating(logits, "logits", _FN)
    check_tensor(labels, "labels", _FN)
    if logits.dim() != 2:
        raise ValueError(f"{_FN}: `logits` must be [M, K], got {list(logits.shape)}")
    if labels.shape != logits.shape[:1] or labels.dtype != torch.int64:
        raise ValueError(
            f"{_FN}: `labels` must be int64 of shape [{logits.shape[0]}], "
            f"got {labels.dtype} {list(labels.shape)}"
        )
    if labels.device != logits.device:
        raise ValueError(f"{_FN}: `labels` on {labels.device}, `logits` on {logits.device}")
    if not math.isfinite(alpha) or alpha > 1:
        raise ValueError(f"{_FN}: `alpha` must be <= 1 (negative disables it), got {alpha}")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"{_FN}: `gamma` must be finite and >= 0, got {gamma}")
    if chunk_rows < 1:
        raise ValueError(f"{_FN}: `chunk_rows` must be >= 1, got {chunk_rows}")
    out: Tensor = _FocalLossFromLabels.apply(logits, labels, alpha, gamma, chunk_rows)
    return out
