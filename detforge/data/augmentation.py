"""Augmentation policies: the random choices that produce a deterministic ``Transform`` per image.

A policy looks at the image it will transform and draws its parameters from the
``numpy.random.Generator`` passed in, and from nothing else, so the same image and the same
generator state always give the same transform (the data loader derives one generator per sample
from the run seed). :class:`AugmentationList` chains policies, each seeing the image produced by
the previous ones, and returns the composed :class:`~detforge.data.transforms.TransformList`,
whose ``apply_*`` methods then transform the annotations and whose ``inverse()`` maps predictions
back. Sizes follow detectron2's semantics, including its rounding, so that models trained with
either library see the same image sizes.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal

import numpy as np

from detforge.data.transforms import Transform, TransformList, check_image
from detforge.data.transforms_crop import CropTransform, PadTransform
from detforge.data.transforms_geometric import (
    HFlipTransform,
    Interpolation,
    ResizeTransform,
    VFlipTransform,
)
from detforge.data.transforms_photometric import (
    BrightnessTransform,
    ContrastTransform,
    LightingTransform,
    SaturationTransform,
)
from detforge.utils.checks import check_float, check_int

__all__ = [
    "Augmentation",
    "AugmentationList",
    "LargeScaleJitter",
    "RandomApply",
    "RandomBrightness",
    "RandomContrast",
    "RandomCrop",
    "RandomFlip",
    "RandomLighting",
    "RandomSaturation",
    "ResizeShortestEdge",
    "shortest_edge_size",
]

CropType = Literal["relative", "relative_range", "absolute", "absolute_range"]


def _check_rng(rng: object, fn: str) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{fn}: `rng` must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def _check_range(low: float, high: float, fn: str, names: tuple[str, str]) -> tuple[float, float]:
    low = check_float(low, names[0], fn, low=0)
    high = check_float(high, names[1], fn, low=0)
    if low > high:
        raise ValueError(f"{fn}: `{names[0]}`={low} is larger than `{names[1]}`={high}")
    return low, high


class Augmentation(ABC):
    """A policy that turns an image and a random generator into a deterministic transform."""

    @abstractmethod
    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> Transform:
        """Draw the transform for ``image``.

        Args:
            image (np.ndarray[H, W] | np.ndarray[H, W, C]): uint8 or floating, RGB when colour
                matters; only read.
            rng: the only source of randomness.

        Returns:
            Transform: to apply to the image and its annotations (an empty ``TransformList`` when
            the policy decides to do nothing).
        """


def shortest_edge_size(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """Output size of resizing the shorter side to ``short_edge``, capped by ``max_size``.

    detectron2's rule: scale so that the shorter side is ``short_edge``; if the longer side then
    exceeds ``max_size``, scale down so that it equals ``max_size``; round each side with
    ``int(x + 0.5)``.

    Args:
        height: input height.
        width: input width.
        short_edge: target length of the shorter side.
        max_size: the longest side allowed.

    Returns:
        ``(new_height, new_width)``.
    """
    scale = short_edge / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


class ResizeShortestEdge(Augmentation):
    """Resize so that the shorter side has a random length, the longer one at most ``max_size``.

    Args:
        short_edge_length: an int, or a tuple: with ``sample_style="range"`` the inclusive
            ``(min, max)`` from which an integer length is drawn uniformly; with ``"choice"``,
            the lengths to pick from uniformly. A drawn length of 0 means no resize.
        max_size: cap on the longer side (default: none).
        sample_style: ``"range"`` or ``"choice"``.
        interp: image interpolation (see ``ResizeTransform``).
    """

    def __init__(
        self,
        short_edge_length: int | Sequence[int],
        *,
        max_size: int = sys.maxsize,
        sample_style: Literal["range", "choice"] = "range",
        interp: Interpolation = "bilinear",
    ) -> None:
        fn = "ResizeShortestEdge"
        lengths = (
            (short_edge_length, short_edge_length)
            if isinstance(short_edge_length, int)
            else tuple(short_edge_length)
        )
        for v in lengths:
            check_int(v, "short_edge_length", fn, low=0)
        if sample_style not in ("range", "choice"):
            raise ValueError(
                f"{fn}: `sample_style` must be 'range' or 'choice', got {sample_style!r}"
            )
        if sample_style == "range" and (len(lengths) != 2 or lengths[0] > lengths[1]):
            raise ValueError(f"{fn}: with sample_style='range' give (min, max), got {lengths}")
        if len(lengths) == 0:
            raise ValueError(f"{fn}: `short_edge_length` is empty")
        check_int(max_size, "max_size", fn, low=1)
        self.short_edge_length, self.max_size = lengths, max_size
        self.sample_style, self.interp = sample_style, interp

    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> Transform:
        """A ``ResizeTransform`` to the drawn size (an empty ``TransformList`` for length 0)."""
        h, w = check_image(image, "ResizeShortestEdge.get_transform")
        rng = _check_rng(rng, "ResizeShortestEdge.get_transform")
        if self.sample_style == "range":
            size = int(rng.integers(self.short_edge_length[0], self.short_edge_length[1] + 1))
        else:
            size = int(self.short_edge_length[int(rng.integers(len(self.short_edge_length)))])
        if size == 0:
            return TransformList([])
        new_h, new_w = shortest_edge_size(h, w, size, self.max_size)
        return ResizeTransform(h=h, w=w, new_h=new_h, new_w=new_w, interp=self.interp)


class RandomFlip(Augmentation):
    """Flip horizontally (or vertically) with probability ``prob``.

    Args:
        prob: probability of flipping.
        horizontal: flip left-right.
        vertical: flip upside down; exactly one of ``horizontal`` and ``vertical`` must be set
            (chain two policies to flip both ways independently).
    """

    def __init__(self, prob: float = 0.5, *, horizontal: bool = True, vertical: bool = False):
        self.prob = check_float(prob, "prob", "RandomFlip", low=0, high=1)
        if horizontal == vertical:
            raise ValueError("RandomFlip: set exactly one of `horizontal` and `vertical`")
        self.horizontal = horizontal

    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> Transform:
        """A flip transform, or an empty ``TransformList`` (one draw from ``rng`` either way)."""
        h, w = check_image(image, "RandomFlip.get_transform")
        if _check_rng(rng, "RandomFlip.get_transform").random() >= self.prob:
            return TransformList([])
        return HFlipTransform(w) if self.horizontal else VFlipTransform(h)


class RandomCrop(Augmentation):
    """Crop a random window of random size (detectron2's ``RandomCrop``).

    ``crop_size`` is ``(h, w)``: ``"relative"`` takes the fractions ``(h, w)`` of the image;
    ``"relative_range"`` draws the fractions uniformly from ``[h, 1]`` and ``[w, 1]``;
    ``"absolute"`` takes ``(h, w)`` pixels (at most the image); ``"absolute_range"`` draws both
    sides as integers in ``[h, w]`` pixels (each capped by the image side). Relative sizes are
    rounded with ``int(x + 0.5)``. The window position is uniform over all valid integer offsets.

    Args:
        crop_type: one of the four types above.
        crop_size: the two numbers the type interprets.
    """

    def __init__(self, crop_type: CropType, crop_size: tuple[float, float]) -> None:
        fn = "RandomCrop"
        if crop_type not in ("relative", "relative_range", "absolute", "absolute_range"):
            raise ValueError(f"{fn}: unknown `crop_type` {crop_type!r}")
        size = tuple(float(v) for v in crop_size)
        if len(size) != 2 or not all(np.isfinite(size)):
            raise ValueError(f"{fn}: `crop_size` must be two finite numbers, got {crop_size}")
        if crop_type.startswith("relative") and not all(0 < v <= 1 for v in size):
            raise ValueError(f"{fn}: relative `crop_size` must be in (0, 1], got {crop_size}")
        if crop_type.startswith("absolute") and not all(v >= 1 and v == int(v) for v in size):
            raise ValueError(f"{fn}: absolute `crop_size` must be ints >= 1, got {crop_size}")
        if crop_type == "absolute_range" and size[0] > size[1]:
            raise ValueError(f"{fn}: absolute_range `crop_size` must be (min, max), got {size}")
        self.crop_type, self.crop_size = crop_type, size

    def crop_size_for(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int]:
        """Draw the ``(crop_h, crop_w)`` for a ``height x width`` image."""
        ch, cw = self.crop_size
        if self.crop_type == "relative":
            return int(height * ch + 0.5), int(width * cw + 0.5)
        if self.crop_type == "relative_range":
            fh, fw = np.asarray(self.crop_size) + rng.random(2) * (1 - np.asarray(self.crop_size))
            return int(height * fh + 0.5), int(width * fw + 0.5)
        if self.crop_type == "absolute":
            return min(int(ch), height), min(int(cw), width)
        low, high = int(ch), int(cw)
        new_h = int(rng.integers(min(height, low), min(height, high) + 1))
        new_w = int(rng.integers(min(width, low), min(width, high) + 1))
        return new_h, new_w

    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> Transform:
        """A ``CropTransform`` of the drawn size at a uniformly drawn position."""
        h, w = check_image(image, "RandomCrop.get_transform")
        rng = _check_rng(rng, "RandomCrop.get_transform")
        ch, cw = self.crop_size_for(h, w, rng)
        ch, cw = max(ch, 1), max(cw, 1)
        y0 = int(rng.integers(h - ch + 1))
        x0 = int(rng.integers(w - cw + 1))
        return CropTransform(x0=x0, y0=y0, w=cw, h=ch, orig_h=h, orig_w=w)


class RandomApply(Augmentation):
    """Apply ``aug`` with probability ``prob``, otherwise nothing.

    Args:
        aug: the wrapped policy.
        prob: probability of applying it.
    """

    def __init__(self, aug: Augmentation, prob: float = 0.5) -> None:
        if not isinstance(aug, Augmentation):
            raise TypeError(f"RandomApply: `aug` must be an Augmentation, got {type(aug).__name__}")
        self.aug, self.prob = aug, check_float(prob, "prob", "RandomApply", low=0, high=1)

    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> Transform:
        """``aug``'s transform or an empty ``TransformList``."""
        if _check_rng(rng, "RandomApply.get_transform").random() < self.prob:
            return self.aug.get_transform(image, rng)
        return TransformList([])


class _RandomFactor(Augmentation):
    """A blend factor drawn uniformly from ``[intensity_min, intensity_max]``."""

    def __init__(self, intensity_min: float, intensity_max: float) -> None:
        names = ("intensity_min", "intensity_max")
        fn = type(self).__name__
        self.low, self.high = _check_range(intensity_min, intensity_max, fn, names)

    def _factor(self, rng: np.random.Generator) -> float:
        return float(
            _check_rng(rng, f"{type(self).__name__}.get_transform").uniform(self.low, self.high)
        )


class RandomBrightness(_RandomFactor):
    """``BrightnessTransform`` with a factor drawn from ``[intensity_min, intensity_max]``.

    Args:
        intensity_min: smallest factor (1 keeps the image).
        intensity_max: largest factor.
    """

    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> Transform:
        """A ``BrightnessTransform``."""
        return BrightnessTransform(self._factor(rng))


class RandomContrast(_RandomFactor):
    """``ContrastTransform`` with a drawn factor, around the mean of the image.

    Args:
        intensity_min: smallest factor (1 keeps the image).
        intensity_max: largest factor.
    """

    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> Transform:
        """A ``ContrastTransform`` around the mean of ``image`` (all pixels and channels)."""
        check_image(image, "RandomContrast.get_transform")
        return ContrastTransform(self._factor(rng), float(image.mean()))


class RandomSaturation(_RandomFactor):
    """``SaturationTransform`` with a drawn factor (RGB images).

    Args:
        intensity_min: smallest factor (1 keeps the image, 0 is grey).
        intensity_max: largest factor.
    """

    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> Transform:
        """A ``SaturationTransform``."""
        return SaturationTransform(self._factor(rng))


class RandomLighting(Augmentation):
    """PCA lighting noise with component weights drawn from ``N(0, scale^2)`` (RGB images).

    Args:
        scale: standard deviation of the weights (0.1 in AlexNet and fb.resnet.torch).
        value_scale: intensity of white (255 for uint8 images).
    """

    def __init__(self, scale: float, value_scale: float = 255.0) -> None:
        self.scale, _ = _check_range(scale, scale, "RandomLighting", ("scale", "scale"))
        self.value_scale = float(value_scale)

    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> Transform:
        """A ``LightingTransform``."""
        rng = _check_rng(rng, "RandomLighting.get_transform")
        return LightingTransform(rng.normal(0.0, self.scale, size=3), self.value_scale)


class LargeScaleJitter(Augmentation):
    """Large-scale jitter (Ghiasi et al., 2021): random rescale, then crop/pad to a fixed size.

    As detectron2's ``ResizeScale`` + ``FixedSizeCrop``: draw ``s ~ U(min_scale, max_scale)``,
    resize the image (keeping its aspect ratio) to fit inside ``s * output_size`` with sides
    ``round(side * scale)``; then, where it is larger than ``output_size``, crop it at an offset of
    ``round(u * excess)`` with one ``u ~ U(0, 1)`` for both axes, and where it is smaller, pad it
    at the bottom/right with ``pad_value``.

    Args:
        output_size: ``(height, width)`` of every output image, or one int for a square.
        min_scale: smallest scale of ``output_size``.
        max_scale: largest scale.
        pad_value: image fill value of the padding (detectron2 uses 128).
        seg_pad_value: label-map fill value of the padding.
        interp: image interpolation of the resize.
    """

    def __init__(
        self,
        output_size: int | tuple[int, int],
        *,
        min_scale: float = 0.1,
        max_scale: float = 2.0,
        pad_value: float = 128.0,
        seg_pad_value: int = 255,
        interp: Interpolation = "bilinear",
    ) -> None:
        fn = "LargeScaleJitter"
        size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        if len(size) != 2 or any(
            isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in size
        ):
            raise ValueError(f"{fn}: `output_size` must be a positive int or (h, w), got {size}")
        self.min_scale, self.max_scale = _check_range(
            min_scale, max_scale, fn, ("min_scale", "max_scale")
        )
        if self.min_scale <= 0:
            raise ValueError(f"{fn}: `min_scale` must be > 0, got {min_scale}")
        self.output_size = (int(size[0]), int(size[1]))
        self.pad_value, self.seg_pad_value, self.interp = pad_value, seg_pad_value, interp

    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> Transform:
        """``TransformList([resize, crop?, pad?])`` (crop and pad only where needed)."""
        h, w = check_image(image, "LargeScaleJitter.get_transform")
        rng = _check_rng(rng, "LargeScaleJitter.get_transform")
        out_h, out_w = self.output_size
        jitter = float(rng.uniform(self.min_scale, self.max_scale))
        scale = min(jitter * out_h / h, jitter * out_w / w)
        new_h, new_w = max(int(np.round(h * scale)), 1), max(int(np.round(w * scale)), 1)
        steps: list[Transform] = [
            ResizeTransform(h=h, w=w, new_h=new_h, new_w=new_w, interp=self.interp)
        ]
        u = float(rng.uniform(0.0, 1.0))
        crop_h, crop_w = min(new_h, out_h), min(new_w, out_w)
        if (crop_h, crop_w) != (new_h, new_w):
            y0, x0 = int(np.round((new_h - crop_h) * u)), int(np.round((new_w - crop_w) * u))
            steps.append(
                CropTransform(x0=x0, y0=y0, w=crop_w, h=crop_h, orig_h=new_h, orig_w=new_w)
            )
        if (crop_h, crop_w) != (out_h, out_w):
            steps.append(
                PadTransform(
                    top=0,
                    left=0,
                    bottom=out_h - crop_h,
                    right=out_w - crop_w,
                    height=crop_h,
                    width=crop_w,
                    pad_value=self.pad_value,
                    seg_pad_value=self.seg_pad_value,
                )
            )
        return TransformList(steps)


class AugmentationList(Augmentation):
    """Policies applied in sequence, each seeing the image the previous ones produced.

    Args:
        augmentations: the policies, in order.
    """

    def __init__(self, augmentations: Sequence[Augmentation]) -> None:
        for i, aug in enumerate(augmentations):
            if not isinstance(aug, Augmentation):
                raise TypeError(
                    f"AugmentationList: item {i} must be an Augmentation, got {type(aug).__name__}"
                )
        self.augmentations = list(augmentations)

    def __call__(
        self, image: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, TransformList]:
        """Draw and apply every policy to ``image``.

        Args:
            image (np.ndarray[H, W(, C)]): uint8 or floating (RGB where colour matters).
            rng: the only source of randomness.

        Returns:
            ``(transformed image, transforms)``: apply ``transforms`` to the annotations.
        """
        check_image(image, "AugmentationList")
        rng = _check_rng(rng, "AugmentationList")
        steps: list[Transform] = []
        for aug in self.augmentations:
            t = aug.get_transform(image, rng)
            image = t.apply_image(image)
            steps.append(t)
        return image, TransformList(steps)

    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> TransformList:
        """The composed transform (the image is transformed internally to feed later policies)."""
        return self(image, rng)[1]
