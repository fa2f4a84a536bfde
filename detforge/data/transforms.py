"""Deterministic image transforms: the ``Transform`` interface and ``TransformList``.

A *transform* is a fully determined operation (every parameter fixed), created per image by an
augmentation policy (``detforge.data.augmentation``) and then applied, identically, to the image
and to everything annotated on it: boxes, polygons, bitmasks, semantic segmentation and keypoints.
Geometric transforms live in ``transforms_geometric.py`` (resize, flips) and
``transforms_crop.py`` (crop, pad) and have an :meth:`Transform.inverse`, so predictions made on a
transformed image can be mapped back; photometric transforms live in
``transforms_photometric.py`` and leave geometry untouched.

Conventions shared by every transform:

* Images are numpy arrays ``[H, W]`` or ``[H, W, C]``, ``uint8`` or floating. ``uint8`` results are
  rounded and clipped to ``[0, 255]``; floating results keep their dtype and are not clipped.
* Coordinates follow the pixel model of ``structures/boxes.py``: continuous, absolute, pixel
  ``(i, j)`` spans ``[j, j + 1) x [i, i + 1)``, the image is the box ``(0, 0, W, H)``. Coordinate
  outputs are new ``float64`` arrays; inputs are never modified.
* Keypoints are ``[N, P, 3]`` arrays of ``(x, y, visibility)``. Transforms move ``(x, y)`` and keep
  them even when a point leaves the image; a crop sets the visibility of points it cuts away to 0
  ("unlabelled"). Zeroing their coordinates, COCO's convention for unlabelled points, is left to
  the mapper so that an inverse transform can still map them back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

from detforge.utils.checks import check_int

__all__ = [
    "Transform",
    "TransformList",
    "check_hw",
    "check_image",
    "check_image_size",
    "check_ints",
    "check_keypoints",
    "check_masks",
    "check_points",
    "check_polygon",
    "check_segmentation",
    "flip_permutation",
]

FloatArray = npt.NDArray[np.float64]


def check_image(image: object, fn: str) -> tuple[int, int]:
    """Check an ``[H, W]`` or ``[H, W, C]`` uint8/floating numpy image; return ``(H, W)``."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{fn}: `image` must be a numpy array, got {type(image).__name__}")
    if image.ndim not in (2, 3):
        raise ValueError(f"{fn}: `image` must be [H, W] or [H, W, C], got shape {image.shape}")
    if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
        raise TypeError(f"{fn}: `image` must be uint8 or floating, got {image.dtype}")
    return int(image.shape[0]), int(image.shape[1])


def check_ints(fn: str, minimum: int, **values: int) -> None:
    """:func:`~detforge.utils.checks.check_int` for every named value, each ``>= minimum``."""
    for name, v in values.items():
        check_int(v, name, fn, low=minimum)


def check_hw(
    shape: tuple[int, ...], fn: str, name: str, height: int | None, width: int | None
) -> None:
    """Check the ``(H, W)`` of an image, masks or a label map against the transform's input."""
    h, w = shape[:2]
    if (height is not None and h != height) or (width is not None and w != width):
        want = f"{'*' if height is None else height}x{'*' if width is None else width}"
        raise ValueError(f"{fn}: the transform was made for {want} (HxW) `{name}`, got {h}x{w}")


def check_image_size(image: np.ndarray, fn: str, height: int | None, width: int | None) -> None:
    """Check an image (see :func:`check_image`) and its ``(H, W)`` (``None``: any size)."""
    check_hw(check_image(image, fn), fn, "image", height, width)


def check_points(points: object, name: str, fn: str, width: int) -> FloatArray:
    """Check an ``[N, width]`` numeric array-like and return a float64 copy of it."""
    try:
        arr = np.array(points, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{fn}: `{name}` must be a numeric array, got {type(points)} ({e})") from e
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, width)
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"{fn}: `{name}` must have shape [N, {width}], got {arr.shape}")
    return arr


def check_polygon(polygon: object, fn: str) -> FloatArray:
    """Check one polygon (flat ``[x0, y0, ...]`` or ``[K, 2]``, K >= 3); return it as ``[K, 2]``."""
    try:
        arr = np.array(polygon, dtype=np.float64).ravel()
    except (TypeError, ValueError) as e:
        raise TypeError(f"{fn}: a polygon must be a numeric array ({e})") from e
    if arr.size < 6 or arr.size % 2 != 0:
        raise ValueError(
            f"{fn}: a polygon needs an even number >= 6 of coordinates, got {arr.size}"
        )
    return arr.reshape(-1, 2)


def check_masks(masks: object, fn: str) -> npt.NDArray[np.bool_]:
    """Check an ``[N, H, W]`` bool numpy array."""
    if not isinstance(masks, np.ndarray) or masks.dtype != np.bool_ or masks.ndim != 3:
        got = (masks.dtype, masks.shape) if isinstance(masks, np.ndarray) else type(masks)
        raise ValueError(f"{fn}: `masks` must be a bool numpy array [N, H, W], got {got}")
    return masks


def check_segmentation(seg: object, fn: str) -> npt.NDArray[np.integer]:
    """Check an ``[H, W]`` integer (or bool) numpy label map."""
    if not isinstance(seg, np.ndarray):
        raise ValueError(f"{fn}: `segmentation` must be a numpy array, got {type(seg).__name__}")
    if seg.ndim != 2 or not (np.issubdtype(seg.dtype, np.integer) or seg.dtype == np.bool_):
        raise ValueError(
            f"{fn}: `segmentation` must be an integer array [H, W], got {seg.dtype} {seg.shape}"
        )
    return seg


def check_keypoints(keypoints: object, fn: str) -> FloatArray:
    """Check an ``[N, P, 3]`` numeric array-like and return a float64 copy of it."""
    try:
        arr = np.array(keypoints, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{fn}: `keypoints` must be a numeric array ({e})") from e
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{fn}: `keypoints` must have shape [N, P, 3], got {arr.shape}")
    return arr


def flip_permutation(flip_pairs: Sequence[tuple[int, int]], num_keypoints: int) -> np.ndarray:
    """Index array that swaps each ``(left, right)`` pair of keypoint indices.

    Args:
        flip_pairs: pairs of keypoint indices in ``[0, P)``; an index may appear in one pair only.
        num_keypoints: ``P``.

    Returns:
        np.ndarray[P] (int64): ``keypoints[:, perm]`` puts the right keypoint in the left slot
        and vice versa.
    """
    perm = np.arange(num_keypoints)
    seen: set[int] = set()
    for pair in flip_pairs:
        if len(pair) != 2:
            raise ValueError(f"flip_permutation: each flip pair must be (left, right), got {pair}")
        a, b = (int(v) for v in pair)
        for v in (a, b):
            if not 0 <= v < num_keypoints:
                raise ValueError(
                    f"flip_permutation: keypoint index {v} in flip pair {pair} is out of range "
                    f"for {num_keypoints} keypoints"
                )
            if v in seen:
                raise ValueError(f"flip_permutation: keypoint index {v} is in two flip pairs")
            seen.add(v)
        perm[a], perm[b] = b, a
    return perm


class Transform(ABC):
    """A deterministic transform of an image and of the geometry annotated on it.

    Subclasses implement :meth:`apply_image`, :meth:`apply_coords`, :meth:`apply_bitmasks` and
    :meth:`apply_segmentation`; boxes, polygons and keypoints are derived from
    :meth:`apply_coords` unless a subclass needs more (a crop clips them).

    Attributes:
        is_geometric: whether the transform moves pixels (``False`` for photometric ones).
    """

    is_geometric: bool = True

    @abstractmethod
    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Transform an image.

        Args:
            image (np.ndarray[H, W] | np.ndarray[H, W, C]): uint8 or floating.

        Returns:
            np.ndarray[H', W'(, C)]: a new array with the input's dtype.
        """

    @abstractmethod
    def apply_coords(self, coords: np.ndarray) -> FloatArray:
        """Transform points.

        Args:
            coords (np.ndarray[N, 2]): ``(x, y)``, continuous pixel coordinates.

        Returns:
            np.ndarray[N, 2] (float64): the moved points (a new array).
        """

    @abstractmethod
    def apply_bitmasks(self, masks: np.ndarray) -> np.ndarray:
        """Transform instance masks (nearest-neighbour sampling, never interpolation).

        Args:
            masks (np.ndarray[N, H, W]): bool.

        Returns:
            np.ndarray[N, H', W'] (bool).
        """

    @abstractmethod
    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Transform a semantic label map (nearest-neighbour sampling).

        Args:
            segmentation (np.ndarray[H, W]): integer labels.

        Returns:
            np.ndarray[H', W']: same dtype.
        """

    def apply_boxes(self, boxes: np.ndarray) -> FloatArray:
        """Transform xyxy boxes: the box enclosing the four transformed corners.

        Args:
            boxes (np.ndarray[N, 4]): xyxy, absolute pixels.

        Returns:
            np.ndarray[N, 4] (float64): xyxy boxes (``x1 <= x2``, ``y1 <= y2``; a flip swaps
            the corners back into order).
        """
        b = check_points(boxes, "boxes", f"{type(self).__name__}.apply_boxes", 4)
        corners = b[:, [0, 1, 2, 1, 0, 3, 2, 3]].reshape(-1, 2)  # [4N, 2]
        moved = self.apply_coords(corners).reshape(-1, 4, 2)
        return np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1)

    def apply_polygons(self, polygons: Sequence[np.ndarray]) -> list[FloatArray]:
        """Transform the polygons of one instance.

        Args:
            polygons: flat ``[x0, y0, x1, y1, ...]`` arrays (or ``[K, 2]`` arrays).

        Returns:
            list of flat float64 arrays. Same length as the input, except for a crop, which may
            drop a polygon that falls outside it.
        """
        fn = f"{type(self).__name__}.apply_polygons"
        return [self.apply_coords(check_polygon(p, fn)).ravel() for p in polygons]

    def apply_keypoints(
        self, keypoints: np.ndarray, flip_pairs: Sequence[tuple[int, int]] = ()
    ) -> FloatArray:
        """Transform keypoints.

        Args:
            keypoints (np.ndarray[N, P, 3]): ``(x, y, visibility)``, continuous coordinates.
            flip_pairs: ``(left, right)`` keypoint index pairs, swapped by flips.

        Returns:
            np.ndarray[N, P, 3] (float64): moved keypoints, visibility unchanged here (a crop
            sets it to 0 for points it cuts away; a flip swaps the pairs).
        """
        kps = check_keypoints(keypoints, f"{type(self).__name__}.apply_keypoints")
        kps[..., :2] = self.apply_coords(kps[..., :2].reshape(-1, 2)).reshape(kps.shape[:2] + (2,))
        return kps

    def inverse(self) -> Transform:
        """The transform that undoes this one's geometry (geometric transforms only)."""
        raise NotImplementedError(f"{type(self).__name__} has no inverse")


class TransformList(Transform):
    """Transforms applied in order; nested lists are flattened.

    Args:
        transforms: the transforms; an empty list is the identity.
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        flat: list[Transform] = []
        for i, t in enumerate(transforms):
            if isinstance(t, TransformList):
                flat.extend(iter(t))
            elif isinstance(t, Transform):
                flat.append(t)
            else:
                raise TypeError(
                    f"TransformList: item {i} must be a Transform, got {type(t).__name__}"
                )
        self.transforms = flat
        self.is_geometric = any(t.is_geometric for t in flat)

    def __len__(self) -> int:
        return len(self.transforms)

    def __iter__(self) -> Iterator[Transform]:
        return iter(self.transforms)

    def __repr__(self) -> str:
        return f"TransformList({self.transforms!r})"

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Apply every transform to ``image`` in order (see :meth:`Transform.apply_image`)."""
        for t in self.transforms:
            image = t.apply_image(image)
        return image

    def apply_coords(self, coords: np.ndarray) -> FloatArray:
        """Apply every transform to ``coords`` ``[N, 2]`` in order."""
        out = check_points(coords, "coords", "TransformList.apply_coords", 2)
        for t in self.transforms:
            out = t.apply_coords(out)
        return out

    def apply_boxes(self, boxes: np.ndarray) -> FloatArray:
        """Apply every transform to xyxy ``boxes`` ``[N, 4]`` in order (crops clip)."""
        out = check_points(boxes, "boxes", "TransformList.apply_boxes", 4)
        for t in self.transforms:
            out = t.apply_boxes(out)
        return out

    def apply_polygons(self, polygons: Sequence[np.ndarray]) -> list[FloatArray]:
        """Apply every transform to the polygons of one instance in order."""
        out = [check_polygon(p, "TransformList.apply_polygons").ravel() for p in polygons]
        for t in self.transforms:
            out = t.apply_polygons(out)
        return out

    def apply_bitmasks(self, masks: np.ndarray) -> np.ndarray:
        """Apply every transform to bool ``masks`` ``[N, H, W]`` in order."""
        for t in self.transforms:
            masks = t.apply_bitmasks(masks)
        return masks

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Apply every transform to an ``[H, W]`` label map in order."""
        for t in self.transforms:
            segmentation = t.apply_segmentation(segmentation)
        return segmentation

    def apply_keypoints(
        self, keypoints: np.ndarray, flip_pairs: Sequence[tuple[int, int]] = ()
    ) -> FloatArray:
        """Apply every transform to ``keypoints`` ``[N, P, 3]`` in order."""
        out = check_keypoints(keypoints, "TransformList.apply_keypoints")
        for t in self.transforms:
            out = t.apply_keypoints(out, flip_pairs)
        return out

    def inverse(self) -> TransformList:
        """The inverse geometry: inverses of the geometric transforms, in reverse order.

        Photometric transforms are skipped (they do not move anything), so the result maps boxes,
        masks and keypoints predicted on the transformed image back to the original image.
        """
        return TransformList([t.inverse() for t in reversed(self.transforms) if t.is_geometric])
