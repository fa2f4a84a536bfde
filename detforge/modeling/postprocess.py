"""What every detector does around its network: input checks, normalisation and padding, and
mapping detections back to the original image size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from detforge.ops.paste_masks import paste_masks_in_image
from detforge.structures.boxes import clip_boxes, nonempty_boxes
from detforge.structures.image_list import ImageList
from detforge.structures.instances import Instances

__all__ = ["check_targets", "detector_postprocess", "preprocess_images"]

_BOX_TOLERANCE = 1.0  # pixels a ground-truth box may extend past the image (rounding in files)


def preprocess_images(
    images: Sequence[Tensor],
    pixel_mean: Tensor,
    pixel_std: Tensor,
    *,
    size_divisibility: int,
    owner: str,
) -> ImageList:
    """Check, normalise and pad a batch of images.

    Args:
        images: ``Tensor[C, H_i, W_i]`` each, uint8 or floating, in the model's channel order.
        pixel_mean (Tensor[C, 1, 1]): subtracted from every pixel.
        pixel_std (Tensor[C, 1, 1]): divides every pixel.
        size_divisibility: the padded size is a multiple of it (the backbone's largest stride).
        owner: model name used in error messages.

    Returns:
        ImageList of float images on the device of ``pixel_mean``.
    """
    if isinstance(images, Tensor) or len(images) == 0:
        raise ValueError(f"{owner}: `images` must be a non-empty list of Tensor[C, H, W]")
    c = pixel_mean.shape[0]
    normed = []
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != c:
            got = list(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(f"{owner}: image {i} must be a Tensor[{c}, H, W], got {got}")
        if not (img.dtype == torch.uint8 or img.is_floating_point()):
            raise TypeError(f"{owner}: image {i} must be uint8 or floating, got {img.dtype}")
        if img.shape[1] == 0 or img.shape[2] == 0:
            raise ValueError(f"{owner}: image {i} is empty ({list(img.shape)})")
        x = img.to(device=pixel_mean.device, dtype=pixel_mean.dtype)
        normed.append((x - pixel_mean) / pixel_std)
    return ImageList.from_tensors(normed, size_divisibility=size_divisibility)


def check_targets(
    targets: Sequence[Instances] | None, image_sizes: Sequence[tuple[int, int]], owner: str
) -> list[Instances]:
    """Check training targets against the images: one per image, ordered boxes inside it.

    Returns:
        The targets, as a list.
    """
    if targets is None:
        raise ValueError(f"{owner}: `targets` are required in training mode")
    if len(targets) != len(image_sizes):
        raise ValueError(f"{owner}: {len(targets)} targets for {len(image_sizes)} images")
    for i, (t, (h, w)) in enumerate(zip(targets, image_sizes, strict=True)):
        if not isinstance(t, Instances):
            raise TypeError(f"{owner}: targets[{i}] must be Instances, got {type(t).__name__}")
        if t.labels is None:
            raise ValueError(f"{owner}: targets[{i}] has no labels")
        b = t.boxes
        if b.numel() == 0:
            continue
        ok = torch.isfinite(b).all(dim=1) & (b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1])
        tol = _BOX_TOLERANCE
        ok &= (b[:, 0] >= -tol) & (b[:, 1] >= -tol) & (b[:, 2] <= w + tol) & (b[:, 3] <= h + tol)
        if not bool(ok.all()):
            j = int((~ok).nonzero()[0, 0])
            raise ValueError(
                f"{owner}: targets[{i}] box {j} {b[j].tolist()} is unordered, not finite or "
                f"outside the {w}x{h} image"
            )
    return list(targets)


def detector_postprocess(
    detections: Instances, output_size: tuple[int, int], *, mask_threshold: float = 0.5
) -> Instances:
    """Map detections from the network's input image to an image of ``output_size``.

    Boxes are scaled by ``output / input`` per axis, clipped to the output image and dropped
    when empty (detectron2's ``detector_postprocess``). Mask probabilities ``[N, 1, M, M]`` are
    pasted into the output image as bool masks ``[N, H, W]`` at ``mask_threshold``; keypoint
    coordinates are scaled like the boxes.

    Args:
        detections: per-image detections in the coordinates of ``detections.image_size``.
        output_size: ``(height, width)`` of the original image.
        mask_threshold: threshold for pasted masks.

    Returns:
        Instances with ``image_size == output_size``.
    """
    in_h, in_w = detections.image_size
    out_h, out_w = output_size
    sx, sy = out_w / in_w, out_h / in_h
    boxes = detections.boxes * detections.boxes.new_tensor([sx, sy, sx, sy])
    boxes = clip_boxes(boxes, (out_h, out_w))
    keep = nonempty_boxes(boxes)
    result = detections[keep]
    result.boxes = boxes[keep]
    result.image_size = (int(out_h), int(out_w))
    if result.keypoints is not None:
        kp = result.keypoints.clone()
        kp[..., 0] *= sx
        kp[..., 1] *= sy
        result.keypoints = kp
    if isinstance(result.masks, Tensor) and result.masks.dim() == 4:
        result.masks = paste_masks_in_image(
            result.masks[:, 0], result.boxes, (out_h, out_w), threshold=mask_threshold
        )
    return result
