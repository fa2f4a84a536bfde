"""Keypoint heatmap targets and their decoding, as in Mask R-CNN's keypoint head.

Coordinate convention: keypoints are continuous ``(x, y)`` positions in the pixel model of
``structures/boxes.py`` (pixel ``(i, j)`` spans ``[j, j + 1) x [i, i + 1)``). COCO stores keypoints
as integer pixel indices; the data loader converts them at the dataset boundary by adding 0.5, so
the COCO keypoint ``(3, 5)`` becomes the pixel centre ``(3.5, 5.5)`` (as detectron2 does).

An ``M x M`` heatmap over a RoI ``(x1, y1, x2, y2)`` splits it into cells of size
``((x2 - x1) / M, (y2 - y1) / M)``; a continuous coordinate ``c`` falls in cell ``floor(c)`` of
the scaled RoI, and a cell ``d`` decodes back to its centre ``d + 0.5`` (Heckbert 1990, "What is
the coordinate of a pixel?"), so encoding and decoding are consistent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detforge.utils.checks import (
    check_boxes,
    check_floating,
    check_int,
    check_same_device,
    check_shape,
    check_tensor,
)

__all__ = ["heatmaps_to_keypoints", "keypoints_to_heatmap"]


def keypoints_to_heatmap(
    keypoints: Tensor, rois: Tensor, heatmap_size: int
) -> tuple[Tensor, Tensor]:
    """Encode keypoints as the spatial-softmax targets of the keypoint head (detectron2's rule).

    With ``scale_x = M / (x2 - x1)``, a keypoint falls in column ``floor((x - x1) * scale_x)``
    (rows alike); a keypoint exactly on the right (bottom) edge goes to column (row) ``M - 1``.
    It is valid when its visibility is ``> 0``, both indices are in ``[0, M)`` and the RoI has a
    positive width and height.

    Args:
        keypoints (Tensor[N, K, 3]): ``(x, y, visibility)``, continuous image coordinates (COCO
            pixel indices plus 0.5, see the module docstring).
        rois (Tensor[N, 4]): xyxy, absolute pixels; row ``i`` belongs to instance ``i``.
        heatmap_size: heatmap side ``M``.

    Returns:
        tuple[Tensor[N, K], Tensor[N, K]]: the int64 flat target index ``y * M + x`` (0 where
        invalid) and the bool validity mask.
    """
    fn = "keypoints_to_heatmap"
    check_tensor(keypoints, "keypoints", fn)
    check_shape(keypoints, "keypoints", fn, (None, None, 3))
    check_floating(keypoints, "keypoints", fn)
    check_boxes(rois, "rois", fn)
    check_same_device(fn, keypoints=keypoints, rois=rois)
    if rois.shape[0] != keypoints.shape[0]:
        raise ValueError(f"{fn}: got {rois.shape[0]} rois for {keypoints.shape[0]} instances")
    m = check_int(heatmap_size, "heatmap_size", fn, low=1)
    x1, y1, x2, y2 = (c[:, None] for c in rois.to(keypoints.dtype).unbind(1))  # each [N, 1]
    x, y, vis = keypoints.unbind(-1)  # each [N, K]
    # Degenerate RoIs give an infinite scale and hence inf/NaN indices, which are invalid below.
    col = torch.floor((x - x1) * (m / (x2 - x1)))
    row = torch.floor((y - y1) * (m / (y2 - y1)))
    col = torch.where(x == x2, m - 1, col)
    row = torch.where(y == y2, m - 1, row)
    valid = (col >= 0) & (col < m) & (row >= 0) & (row < m) & (vis > 0)
    valid &= (x2 > x1) & (y2 > y1)
    index = torch.where(valid, row * m + col, 0).to(torch.int64)
    return index, valid


def heatmaps_to_keypoints(maps: Tensor, rois: Tensor) -> Tensor:
    """Decode keypoint heatmaps into image coordinates, exactly as detectron2 does.

    Per RoI, the maps are resized bicubically (``align_corners=False``) to
    ``(ceil(box_h), ceil(box_w))`` with box sides clamped to at least 1 pixel; the per-keypoint
    argmax cell ``(row, col)`` decodes to ``x = x1 + (col + 0.5) * box_w / ceil(box_w)`` (``y``
    alike). The score is detectron2's: ``exp(logit - max)`` at the argmax (that is, 1) divided by
    the sum of ``exp(maps - max)`` over the *unresized* ``H x W`` map, with ``max`` the resized
    maximum. This is a softmax probability normalised at heatmap resolution, so scores of small
    and large boxes are comparable; it is not the softmax over the resized map.

    Args:
        maps (Tensor[N, K, H, W]): predicted heatmap logits, one map per RoI and keypoint.
        rois (Tensor[N, 4]): xyxy, absolute pixels; the boxes the maps were pooled from.

    Returns:
        Tensor[N, K, 4]: ``(x, y, logit, score)`` per keypoint, continuous image coordinates, in
        the dtype of ``maps``. No gradient flows through it.
    """
    fn = "heatmaps_to_keypoints"
    check_tensor(maps, "maps", fn)
    check_shape(maps, "maps", fn, (None, None, None, None))
    check_floating(maps, "maps", fn)
    check_boxes(rois, "rois", fn)
    check_same_device(fn, maps=maps, rois=rois)
    if rois.shape[0] != maps.shape[0]:
        raise ValueError(f"{fn}: got {rois.shape[0]} rois for {maps.shape[0]} heatmaps")
    maps, rois = maps.detach(), rois.detach().to(maps.dtype)
    out = maps.new_zeros((maps.shape[0], maps.shape[1], 4))
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    sizes = torch.stack([heights.ceil(), widths.ceil()], dim=1)  # [N, 2]
    groups: dict[tuple[int, int], list[int]] = {}  # RoIs resized to the same size, decoded at once
    for i, (h, w) in enumerate(sizes.to(torch.int64).tolist()):
        groups.setdefault((h, w), []).append(i)
    for (h, w), members in groups.items():
        idx = torch.tensor(members, device=maps.device)
        resized = F.interpolate(maps[idx], size=(h, w), mode="bicubic", align_corners=False)
        logit, pos = resized.flatten(2).max(dim=2)  # [G, K], first maximum as argmax
        norm = (maps[idx] - logit[..., None, None]).exp().sum(dim=(2, 3))  # [G, K]
        col, row = pos % w, torch.div(pos, w, rounding_mode="floor")
        x = rois[idx, 0, None] + (col + 0.5) * (widths[idx, None] / w)
        y = rois[idx, 1, None] + (row + 0.5) * (heights[idx, None] / h)
        out[idx] = torch.stack([x, y, logit, 1.0 / norm], dim=-1)
    return out
