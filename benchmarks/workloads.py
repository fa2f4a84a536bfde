"""The fixed benchmark workloads of the foundation issue, shared by bench_ops.py and by anyone
who wants to time an op on exactly the inputs we report.

All generators are seeded and run on CPU; move the result with ``.to(device)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

IMAGE_HW = (800, 1333)
NMS_SIZES = (100, 300, 1000, 5000, 20000)  # boxes of the `nms` workloads, each at IoU 0.5 and 0.7
# (boxes, categories, IoU threshold) of the `batched_nms` workloads: per-class NMS at test time,
# and (5 categories at 0.7) per-level RPN NMS
BATCHED_NMS_CASES = (
    (100, 80, 0.5),
    (300, 80, 0.5),
    (1000, 80, 0.5),
    (1000, 5, 0.7),
    (5000, 80, 0.5),
)


def clustered_boxes(n: int, *, seed: int = 0, per_cluster: int = 20) -> tuple[Tensor, Tensor]:
    """``n`` xyxy boxes in an 800x1333 image, in clusters of about ``per_cluster`` boxes.

    This imitates detector output before NMS: each cluster has a centre and a size (log-uniform
    in [16, 256] px); its boxes jitter around them (centre by 10 % of the size, size by a factor
    exp(N(0, 0.15))). Scores are uniform in [0, 1).

    Returns:
        boxes (Tensor[n, 4]) float32 xyxy, scores (Tensor[n]) float32.
    """
    g = torch.Generator().manual_seed(seed)
    h, w = IMAGE_HW
    k = max(1, n // per_cluster)
    centres = torch.rand(k, 2, generator=g) * torch.tensor([w, h])
    sizes = torch.exp(torch.empty(k, 2).uniform_(math.log(16), math.log(256), generator=g))
    which = torch.randint(0, k, (n,), generator=g)
    c = centres[which] + 0.1 * sizes[which] * torch.randn(n, 2, generator=g)
    s = sizes[which] * torch.exp(0.15 * torch.randn(n, 2, generator=g))
    boxes = torch.cat([c - s / 2, c + s / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    scores = torch.rand(n, generator=g)
    return boxes, scores


def classed_boxes(n: int, num_classes: int = 80, *, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """The boxes of :func:`clustered_boxes`, each with a random category in ``[0, num_classes)``.

    The categories come from their own generator (seeded with ``seed``), so the boxes and scores
    are exactly those of ``clustered_boxes(n, seed=seed)``.

    Returns:
        boxes (Tensor[n, 4]) float32 xyxy, scores (Tensor[n]) float32, idxs (Tensor[n]) int64.
    """
    boxes, scores = clustered_boxes(n, seed=seed)
    g = torch.Generator().manual_seed(seed)
    idxs = torch.randint(0, num_classes, (n,), generator=g)
    return boxes, scores, idxs


def roi_align_inputs(
    num_rois: int = 512, *, seed: int = 0, shape: tuple[int, int, int, int] = (2, 256, 200, 304)
) -> tuple[Tensor, Tensor]:
    """Feature map and RoIs of the RoIAlign workload.

    The map is ``shape`` (stride 4 of an 800x1216 batch); RoIs have width and height log-uniform
    in [16, 320] image pixels, are placed uniformly inside the image, and are spread over the
    batch. Use ``spatial_scale=0.25``.

    Returns:
        features (Tensor[B, C, H, W]) float32, rois (Tensor[R, 5]) float32 (batch index, xyxy).
    """
    g = torch.Generator().manual_seed(seed)
    b, _, fh, fw = shape
    img_h, img_w = fh * 4, fw * 4
    feats = torch.randn(shape, generator=g)
    wh = torch.exp(torch.empty(num_rois, 2).uniform_(math.log(16), math.log(320), generator=g))
    x1 = torch.rand(num_rois, generator=g) * (img_w - wh[:, 0])
    y1 = torch.rand(num_rois, generator=g) * (img_h - wh[:, 1])
    bidx = torch.randint(0, b, (num_rois,), generator=g).float()
    rois = torch.stack([bidx, x1, y1, x1 + wh[:, 0], y1 + wh[:, 1]], dim=1)
    return feats, rois


def paste_masks_inputs(num: int = 100, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """100 mask probability maps of 28x28 and their boxes in an 800x1333 image.

    Returns:
        masks (Tensor[N, 28, 28]) float32 in [0, 1], boxes (Tensor[N, 4]) float32 xyxy.
    """
    boxes, _ = clustered_boxes(num, seed=seed, per_cluster=2)
    g = torch.Generator().manual_seed(seed + 1)
    masks = torch.rand(num, 28, 28, generator=g)
    return masks, boxes
