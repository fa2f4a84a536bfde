"""Non-maximum suppression: greedy NMS, per-category NMS and Soft-NMS.

Conventions shared by every function here:

* Boxes are xyxy in absolute pixels (see ``detforge.structures.boxes``); IoU is that of
  ``box_iou``: no "+1", and two boxes with an empty union have IoU 0. A box is suppressed when
  its IoU with a kept box is *strictly greater* than ``iou_threshold``, as in torchvision; the
  comparison is made in the compute dtype, so an IoU equal to the threshold (say 3/10 against
  0.3) never suppresses.
* Boxes are visited by decreasing score; equal scores are visited lower index first (a stable
  sort), and results are returned in that order.
* IoU is computed in float32, or in float64 for float64 boxes; float16 and bfloat16 inputs are
  upcast. The thresholds may be any finite float: with ``iou_threshold >= 1`` nothing is
  suppressed, with ``iou_threshold < 0`` every box is suppressed by the top one (per category).
* Inputs may live on any device and need not be contiguous; no gradient flows through NMS.

No compiled kernel exists yet, so every function validates its arguments and then dispatches to
the vectorised reference in ``detforge.ops._reference.nms`` (where ``nms`` and ``batched_nms``
on at most ``_SMALL`` CPU boxes take a path whose cost is a fixed, small number of NumPy calls);
a kernel registered as ``torch.ops.detforge.nms`` would be dispatched to from here.
"""

from __future__ import annotations

import math
import numbers
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from detforge.ops._reference import nms as _ref
from detforge.utils.checks import (
    check_boxes,
    check_floating,
    check_same_device,
    check_shape,
    check_tensor,
)

__all__ = ["SoftNMSMethod", "batched_nms", "batched_soft_nms", "nms", "soft_nms"]

SoftNMSMethod = Literal["linear", "gaussian"]
_METHODS = ("linear", "gaussian")


def _check_finite(fn: str, name: str, x: Tensor, what: str) -> None:
    """Raise ``ValueError`` naming the first non-finite entry (a row of ``x`` for boxes)."""
    bad = ~torch.isfinite(x)
    if bad.dim() > 1:
        bad = bad.any(dim=1)
    if bad.numel() and bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{fn}: `{name}` must be finite; {what} {i} is {x[i].tolist()}")


_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def _value_stats(b: Tensor, s: Tensor) -> tuple[float, float, float, float]:
    """Smallest and largest coordinate, smallest width or height, and sum of the scores.

    One reduction of each and one device sync; on the CPU in NumPy (on the same memory), whose
    calls cost a fraction of a tensor op's, for NMS calls on small inputs.
    """
    if b.device.type == "cpu" and b.dtype in _NUMPY_FLOATS and s.dtype in _NUMPY_FLOATS:
        bn = b.numpy()
        with np.errstate(all="ignore"):  # inf - inf, overflows: flagged by the results
            sizes = bn[:, 2:] - bn[:, :2]
            return float(bn.min()), float(bn.max()), float(sizes.min()), float(s.numpy().sum())
    lo, hi = torch.aminmax(b)
    stats = torch.stack([lo, hi, (b[:, 2:] - b[:, :2]).amin(), s.sum()]).tolist()
    return stats[0], stats[1], stats[2], stats[3]


def _check_inputs(fn: str, boxes: object, scores: object, idxs: object = None) -> float:
    """Validate ``boxes`` [N, 4], ``scores`` [N] and, when given, category ``idxs`` [N].

    The values are checked with one reduction (and one device sync); only when it flags a problem
    do the detailed checks run, to name the first bad entry.

    Returns:
        float: the largest absolute coordinate (0 when there are no boxes).
    """
    b = check_tensor(boxes, "boxes", fn)
    check_shape(b, "boxes", fn, (None, 4))
    check_floating(b, "boxes", fn)
    s = check_tensor(scores, "scores", fn)
    check_shape(s, "scores", fn, (b.shape[0],))
    check_floating(s, "scores", fn)
    if idxs is None:
        check_same_device(fn, boxes=b, scores=s)
    else:
        i = check_tensor(idxs, "idxs", fn)
        check_shape(i, "idxs", fn, (b.shape[0],))
        if i.dtype.is_floating_point or i.dtype.is_complex or i.dtype == torch.bool:
            raise TypeError(f"{fn}: `idxs` must be an integer tensor, got {i.dtype}")
        check_same_device(fn, boxes=b, scores=s, idxs=i)
    if b.numel() == 0:
        return 0.0
    b, s = b.detach(), s.detach()
    lo, hi, size, total = _value_stats(b, s)
    # NaN fails `>= 0` and propagates through min, max and sum; an infinite coordinate or score
    # makes the extent or the sum infinite (a sum that merely overflows only costs the detailed
    # checks below, which then pass)
    extent = max(-lo, hi)
    if size >= 0 and math.isfinite(extent) and math.isfinite(total):
        return extent
    _check_finite(fn, "boxes", b, "box")
    check_boxes(b, "boxes", fn)
    _check_finite(fn, "scores", s, "score")
    return extent


def _check_float(fn: str, name: str, value: object, *, positive: bool = False) -> float:
    """Return ``value`` as a float; it must be a finite real number (and > 0 if ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}: `{name}` must be a float, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0):
        need = "a finite number > 0" if positive else "finite"
        raise ValueError(f"{fn}: `{name}` must be {need}, got {value!r}")
    return v


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Repeatedly keeps the highest-scoring remaining box and drops every remaining box whose IoU
    with it is greater than ``iou_threshold``. Equal scores are taken lower index first.

    Args:
        boxes (Tensor[N, 4]): xyxy, absolute pixels, floating, finite, x2 >= x1 and y2 >= y1
            (zero-size boxes are allowed: they overlap nothing).
        scores (Tensor[N]): floating, finite, on the device of ``boxes``.
        iou_threshold: boxes overlapping a kept box with IoU > this are suppressed; any finite
            float (>= 1 keeps everything, < 0 keeps only the top box).

    Returns:
        Tensor[K] (int64): indices of the kept boxes, by decreasing score (ties: lower index
        first). Empty when N = 0.
    """
    extent = _check_inputs("nms", boxes, scores)
    t = _check_float("nms", "iou_threshold", iou_threshold)
    return _ref.nms(boxes, scores, t, extent)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS run independently within each category, in one call.

    Boxes of different categories never suppress each other. The result equals running
    :func:`nms` on each category and merging the kept indices by decreasing score, with equal
    scores ordered by index. No coordinate-offset trick is used, so large coordinates lose
    no precision.

    Args:
        boxes (Tensor[N, 4]): xyxy, absolute pixels, as for :func:`nms`.
        scores (Tensor[N]): floating, finite.
        idxs (Tensor[N]): integer category of each box (any values, e.g. class labels or image
            indices).
        iou_threshold: as for :func:`nms`.

    Returns:
        Tensor[K] (int64): indices of the kept boxes, by decreasing score (ties: lower index
        first).
    """
    extent = _check_inputs("batched_nms", boxes, scores, idxs)
    t = _check_float("batched_nms", "iou_threshold", iou_threshold)
    return _ref.batched_nms(boxes, scores, idxs, t, extent)


def _check_soft(
    fn: str, method: object, iou_threshold: object, sigma: object, score_threshold: object
) -> tuple[SoftNMSMethod, float, float, float]:
    """Validate the Soft-NMS options; return them as ``(method, iou, sigma, score)``."""
    if method not in _METHODS:
        raise ValueError(f"{fn}: `method` must be one of {_METHODS}, got {method!r}")
    m: SoftNMSMethod = "linear" if method == "linear" else "gaussian"
    return (
        m,
        _check_float(fn, "iou_threshold", iou_threshold),
        _check_float(fn, "sigma", sigma, positive=True),
        _check_float(fn, "score_threshold", score_threshold),
    )


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    *,
    method: SoftNMSMethod = "linear",
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al., 2017): decay the scores of overlapping boxes instead of dropping.

    Repeatedly picks the remaining box with the highest current score (ties: lower index), then
    multiplies the score of every other remaining box by a weight of its IoU with the pick:
    ``1 - IoU`` if ``IoU > iou_threshold`` else 1 (``"linear"``), or ``exp(-IoU**2 / sigma)``
    (``"gaussian"``, ``iou_threshold`` unused). A box whose score is below ``score_threshold``
    (initially or after a decay) is dropped. This is the mmcv / Detectron variant, except that
    the first pick is also subject to ``score_threshold``. The cost is one vectorised step per
    kept box, O(K * N).

    Args:
        boxes (Tensor[N, 4]): xyxy, absolute pixels, as for :func:`nms`.
        scores (Tensor[N]): floating, finite.
        method: ``"linear"`` or ``"gaussian"``.
        iou_threshold: IoU above which the linear method decays a score.
        sigma: width of the gaussian penalty, > 0.
        score_threshold: boxes with a (decayed) score below this are dropped.

    Returns:
        keep (Tensor[K] int64): indices of the kept boxes in the order they were picked, i.e. by
        decreasing new score (ties: lower index first), and new_scores (Tensor[K], dtype of
        ``scores``, no gradient): the decayed score of each kept box when it was picked.
    """
    _check_inputs("soft_nms", boxes, scores)
    m, t, sg, st = _check_soft("soft_nms", method, iou_threshold, sigma, score_threshold)
    return _ref.soft_nms(boxes, scores, m, t, sg, st)


def batched_soft_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    *,
    method: SoftNMSMethod = "linear",
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS run independently within each category, in one call.

    Args:
        boxes (Tensor[N, 4]): xyxy, absolute pixels, as for :func:`nms`.
        scores (Tensor[N]): floating, finite.
        idxs (Tensor[N]): integer category of each box.
        method, iou_threshold, sigma, score_threshold: as for :func:`soft_nms`.

    Returns:
        keep (Tensor[K] int64) and new_scores (Tensor[K]) as for :func:`soft_nms`, merged over
        the categories by decreasing new score (ties: lower index first).
    """
    _check_inputs("batched_soft_nms", boxes, scores, idxs)
    m, t, sg, st = _check_soft("batched_soft_nms", method, iou_threshold, sigma, score_threshold)
    return _ref.batched_soft_nms(boxes, scores, idxs, m, t, sg, st)
