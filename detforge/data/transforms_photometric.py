"""Photometric transforms: brightness, contrast, saturation and PCA lighting noise.

They change pixel values only; every geometric ``apply_*`` method returns its input unchanged
(coordinates as a float64 copy). Each is a blend ``out = factor * image + (1 - factor) * other``
computed in float64, as in detectron2 and in the colour jitter of fb.resnet.torch:

* brightness blends with black (``other = 0``),
* contrast blends with the mean intensity of the image (a scalar fixed when the transform is made),
* saturation blends with the per-pixel luma ``0.299 R + 0.587 G + 0.114 B`` (RGB channel order),
* lighting adds ``eigvecs @ (alphas * eigvals)`` to each RGB pixel, with the ImageNet RGB
  principal components of AlexNet (Krizhevsky et al., 2012), ``eigvals`` being for intensities in
  ``[0, 1]``. detectron2 adds this offset to 0..255 images unscaled, which makes it about 255
  times weaker than intended; we scale it by ``value_scale`` (255 for uint8 images).

uint8 results are rounded to the nearest integer and clipped to ``[0, 255]``; floating results
keep their dtype and range (no clipping). Images must be RGB where the colour matters
(saturation, lighting): the mapper runs augmentations before any conversion to BGR.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from detforge.data.transforms import (
    FloatArray,
    Transform,
    check_image,
    check_keypoints,
    check_masks,
    check_points,
    check_segmentation,
)
from detforge.utils.checks import check_float

__all__ = [
    "IMAGENET_EIGENVALUES",
    "IMAGENET_EIGENVECTORS",
    "BrightnessTransform",
    "ContrastTransform",
    "LightingTransform",
    "SaturationTransform",
]

#: Eigenvalues of the covariance of ImageNet RGB pixels in [0, 1] (fb.resnet.torch, AlexNet).
IMAGENET_EIGENVALUES = np.array([0.2175, 0.0188, 0.0045])
#: The matching eigenvectors, one per column, rows in R, G, B order.
IMAGENET_EIGENVECTORS = np.array(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ]
)
_LUMA = np.array([0.299, 0.587, 0.114])


def _check_rgb(image: np.ndarray, fn: str) -> None:
    check_image(image, fn)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{fn}: `image` must be an RGB image [H, W, 3], got {image.shape}")


def _finish(result: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Round and clip to uint8, or cast back to the input's floating dtype."""
    if like.dtype == np.uint8:
        return np.clip(np.rint(result), 0, 255).astype(np.uint8)
    return result.astype(like.dtype)


class _Photometric(Transform):
    """Shared identity geometry of the photometric transforms."""

    is_geometric = False

    def apply_coords(self, coords: np.ndarray) -> FloatArray:
        """Return a float64 copy of ``[N, 2]`` points."""
        return check_points(coords, "coords", f"{type(self).__name__}.apply_coords", 2)

    def apply_bitmasks(self, masks: np.ndarray) -> np.ndarray:
        """Return ``[N, H, W]`` bool masks unchanged."""
        return check_masks(masks, f"{type(self).__name__}.apply_bitmasks")

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Return an ``[H, W]`` label map unchanged."""
        return check_segmentation(segmentation, f"{type(self).__name__}.apply_segmentation")

    def apply_keypoints(
        self, keypoints: np.ndarray, flip_pairs: Sequence[tuple[int, int]] = ()
    ) -> FloatArray:
        """Return a float64 copy of ``[N, P, 3]`` keypoints."""
        return check_keypoints(keypoints, f"{type(self).__name__}.apply_keypoints")


class BrightnessTransform(_Photometric):
    """Scale intensities: ``out = factor * image``.

    Args:
        factor: 1 keeps the image, 0 gives black.
    """

    def __init__(self, factor: float) -> None:
        self.factor = check_float(factor, "factor", "BrightnessTransform")

    def __repr__(self) -> str:
        return f"BrightnessTransform(factor={self.factor})"

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Brighten or darken an ``[H, W(, C)]`` image."""
        check_image(image, "BrightnessTransform.apply_image")
        return _finish(image.astype(np.float64) * self.factor, image)


class ContrastTransform(_Photometric):
    """Blend with a constant grey: ``out = factor * image + (1 - factor) * mean``.

    Args:
        factor: 1 keeps the image, 0 gives a flat ``mean`` image.
        mean: the grey level, usually the mean over all pixels and channels of the image the
            transform is made for (a parameter, so that the transform is fully determined).
    """

    def __init__(self, factor: float, mean: float) -> None:
        self.factor = check_float(factor, "factor", "ContrastTransform")
        self.mean = check_float(mean, "mean", "ContrastTransform")

    def __repr__(self) -> str:
        return f"ContrastTransform(factor={self.factor}, mean={self.mean})"

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Raise or lower the contrast of an ``[H, W(, C)]`` image."""
        check_image(image, "ContrastTransform.apply_image")
        blended = self.factor * image.astype(np.float64) + (1.0 - self.factor) * self.mean
        return _finish(blended, image)


class SaturationTransform(_Photometric):
    """Blend with the grey (luma) image: ``out = factor * rgb + (1 - factor) * luma``.

    Args:
        factor: 1 keeps the image, 0 gives its grey version, above 1 saturates.
    """

    def __init__(self, factor: float) -> None:
        self.factor = check_float(factor, "factor", "SaturationTransform")

    def __repr__(self) -> str:
        return f"SaturationTransform(factor={self.factor})"

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(De)saturate an RGB ``[H, W, 3]`` image."""
        _check_rgb(image, "SaturationTransform.apply_image")
        rgb = image.astype(np.float64)
        luma = rgb @ _LUMA  # [H, W]
        blended = self.factor * rgb + (1.0 - self.factor) * luma[..., None]
        return _finish(blended, image)


class LightingTransform(_Photometric):
    """AlexNet-style PCA lighting noise: add ``value_scale * eigvecs @ (alphas * eigvals)``.

    Args:
        alphas: the 3 weights of the principal components (drawn from ``N(0, scale^2)`` by
            ``RandomLighting``).
        value_scale: intensity of white in the images it is applied to (255 for uint8, 1 for
            floating images in ``[0, 1]``).
    """

    def __init__(self, alphas: Sequence[float] | np.ndarray, value_scale: float = 255.0) -> None:
        a = np.asarray(alphas, dtype=np.float64)
        if a.shape != (3,) or not np.isfinite(a).all():
            raise ValueError(f"LightingTransform: `alphas` must be 3 finite numbers, got {alphas}")
        self.alphas = a
        self.value_scale = check_float(value_scale, "value_scale", "LightingTransform")

    def __repr__(self) -> str:
        return f"LightingTransform(alphas={self.alphas.tolist()}, value_scale={self.value_scale})"

    @property
    def offset(self) -> FloatArray:
        """np.ndarray[3]: the RGB offset added to every pixel."""
        out: FloatArray = IMAGENET_EIGENVECTORS @ (self.alphas * IMAGENET_EIGENVALUES)
        return out * self.value_scale

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Shift the colours of an RGB ``[H, W, 3]`` image."""
        _check_rgb(image, "LightingTransform.apply_image")
        return _finish(image.astype(np.float64) + self.offset, image)
