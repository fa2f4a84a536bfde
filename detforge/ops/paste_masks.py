"""Pasting per-detection mask probabilities (e.g. 28x28) into full-image masks."""

from __future__ import annotations

import torch
from torch import Tensor

from detforge.ops._reference import paste_masks as _ref
from detforge.utils.checks import check_boxes, check_floating, check_tensor

__all__ = ["paste_masks_in_image"]


def paste_masks_in_image(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float | None = 0.5,
    *,
    max_chunk_bytes: int | None = None,
) -> Tensor:
    """Resize each detection's mask into its box and paste it into an image-sized mask.

    Each mask is resampled bilinearly so that its ``Mh x Mw`` cells exactly tile the box
    (``grid_sample`` with ``align_corners=False`` and zero padding, as detectron2 does), and each
    image pixel takes the value at its centre. Only the box grown by one pixel on each side
    is computed; pixels outside it stay 0. This is detectron2's CPU behaviour; its GPU path
    computes the whole image, which differs only for boxes wider or taller than ``2 * M``
    pixels, where the half-cell fringe that bilinear sampling leaves past the box edge is wider
    than that one-pixel margin.

    Memory stays bounded with many detections on a large image: apart from the output itself,
    the float work buffer is processed in chunks of at most ``max_chunk_bytes``.

    Args:
        masks (Tensor[N, Mh, Mw] or Tensor[N, 1, Mh, Mw]): floating mask probabilities.
        boxes (Tensor[N, 4]): xyxy boxes in image pixels (ordered; may extend past the image).
        image_size: ``(height, width)`` of the output masks.
        threshold: pixels whose value is ``>= threshold`` are set; ``None`` returns the
            resampled probabilities instead.
        max_chunk_bytes: budget for the work buffer; default 64 MiB (or one image if larger).

    Returns:
        Tensor[N, H, W]: bool masks, or probabilities in the dtype of ``masks`` when
        ``threshold`` is None.
    """
    fn = "paste_masks_in_image"
    check_tensor(masks, "masks", fn)
    check_floating(masks, "masks", fn)
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(
            f"{fn}: `masks` must have shape [N, Mh, Mw] or [N, 1, Mh, Mw], got {list(masks.shape)}"
        )
    check_boxes(boxes, "boxes", fn)
    if boxes.shape[0] != masks.shape[0]:
        raise ValueError(f"{fn}: {masks.shape[0]} masks but {boxes.shape[0]} boxes")
    if boxes.device != masks.device:
        raise ValueError(f"{fn}: `masks` is on {masks.device} but `boxes` on {boxes.device}")
    if not bool(torch.isfinite(boxes).all()):
        raise ValueError(f"{fn}: `boxes` has non-finite coordinates")
    if len(image_size) != 2 or min(image_size) < 0:
        raise ValueError(f"{fn}: `image_size` must be (height, width) >= 0, got {image_size}")
    if masks.shape[0] > 0 and min(masks.shape[1:]) == 0:
        raise ValueError(f"{fn}: `masks` has an empty spatial size {list(masks.shape[1:])}")
    size = (int(image_size[0]), int(image_size[1]))
    budget = _ref.chunk_budget_bytes(size) if max_chunk_bytes is None else max_chunk_bytes
    return _ref.paste_masks_in_image(masks, boxes, size, threshold, budget)
