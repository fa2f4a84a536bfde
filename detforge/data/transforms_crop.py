"""Crop and pad: the transforms that cut or extend the image canvas, each the other's inverse.

* ``CropTransform`` shifts by ``(-x0, -y0)`` and cuts everything to the crop window: boxes are
  clipped to it, polygons are clipped with the Sutherland-Hodgman algorithm (a concave polygon cut
  in two becomes one polygon whose pieces are joined by zero-area edges along the window border, so
  its rasterised mask, area and tight box match those of the cropped mask), and keypoints outside
  it become unlabelled (visibility 0, coordinates kept so that the inverse maps them back).
  detectron2 clips polygons with shapely; a convex clip window needs no extra dependency.
* ``PadTransform`` shifts by ``(left, top)`` and pads the image with ``pad_value``, masks with
  ``False`` and label maps with ``seg_pad_value``. Because a crop has already cut everything to its
  window, nothing that a crop removed can reappear in the padding of a later pad.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from detforge.data.transforms import (
    FloatArray,
    Transform,
    check_hw,
    check_image,
    check_image_size,
    check_ints,
    check_masks,
    check_points,
    check_polygon,
    check_segmentation,
)

__all__ = ["CropTransform", "PadTransform", "clip_polygon"]


def _clip_halfplane(pts: FloatArray, axis: int, limit: float, keep_below: bool) -> FloatArray:
    """One Sutherland-Hodgman pass: keep the part of the polygon ``[K, 2]`` on one side."""
    nxt = np.roll(pts, -1, axis=0)
    sign = 1.0 if keep_below else -1.0
    d_cur = sign * (limit - pts[:, axis])  # >= 0: inside
    d_nxt = sign * (limit - nxt[:, axis])
    in_cur, in_nxt = d_cur >= 0, d_nxt >= 0
    cross = in_cur != in_nxt
    denom = np.where(cross, d_cur - d_nxt, 1.0)
    inter = pts + (d_cur / denom)[:, None] * (nxt - pts)
    inter[:, axis] = limit  # exact on the border
    emitted = np.stack([pts, inter], axis=1)  # [K, 2 candidates, 2]
    return emitted[np.stack([in_cur, cross], axis=1)]


def clip_polygon(polygon: np.ndarray, width: float, height: float) -> FloatArray | None:
    """Clip a polygon to the rectangle ``[0, width] x [0, height]`` (Sutherland-Hodgman).

    Args:
        polygon (np.ndarray[2K] | np.ndarray[K, 2]): vertices ``(x, y)``, K >= 3.
        width: right edge of the clip window.
        height: bottom edge of the clip window.

    Returns:
        np.ndarray[2K'] (float64) | None: the flat clipped polygon with repeated consecutive
        vertices removed, or ``None`` when less than a positive-area triangle remains.
    """
    pts = check_polygon(polygon, "clip_polygon")
    for axis, limit, below in (
        (0, 0.0, False),
        (0, width, True),
        (1, 0.0, False),
        (1, height, True),
    ):
        if len(pts) == 0:
            return None
        pts = _clip_halfplane(pts, axis, float(limit), below)
    if len(pts) > 0:
        keep = np.any(pts != np.roll(pts, 1, axis=0), axis=1)
        pts = pts[keep]
    if len(pts) < 3:
        return None
    x, y = pts[:, 0], pts[:, 1]
    if abs(x @ np.roll(y, 1) - y @ np.roll(x, 1)) <= 0:
        return None
    return pts.ravel()


class CropTransform(Transform):
    """Crop the window ``[x0, x0 + w) x [y0, y0 + h)``; everything is cut to it.

    Args:
        x0: left column of the window.
        y0: top row of the window.
        w: window width.
        h: window height.
        orig_h: height of the images it is applied to; needed by :meth:`inverse`.
        orig_w: width of the images it is applied to; needed by :meth:`inverse`.
    """

    def __init__(
        self,
        *,
        x0: int,
        y0: int,
        w: int,
        h: int,
        orig_h: int | None = None,
        orig_w: int | None = None,
    ) -> None:
        fn = "CropTransform"
        check_ints(fn, 0, x0=x0, y0=y0)
        check_ints(fn, 1, w=w, h=h)
        for name, size, end in (("orig_w", orig_w, x0 + w), ("orig_h", orig_h, y0 + h)):
            if size is not None:
                check_ints(fn, 1, **{name: size})
                if end > size:
                    raise ValueError(f"{fn}: the window ends at {end}, beyond `{name}`={size}")
        self.x0, self.y0, self.w, self.h = int(x0), int(y0), int(w), int(h)
        self.orig_h = None if orig_h is None else int(orig_h)
        self.orig_w = None if orig_w is None else int(orig_w)

    def __repr__(self) -> str:
        return (
            f"CropTransform(x0={self.x0}, y0={self.y0}, w={self.w}, h={self.h}, "
            f"orig_h={self.orig_h}, orig_w={self.orig_w})"
        )

    def _check_extent(self, shape: tuple[int, ...], fn: str, name: str) -> None:
        check_hw(shape, fn, name, self.orig_h, self.orig_w)
        if shape[0] < self.y0 + self.h or shape[1] < self.x0 + self.w:
            raise ValueError(
                f"{fn}: `{name}` of size {shape[0]}x{shape[1]} (HxW) does not "
                f"contain the crop window {self!r}"
            )

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Cut the window out of an ``[H, W(, C)]`` image: ``[h, w(, C)]``."""
        fn = "CropTransform.apply_image"
        self._check_extent(check_image(image, fn), fn, "image")
        return image[self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w].copy()

    def apply_coords(self, coords: np.ndarray) -> FloatArray:
        """Shift ``[N, 2]`` points by ``(-x0, -y0)`` (no clipping)."""
        out = check_points(coords, "coords", "CropTransform.apply_coords", 2)
        out -= (self.x0, self.y0)
        return out

    def apply_boxes(self, boxes: np.ndarray) -> FloatArray:
        """Shift xyxy ``[N, 4]`` boxes and clip them to ``[0, w] x [0, h]``.

        A box outside the window becomes degenerate (zero width or height), never removed.
        """
        out = check_points(boxes, "boxes", "CropTransform.apply_boxes", 4)
        out -= (self.x0, self.y0, self.x0, self.y0)
        np.clip(out[:, 0::2], 0, self.w, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, self.h, out=out[:, 1::2])
        return out

    def apply_polygons(self, polygons: Sequence[np.ndarray]) -> list[FloatArray]:
        """Shift the polygons of one instance and clip them to the window.

        Polygons with nothing (of positive area) left inside are dropped, so the list may be
        shorter than the input, or empty.
        """
        shifted = super().apply_polygons(polygons)
        clipped = (clip_polygon(p, self.w, self.h) for p in shifted)
        return [p for p in clipped if p is not None]

    def apply_bitmasks(self, masks: np.ndarray) -> np.ndarray:
        """Cut the window out of ``[N, H, W]`` bool masks."""
        m = check_masks(masks, "CropTransform.apply_bitmasks")
        self._check_extent(m.shape[1:], "CropTransform.apply_bitmasks", "masks")
        return m[:, self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w].copy()

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Cut the window out of an ``[H, W]`` label map."""
        s = check_segmentation(segmentation, "CropTransform.apply_segmentation")
        self._check_extent(s.shape, "CropTransform.apply_segmentation", "segmentation")
        return s[self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w].copy()

    def apply_keypoints(
        self, keypoints: np.ndarray, flip_pairs: Sequence[tuple[int, int]] = ()
    ) -> FloatArray:
        """Shift ``[N, P, 3]`` keypoints; those outside ``[0, w] x [0, h]`` get visibility 0."""
        kps = super().apply_keypoints(keypoints)
        x, y = kps[..., 0], kps[..., 1]
        outside = (x < 0) | (x > self.w) | (y < 0) | (y > self.h)
        kps[..., 2][outside] = 0
        return kps

    def inverse(self) -> PadTransform:
        """Pad the window back to ``orig_h x orig_w`` (needs both)."""
        if self.orig_h is None or self.orig_w is None:
            raise ValueError("CropTransform.inverse: needs `orig_h` and `orig_w`")
        return PadTransform(
            top=self.y0,
            left=self.x0,
            bottom=self.orig_h - self.y0 - self.h,
            right=self.orig_w - self.x0 - self.w,
            height=self.h,
            width=self.w,
        )


class PadTransform(Transform):
    """Pad an ``height x width`` image on each side.

    Args:
        top: rows added above.
        left: columns added on the left.
        bottom: rows added below.
        right: columns added on the right.
        height: input height ``H``.
        width: input width ``W``.
        pad_value: image fill value (cast to the image dtype).
        seg_pad_value: label-map fill value (255 is the usual "ignore" label).
    """

    def __init__(
        self,
        *,
        top: int,
        left: int,
        bottom: int,
        right: int,
        height: int,
        width: int,
        pad_value: float = 0.0,
        seg_pad_value: int = 0,
    ) -> None:
        check_ints("PadTransform", 0, top=top, left=left, bottom=bottom, right=right)
        check_ints("PadTransform", 1, height=height, width=width)
        self.top, self.left, self.bottom, self.right = int(top), int(left), int(bottom), int(right)
        self.height, self.width = int(height), int(width)
        self.pad_value, self.seg_pad_value = float(pad_value), int(seg_pad_value)

    def __repr__(self) -> str:
        return (
            f"PadTransform(top={self.top}, left={self.left}, bottom={self.bottom}, "
            f"right={self.right}, height={self.height}, width={self.width}, "
            f"pad_value={self.pad_value}, seg_pad_value={self.seg_pad_value})"
        )

    def _pad(self, array: np.ndarray, value: float | int | bool, leading: int = 0) -> np.ndarray:
        """Pad the two axes after ``leading`` ones (``[H, W, ...]``: 0; ``[N, H, W]``: 1)."""
        widths = [(0, 0)] * array.ndim
        widths[leading : leading + 2] = [(self.top, self.bottom), (self.left, self.right)]
        return np.pad(array, widths, mode="constant", constant_values=value)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Pad an ``[H, W(, C)]`` image with ``pad_value``."""
        check_image_size(image, "PadTransform.apply_image", self.height, self.width)
        value = self.pad_value
        if image.dtype == np.uint8:
            value = float(np.clip(round(value), 0, 255))
        return self._pad(image, value)

    def apply_coords(self, coords: np.ndarray) -> FloatArray:
        """Shift ``[N, 2]`` points by ``(left, top)``."""
        out = check_points(coords, "coords", "PadTransform.apply_coords", 2)
        out += (self.left, self.top)
        return out

    def apply_bitmasks(self, masks: np.ndarray) -> np.ndarray:
        """Pad ``[N, H, W]`` bool masks with ``False``."""
        m = check_masks(masks, "PadTransform.apply_bitmasks")
        check_hw(m.shape[1:], "PadTransform.apply_bitmasks", "masks", self.height, self.width)
        return self._pad(m, False, leading=1)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Pad an ``[H, W]`` label map with ``seg_pad_value``."""
        fn = "PadTransform.apply_segmentation"
        s = check_segmentation(segmentation, fn)
        check_hw(s.shape, fn, "segmentation", self.height, self.width)
        return self._pad(s, self.seg_pad_value)

    def inverse(self) -> CropTransform:
        """Crop the original ``height x width`` region back out."""
        return CropTransform(
            x0=self.left,
            y0=self.top,
            w=self.width,
            h=self.height,
            orig_h=self.height + self.top + self.bottom,
            orig_w=self.width + self.left + self.right,
        )
