"""Balanced random sampling of positive and negative training examples (RPN, Fast R-CNN).

The rule is detectron2's ``subsample_labels``: take at most ``int(num_samples *
positive_fraction)`` positives, then fill the rest of ``num_samples`` with negatives; when either
kind is scarce, take all of it. The choice within each kind is uniform without replacement, drawn
with ``torch.randperm`` on the labels' device: first a permutation of the positives, then one of
the negatives. With the same global seed (or generator state), the same device and the same
labels, this draws exactly the samples detectron2 draws.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detforge.utils.checks import check_float, check_int, check_tensor

__all__ = ["subsample_labels"]


def subsample_labels(
    labels: Tensor,
    num_samples: int,
    positive_fraction: float,
    bg_label: int,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Randomly pick up to ``num_samples`` labelled elements, at most a fraction of them positive.

    Args:
        labels (Tensor[N]): integer labels: ``-1`` ignore (never sampled), ``bg_label``
            background (negative), anything else foreground (positive).
        num_samples: total number of elements to return (fewer when not enough are labelled).
        positive_fraction: in ``[0, 1]``; at most ``int(num_samples * positive_fraction)``
            positives are taken.
        bg_label: the background label.
        generator: random generator for ``torch.randperm``; it must live on ``labels``' device.
            ``None`` uses torch's global generator for that device.

    Returns:
        tuple[Tensor[P], Tensor[M]]: ``pos_idx`` and ``neg_idx`` (int64), indices into ``labels``
        in random order, with ``P = min(#positives, int(num_samples * positive_fraction))`` and
        ``M = min(#negatives, num_samples - P)``.
    """
    fn = "subsample_labels"
    check_tensor(labels, "labels", fn)
    if labels.dim() != 1:
        raise ValueError(f"{fn}: `labels` must have shape [N], got {list(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{fn}: `labels` must be an integer tensor, got {labels.dtype}")
    check_int(num_samples, "num_samples", fn, low=0)
    check_float(positive_fraction, "positive_fraction", fn, low=0, high=1)
    if bg_label == -1:
        raise ValueError(f"{fn}: `bg_label` must differ from the ignore label -1")
    if generator is not None and generator.device.type != labels.device.type:
        raise ValueError(
            f"{fn}: `generator` is on {generator.device} but `labels` on {labels.device}"
        )

    positive = ((labels != -1) & (labels != bg_label)).nonzero(as_tuple=True)[0]
    negative = (labels == bg_label).nonzero(as_tuple=True)[0]

    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)

    perm_pos = torch.randperm(positive.numel(), device=labels.device, generator=generator)
    perm_neg = torch.randperm(negative.numel(), device=labels.device, generator=generator)
    return positive[perm_pos[:num_pos]], negative[perm_neg[:num_neg]]
