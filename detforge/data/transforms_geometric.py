"""Geometric transforms that map the whole image: resize and horizontal/vertical flips.

Both map the continuous pixel plane of ``structures/boxes.py`` exactly and have an inverse:

* ``ResizeTransform`` scales ``x`` by ``new_w / w`` and ``y`` by ``new_h / h`` (pixel centres map
  to pixel centres, as with ``align_corners=False``); masks and label maps are sampled at the
  source pixel under each output pixel centre, ``floor((j + 0.5) * w / new_w)``.
* ``HFlipTransform`` maps ``x`` to ``width - x`` (pixel column ``j`` to ``width - 1 - j``) and
  ``VFlipTransform`` maps ``y`` to ``height - y``. A flip is a reflection, so it swaps the left and
  right keypoints given as flip pairs. detectron2 swaps them for horizontal flips only; we also do
  for vertical flips, so that a 180-degree rotation (both flips) leaves the left/right labels
  unchanged, as a rotation must.

Crop and pad are in ``transforms_crop.py``, photometric transforms in ``transforms_photometric.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from detforge.data.transforms import (
    FloatArray,
    Transform,
    check_hw,
    check_image_size,
    check_ints,
    check_masks,
    check_points,
    check_segmentation,
    flip_permutation,
)

__all__ = ["HFlipTransform", "Interpolation", "ResizeTransform", "VFlipTransform"]

Interpolation = Literal["nearest", "bilinear", "bicubic"]
_PIL_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def _nearest_index(old: int, new: int) -> np.ndarray:
    """Source index under each output pixel centre: ``floor((k + 0.5) * old / new)``.

    Computed in exact integer arithmetic; a centre landing exactly on a source pixel border takes
    the pixel to its right (PIL's float arithmetic may take either).
    """
    k = np.arange(new, dtype=np.int64)
    return np.minimum(((2 * k + 1) * old) // (2 * new), old - 1)


class ResizeTransform(Transform):
    """Resize from ``h x w`` to ``new_h x new_w``.

    uint8 images are resized with PIL (its bilinear and bicubic filters widen when shrinking, so
    downscaling is antialiased), floating images with ``torch.nn.functional.interpolate``
    (``align_corners=False``, ``antialias=True``, which closely matches PIL). ``"nearest"`` uses
    the exact pixel-centre rule of the module docstring for every input, like masks.

    Args:
        h: input height.
        w: input width.
        new_h: output height.
        new_w: output width.
        interp: ``"bilinear"`` (default), ``"bicubic"`` or ``"nearest"``, for images only.
    """

    def __init__(
        self, *, h: int, w: int, new_h: int, new_w: int, interp: Interpolation = "bilinear"
    ) -> None:
        check_ints("ResizeTransform", 1, h=h, w=w, new_h=new_h, new_w=new_w)
        if interp not in ("nearest", "bilinear", "bicubic"):
            raise ValueError(f"ResizeTransform: unknown `interp` {interp!r}")
        self.h, self.w, self.new_h, self.new_w = int(h), int(w), int(new_h), int(new_w)
        self.interp: Interpolation = interp

    def __repr__(self) -> str:
        return (
            f"ResizeTransform(h={self.h}, w={self.w}, new_h={self.new_h}, new_w={self.new_w}, "
            f"interp={self.interp!r})"
        )

    def _gather(self, array: np.ndarray) -> np.ndarray:
        """Nearest-neighbour resize of the two axes that follow the leading ones."""
        rows, cols = _nearest_index(self.h, self.new_h), _nearest_index(self.w, self.new_w)
        return np.ascontiguousarray(array[..., rows[:, None], cols[None, :]])

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Resize an ``[h, w(, C)]`` image to ``[new_h, new_w(, C)]`` (same dtype)."""
        check_image_size(image, "ResizeTransform.apply_image", self.h, self.w)
        chw = image[None] if image.ndim == 2 else np.moveaxis(image, 2, 0)  # [C, h, w]
        if self.interp == "nearest":
            out = self._gather(chw)
        elif image.dtype == np.uint8:
            size, resample = (self.new_w, self.new_h), _PIL_RESAMPLE[self.interp]
            if chw.shape[0] == 3:
                out = np.asarray(Image.fromarray(image).resize(size, resample)).transpose(2, 0, 1)
            else:  # PIL has no mode for other channel counts (and premultiplies RGBA): per channel
                out = np.stack([np.asarray(Image.fromarray(c).resize(size, resample)) for c in chw])
        else:
            t = torch.from_numpy(np.ascontiguousarray(chw))[None]
            work = t if t.dtype in (torch.float32, torch.float64) else t.float()
            res = F.interpolate(
                work,
                size=(self.new_h, self.new_w),
                mode=self.interp,
                align_corners=False,
                antialias=True,
            )
            out = res[0].to(t.dtype).numpy()
        return out[0] if image.ndim == 2 else np.ascontiguousarray(np.moveaxis(out, 0, 2))

    def apply_coords(self, coords: np.ndarray) -> FloatArray:
        """Scale ``[N, 2]`` points: ``x * new_w / w``, ``y * new_h / h``."""
        out = check_points(coords, "coords", "ResizeTransform.apply_coords", 2)
        out[:, 0] *= self.new_w / self.w
        out[:, 1] *= self.new_h / self.h
        return out

    def apply_bitmasks(self, masks: np.ndarray) -> np.ndarray:
        """Nearest-neighbour resize of ``[N, h, w]`` bool masks to ``[N, new_h, new_w]``."""
        fn = "ResizeTransform.apply_bitmasks"
        m = check_masks(masks, fn)
        check_hw(m.shape[1:], fn, "masks", self.h, self.w)
        return self._gather(m)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Nearest-neighbour resize of an ``[h, w]`` label map."""
        fn = "ResizeTransform.apply_segmentation"
        s = check_segmentation(segmentation, fn)
        check_hw(s.shape, fn, "segmentation", self.h, self.w)
        return self._gather(s)

    def inverse(self) -> ResizeTransform:
        """Resize back from ``new_h x new_w`` to ``h x w``."""
        return ResizeTransform(
            h=self.new_h, w=self.new_w, new_h=self.h, new_w=self.w, interp=self.interp
        )


class HFlipTransform(Transform):
    """Horizontal flip of an image of width ``width``: ``x -> width - x``.

    Args:
        width: image width ``W``.
    """

    def __init__(self, width: int) -> None:
        check_ints("HFlipTransform", 1, width=width)
        self.width = int(width)

    def __repr__(self) -> str:
        return f"HFlipTransform(width={self.width})"

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Mirror the columns of an ``[H, W(, C)]`` image."""
        check_image_size(image, "HFlipTransform.apply_image", None, self.width)
        return np.ascontiguousarray(image[:, ::-1])

    def apply_coords(self, coords: np.ndarray) -> FloatArray:
        """Map ``[N, 2]`` points to ``(width - x, y)``."""
        out = check_points(coords, "coords", "HFlipTransform.apply_coords", 2)
        out[:, 0] = self.width - out[:, 0]
        return out

    def apply_bitmasks(self, masks: np.ndarray) -> np.ndarray:
        """Mirror ``[N, H, W]`` bool masks."""
        m = check_masks(masks, "HFlipTransform.apply_bitmasks")
        check_hw(m.shape[1:], "HFlipTransform.apply_bitmasks", "masks", None, self.width)
        return np.ascontiguousarray(m[:, :, ::-1])

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Mirror an ``[H, W]`` label map."""
        s = check_segmentation(segmentation, "HFlipTransform.apply_segmentation")
        check_hw(s.shape, "HFlipTransform.apply_segmentation", "segmentation", None, self.width)
        return np.ascontiguousarray(s[:, ::-1])

    def apply_keypoints(
        self, keypoints: np.ndarray, flip_pairs: Sequence[tuple[int, int]] = ()
    ) -> FloatArray:
        """Mirror ``[N, P, 3]`` keypoints and swap each ``(left, right)`` pair in ``flip_pairs``."""
        kps = super().apply_keypoints(keypoints)
        return kps[:, flip_permutation(flip_pairs, kps.shape[1])]

    def inverse(self) -> HFlipTransform:
        """A flip is its own inverse."""
        return HFlipTransform(self.width)


class VFlipTransform(Transform):
    """Vertical flip of an image of height ``height``: ``y -> height - y``.

    Args:
        height: image height ``H``.
    """

    def __init__(self, height: int) -> None:
        check_ints("VFlipTransform", 1, height=height)
        self.height = int(height)

    def __repr__(self) -> str:
        return f"VFlipTransform(height={self.height})"

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Mirror the rows of an ``[H, W(, C)]`` image."""
        check_image_size(image, "VFlipTransform.apply_image", self.height, None)
        return np.ascontiguousarray(image[::-1])

    def apply_coords(self, coords: np.ndarray) -> FloatArray:
        """Map ``[N, 2]`` points to ``(x, height - y)``."""
        out = check_points(coords, "coords", "VFlipTransform.apply_coords", 2)
        out[:, 1] = self.height - out[:, 1]
        return out

    def apply_bitmasks(self, masks: np.ndarray) -> np.ndarray:
        """Mirror ``[N, H, W]`` bool masks upside down."""
        m = check_masks(masks, "VFlipTransform.apply_bitmasks")
        check_hw(m.shape[1:], "VFlipTransform.apply_bitmasks", "masks", self.height, None)
        return np.ascontiguousarray(m[:, ::-1])

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Mirror an ``[H, W]`` label map upside down."""
        s = check_segmentation(segmentation, "VFlipTransform.apply_segmentation")
        check_hw(s.shape, "VFlipTransform.apply_segmentation", "segmentation", self.height, None)
        return np.ascontiguousarray(s[::-1])

    def apply_keypoints(
        self, keypoints: np.ndarray, flip_pairs: Sequence[tuple[int, int]] = ()
    ) -> FloatArray:
        """Mirror ``[N, P, 3]`` keypoints and swap each ``(left, right)`` pair (see module doc)."""
        kps = super().apply_keypoints(keypoints)
        return kps[:, flip_permutation(flip_pairs, kps.shape[1])]

    def inverse(self) -> VFlipTransform:
        """A flip is its own inverse."""
        return VFlipTransform(self.height)
