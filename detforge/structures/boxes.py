"""Boxes: format conversion and box utilities, all in pure PyTorch.

Pixel model (the one convention every part of detforge follows):

* Coordinates are continuous and absolute, in pixels of the image the boxes belong to. Pixel
  ``(row i, column j)`` is the unit square ``[j, j + 1) x [i, i + 1)``; its centre is at
  ``(j + 0.5, i + 0.5)``. The whole image of width ``W`` and height ``H`` is the box
  ``(0, 0, W, H)``.
* The canonical box format is ``xyxy``: ``(x1, y1, x2, y2)`` with ``x1 <= x2`` and ``y1 <= y2``.
  A box covers ``x1 <= x < x2, y1 <= y < y2``; its width is ``x2 - x1`` and its height ``y2 - y1``
  (no "+1": the legacy Detectron convention of inclusive integer corners is converted away at
  checkpoint and dataset boundaries).
* ``xywh`` is ``(x1, y1, width, height)`` (COCO's ``bbox``); ``cxcywh`` is
  ``(centre x, centre y, width, height)``.
* Feature maps sample the same continuous plane: with ``spatial_scale = 1 / stride`` a feature cell
  ``k`` covers image pixels ``[k * stride, (k + 1) * stride)`` and its value sits at the cell
  centre, continuous feature coordinate ``k + 0.5``. ``roi_align(..., aligned=True)`` subtracts
  that half pixel before bilinear sampling, so a box maps exactly onto the cells it covers;
  ``aligned=False`` is the legacy behaviour of Detectron and the first Mask R-CNN, which samples
  half a cell off.

All functions accept any floating dtype and any device and keep them.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from detforge.utils.checks import check_boxes, check_tensor

__all__ = [
    "BoxFormat",
    "box_area",
    "box_convert",
    "box_ioa",
    "box_iou",
    "clip_boxes",
    "generalized_box_iou",
    "nonempty_boxes",
    "scale_boxes",
]

BoxFormat = Literal["xyxy", "xywh", "cxcywh"]
_FORMATS = ("xyxy", "xywh", "cxcywh")


def box_convert(boxes: Tensor, in_fmt: BoxFormat, out_fmt: BoxFormat) -> Tensor:
    """Convert boxes between ``xyxy``, ``xywh`` and ``cxcywh``.

    Args:
        boxes (Tensor[..., 4]): boxes in ``in_fmt``, absolute pixels.
        in_fmt: format of ``boxes``.
        out_fmt: wanted format.

    Returns:
        Tensor[..., 4]: a new tensor in ``out_fmt`` (the input is never modified).
    """
    check_tensor(boxes, "boxes", "box_convert")
    for name, fmt in (("in_fmt", in_fmt), ("out_fmt", out_fmt)):
        if fmt not in _FORMATS:
            raise ValueError(f"box_convert: `{name}` must be one of {_FORMATS}, got {fmt!r}")
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"box_convert: `boxes` must have shape [..., 4], got {list(boxes.shape)}")
    if in_fmt == out_fmt:
        return boxes.clone()
    a, b, c, d = boxes.unbind(-1)
    if in_fmt == "xywh":
        x1, y1, x2, y2 = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        x1, y1, x2, y2 = a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    else:
        x1, y1, x2, y2 = a, b, c, d
    if out_fmt == "xyxy":
        out = (x1, y1, x2, y2)
    elif out_fmt == "xywh":
        out = (x1, y1, x2 - x1, y2 - y1)
    else:
        out = ((x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1)
    return torch.stack(out, dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of xyxy boxes.

    Args:
        boxes (Tensor[N, 4]): xyxy, absolute pixels.

    Returns:
        Tensor[N]: ``(x2 - x1) * (y2 - y1)``; zero for degenerate boxes, negative for unordered
        ones (use :func:`nonempty_boxes` to filter those).
    """
    check_boxes(boxes, "boxes", "box_area", ordered=False)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clip xyxy boxes to an image.

    Args:
        boxes (Tensor[N, 4]): xyxy, absolute pixels.
        image_size: ``(height, width)`` of the image.

    Returns:
        Tensor[N, 4]: boxes with x in ``[0, width]`` and y in ``[0, height]``. A box entirely
        outside the image becomes degenerate (zero width or height) rather than disappearing, so
        indices stay aligned with other per-box fields.
    """
    check_boxes(boxes, "boxes", "clip_boxes", ordered=False)
    h, w = image_size
    if h < 0 or w < 0:
        raise ValueError(f"clip_boxes: `image_size` must be non-negative, got {image_size}")
    x = boxes[:, 0::2].clamp(0, w)
    y = boxes[:, 1::2].clamp(0, h)
    return torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)


def nonempty_boxes(boxes: Tensor, min_size: float = 0.0) -> Tensor:
    """Boolean mask of boxes whose width and height both exceed ``min_size``.

    Args:
        boxes (Tensor[N, 4]): xyxy, absolute pixels.
        min_size: boxes with width or height ``<= min_size`` are empty.

    Returns:
        Tensor[N] (bool): ``True`` for boxes to keep. NaN boxes are never kept.
    """
    check_boxes(boxes, "boxes", "nonempty_boxes", ordered=False)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return (w > min_size) & (h > min_size)


def scale_boxes(boxes: Tensor, scale_x: float, scale_y: float | None = None) -> Tensor:
    """Scale xyxy boxes about the image origin, e.g. after resizing an image.

    Args:
        boxes (Tensor[N, 4]): xyxy, absolute pixels.
        scale_x: factor for x coordinates (new width / old width).
        scale_y: factor for y coordinates; defaults to ``scale_x``.

    Returns:
        Tensor[N, 4]: the scaled boxes.
    """
    check_boxes(boxes, "boxes", "scale_boxes", ordered=False)
    sy = scale_x if scale_y is None else scale_y
    factors = boxes.new_tensor([scale_x, sy, scale_x, sy])
    return boxes * factors


def _inter_union(boxes1: Tensor, boxes2: Tensor, fn: str) -> tuple[Tensor, Tensor, Tensor]:
    check_boxes(boxes1, "boxes1", fn, ordered=False)
    check_boxes(boxes2, "boxes2", fn, ordered=False)
    if boxes1.device != boxes2.device:
        raise ValueError(f"{fn}: boxes1 is on {boxes1.device} but boxes2 on {boxes2.device}")
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N, M, 2]
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # [N, M]
    union = area1[:, None] + area2[None, :] - inter
    return inter, union, area1


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union.

    Args:
        boxes1 (Tensor[N, 4]): xyxy, absolute pixels.
        boxes2 (Tensor[M, 4]): xyxy, absolute pixels.

    Returns:
        Tensor[N, M]: IoU; 0 where the union is empty (two degenerate boxes), never NaN.
    """
    inter, union, _ = _inter_union(boxes1, boxes2, "box_iou")
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)


def box_ioa(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over the area of the first box (how much of ``boxes1`` is covered).

    Args:
        boxes1 (Tensor[N, 4]): xyxy, absolute pixels.
        boxes2 (Tensor[M, 4]): xyxy, absolute pixels.

    Returns:
        Tensor[N, M]: ``inter / area(boxes1)``; 0 where ``boxes1`` has zero area.
    """
    inter, _, area1 = _inter_union(boxes1, boxes2, "box_ioa")
    a = area1[:, None]
    return torch.where(a > 0, inter / a.clamp(min=torch.finfo(a.dtype).tiny), 0.0)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalised IoU (Rezatofighi et al., 2019).

    ``GIoU = IoU - (area(C) - union) / area(C)``, with ``C`` the smallest box enclosing both.

    Args:
        boxes1 (Tensor[N, 4]): xyxy, absolute pixels; must be ordered (x2 >= x1, y2 >= y1).
        boxes2 (Tensor[M, 4]): xyxy, absolute pixels; must be ordered.

    Returns:
        Tensor[N, M]: values in ``[-1, 1]``; pairs whose enclosing box is empty get 0.
    """
    check_boxes(boxes1, "boxes1", "generalized_box_iou")
    check_boxes(boxes2, "boxes2", "generalized_box_iou")
    inter, union, _ = _inter_union(boxes1, boxes2, "generalized_box_iou")
    tiny = torch.finfo(union.dtype).tiny
    iou = torch.where(union > 0, inter / union.clamp(min=tiny), 0.0)
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclose = wh[..., 0] * wh[..., 1]
    penalty = torch.where(enclose > 0, (enclose - union) / enclose.clamp(min=tiny), 0.0)
    return iou - penalty
