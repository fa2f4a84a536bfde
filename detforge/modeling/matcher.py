"""Threshold matcher: assign each prediction (anchor, proposal) to its best ground-truth box.

Given a quality matrix ``Tensor[G, N]`` (usually ``box_iou(gt_boxes, anchors)``), every
prediction ``n`` is matched to ``argmax_g quality[g, n]`` (the lowest index among ties, as
``torch.max`` returns it) and labelled by the band its best quality falls into. Thresholds
``[t_1, ..., t_k]`` cut the real line into ``k + 1`` half-open bands
``[-inf, t_1), [t_1, t_2), ..., [t_k, +inf)``: a value exactly equal to a threshold belongs to
the band above it. Each band carries a label: ``1`` positive, ``0`` negative, ``-1`` ignored.

Optional *low-quality matches* (Faster R-CNN, Sec. 3.1.2, case (i)): for each ground truth, every
prediction whose quality equals that ground truth's highest quality, ties included, is labelled
``1``, so that no ground truth is left without a positive. Only the label changes; the matched
index stays the column's argmax. As in detectron2 there is no lower bound on that highest
quality: a ground truth that overlaps nothing (maximum quality 0) makes every prediction with
quality 0 to it positive. Filter empty ground-truth boxes before matching.

This follows detectron2's ``Matcher`` exactly, including the ``int8`` labels.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from detforge.utils.checks import check_tensor, values_on_host

__all__ = ["Matcher"]


class Matcher:
    """Label predictions as positive / negative / ignored by their best ground-truth quality.

    Args:
        thresholds: increasing (non-decreasing) finite thresholds; the first must be positive.
        labels: one label in ``{-1, 0, 1}`` per band, ``len(thresholds) + 1`` in all.
        allow_low_quality_matches: also label positive, for each ground truth, the predictions
            that reach that ground truth's highest quality (ties included).

    Example:
        RPN: ``Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)``;
        Fast R-CNN head: ``Matcher([0.5], [0, 1])``.
    """

    def __init__(
        self,
        thresholds: Sequence[float],
        labels: Sequence[int],
        *,
        allow_low_quality_matches: bool = False,
    ) -> None:
        fn = "Matcher"
        for name, seq in (("thresholds", thresholds), ("labels", labels)):
            if isinstance(seq, (str, bytes, Tensor)) or not isinstance(seq, Sequence):
                raise TypeError(f"{fn}: `{name}` must be a list, got {seq!r}")
        if len(thresholds) == 0:
            raise ValueError(f"{fn}: `thresholds` must not be empty")
        ts: list[float] = []
        for t in thresholds:
            if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t):
                raise ValueError(f"{fn}: `thresholds` must be finite numbers, got {thresholds!r}")
            ts.append(float(t))
        if ts[0] <= 0:
            raise ValueError(f"{fn}: the first threshold must be positive, got {ts}")
        if any(lo > hi for lo, hi in zip(ts[:-1], ts[1:], strict=True)):
            raise ValueError(f"{fn}: `thresholds` must be non-decreasing, got {ts}")
        if len(labels) != len(ts) + 1:
            raise ValueError(
                f"{fn}: need len(thresholds) + 1 = {len(ts) + 1} labels, got {len(labels)}"
            )
        if any(isinstance(x, bool) or x not in (-1, 0, 1) for x in labels):
            raise ValueError(f"{fn}: every label must be -1, 0 or 1, got {list(labels)}")
        self.thresholds: tuple[float, ...] = tuple(ts)
        self.labels: tuple[int, ...] = tuple(int(x) for x in labels)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __repr__(self) -> str:
        return (
            f"Matcher(thresholds={list(self.thresholds)}, labels={list(self.labels)}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    def __call__(self, match_quality: Tensor) -> tuple[Tensor, Tensor]:
        """Match every prediction to a ground truth and label it.

        Args:
            match_quality (Tensor[G, N]): pairwise quality (e.g. IoU) between ``G`` ground
                truths and ``N`` predictions; finite and non-negative (checked when the matrix
                is on the CPU; on an accelerator the check would synchronise every training
                step, so it is skipped there).

        Returns:
            tuple[Tensor[N], Tensor[N]]: ``matches`` (int64), the ground-truth index in
            ``[0, G)`` of each prediction, and ``match_labels`` (int8), its label. With
            ``G == 0`` every match is 0 and every label is ``labels[0]`` (quality taken as 0).
        """
        fn = "Matcher"
        check_tensor(match_quality, "match_quality", fn)
        if match_quality.dim() != 2:
            raise ValueError(
                f"{fn}: `match_quality` must have shape [G, N], got {list(match_quality.shape)}"
            )
        num_gt, num_pred = match_quality.shape
        device = match_quality.device
        if num_gt == 0 or num_pred == 0:
            matches = torch.zeros(num_pred, dtype=torch.int64, device=device)
            labels = torch.full((num_pred,), self.labels[0], dtype=torch.int8, device=device)
            return matches, labels
        if match_quality.dtype == torch.bool or match_quality.is_complex():
            raise TypeError(f"{fn}: `match_quality` must be real-valued, got {match_quality.dtype}")
        if values_on_host(match_quality):  # reading values on a device would synchronise
            _check_values(match_quality, fn)

        matched_vals, matches = match_quality.max(dim=0)  # [N], [N]
        match_labels = torch.ones(num_pred, dtype=torch.int8, device=device)
        bounds = (-math.inf, *self.thresholds, math.inf)
        for label, low, high in zip(self.labels, bounds[:-1], bounds[1:], strict=True):
            in_band = (matched_vals >= low) & (matched_vals < high)
            match_labels[in_band] = label

        if self.allow_low_quality_matches:
            best_per_gt = match_quality.max(dim=1, keepdim=True).values  # [G, 1]
            is_best = (match_quality == best_per_gt).any(dim=0)  # [N]
            match_labels[is_best] = 1
        return matches, match_labels


def _check_values(match_quality: Tensor, fn: str) -> None:
    """Raise ``ValueError`` when the matrix holds NaN, infinite or negative values."""
    bad = ~(torch.isfinite(match_quality) & (match_quality >= 0))
    if bool(bad.any()):
        g, n = (int(v) for v in bad.nonzero()[0])
        value = match_quality[g, n].item()
        raise ValueError(
            f"{fn}: `match_quality` must be finite and non-negative; entry [{g}, {n}] "
            f"(ground truth {g}, prediction {n}) is {value} ({int(bad.sum())} bad entries)"
        )
