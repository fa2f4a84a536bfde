"""Multi-level RoI pooling for feature pyramids.

Each box is pooled from the one pyramid level that suits its size, by the canonical rule of the
FPN paper (Lin et al., 2017, eq. 1): a box of ``canonical_box_size`` pixels (224, the ImageNet
crop) goes to ``canonical_level`` (4, i.e. stride 16), and each halving or doubling of the box's
size moves it one level down or up, clamped to the levels present.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from detforge.ops._reference import roi_align as _align
from detforge.ops._reference import roi_pool as _maxpool
from detforge.ops.roi_crop import crop_pool
from detforge.utils.checks import as_tuple2, check_boxes, values_on_host

__all__ = ["MultiLevelRoIPooler", "PoolerType", "assign_boxes_to_levels", "boxes_to_rois"]

PoolerType = Literal["roi_align", "roi_align_v2", "roi_pool", "roi_crop"]
_POOLER_TYPES = ("roi_align", "roi_align_v2", "roi_pool", "roi_crop")


def assign_boxes_to_levels(
    boxes: Tensor,
    min_level: int,
    max_level: int,
    *,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
) -> Tensor:
    """Pyramid level of each box: ``floor(canonical_level + log2(sqrt(area) / canonical_size))``.

    Args:
        boxes (Tensor[R, 4]): xyxy, image pixels.
        min_level: finest level present (e.g. 2 for P2, stride 4).
        max_level: coarsest level present (e.g. 5 for P5).
        canonical_box_size: box size (sqrt of area) that maps to ``canonical_level``.
        canonical_level: level of the canonical box size.

    Returns:
        Tensor[R] (int64): ``level - min_level``, i.e. an index into the list of feature maps.
    """
    check_boxes(boxes, "boxes", "assign_boxes_to_levels")
    if min_level > max_level:
        raise ValueError(f"assign_boxes_to_levels: min_level {min_level} > max_level {max_level}")
    return _levels(boxes, min_level, max_level, canonical_box_size, canonical_level)


def _levels(
    boxes: Tensor, min_level: int, max_level: int, canonical_size: float, canonical_level: int
) -> Tensor:
    """:func:`assign_boxes_to_levels` without the checks."""
    canonical_box_size = canonical_size
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    size = area.sqrt()
    # The 1e-8 keeps zero-size boxes finite (they go to the finest level), as in detectron2.
    level = torch.floor(canonical_level + torch.log2(size / canonical_box_size + 1e-8))
    return level.clamp(min=min_level, max=max_level).to(torch.int64) - min_level


def boxes_to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """Concatenate per-image boxes into ``Tensor[R, 5]`` rows ``(batch index, x1, y1, x2, y2)``.

    Args:
        boxes: one ``Tensor[R_i, 4]`` per image, same dtype and device.

    Returns:
        Tensor[sum R_i, 5].
    """
    for i, b in enumerate(boxes):
        check_boxes(b, f"boxes[{i}]", "boxes_to_rois")
    if len(boxes) == 0:
        raise ValueError("boxes_to_rois: `boxes` is an empty list (one tensor per image needed)")
    return _rois(boxes)


def _rois(boxes: Sequence[Tensor]) -> Tensor:
    """:func:`boxes_to_rois` without the checks."""
    cat = torch.cat(list(boxes), dim=0)
    index = torch.cat(
        [
            torch.full((len(b), 1), i, dtype=cat.dtype, device=cat.device)
            for i, b in enumerate(boxes)
        ]
    )
    return torch.cat([index, cat], dim=1)


class MultiLevelRoIPooler(nn.Module):
    """Pool a fixed-size feature for each box from the pyramid level that suits its size.

    Args:
        output_size: ``PH`` or ``(PH, PW)``.
        scales: ``spatial_scale`` of each feature map, finest first; each must be a power of two
            (``1 / stride``), e.g. ``(1/4, 1/8, 1/16, 1/32)`` for P2-P5.
        pooler_type: ``"roi_align_v2"`` (RoIAlign with ``aligned=True``: the half-pixel-correct
            one, detectron2's ``ROIAlignV2``), ``"roi_align"`` (legacy ``aligned=False``, as in
            Detectron and the original Mask R-CNN), ``"roi_pool"`` (max pooling, Fast R-CNN), or
            ``"roi_crop"`` (bilinear crop then 2x2 max pool, faster-rcnn.pytorch's crop mode).
        sampling_ratio: RoIAlign samples per bin side; ``<= 0`` is adaptive.
        canonical_box_size: see :func:`assign_boxes_to_levels`.
        canonical_level: see :func:`assign_boxes_to_levels`.
    """

    def __init__(
        self,
        output_size: int | tuple[int, int],
        scales: Sequence[float],
        *,
        pooler_type: PoolerType = "roi_align_v2",
        sampling_ratio: int = 0,
        canonical_box_size: float = 224.0,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        self.output_size = as_tuple2(output_size, "output_size", "MultiLevelRoIPooler")
        if pooler_type not in _POOLER_TYPES:
            raise ValueError(
                f"MultiLevelRoIPooler: `pooler_type` must be one of {_POOLER_TYPES}, "
                f"got {pooler_type!r}"
            )
        if len(scales) == 0:
            raise ValueError("MultiLevelRoIPooler: `scales` is empty")
        levels = []
        for s in scales:
            lvl = -math.log2(s) if s > 0 else math.nan
            if not math.isfinite(lvl) or abs(lvl - round(lvl)) > 1e-6:
                raise ValueError(f"MultiLevelRoIPooler: scale {s} is not a power of two (1/stride)")
            levels.append(round(lvl))
        if levels != list(range(levels[0], levels[0] + len(levels))):
            raise ValueError(
                f"MultiLevelRoIPooler: `scales` must be consecutive pyramid levels, finest first; "
                f"got strides {[2**lv for lv in levels]}"
            )
        self.scales = tuple(float(s) for s in scales)
        self.min_level, self.max_level = levels[0], levels[-1]
        self.pooler_type = pooler_type
        self.sampling_ratio = sampling_ratio
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def _pool(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        # The ops' implementations, without their checks: forward checked the boxes once (their
        # values only on the CPU, where that costs no device sync), not three times over.
        if self.pooler_type == "roi_pool":
            return _maxpool.roi_pool(feature, rois, self.output_size, scale)
        if self.pooler_type == "roi_crop":
            return crop_pool(feature, rois, self.output_size, scale)
        aligned = self.pooler_type == "roi_align_v2"
        return _align.roi_align(
            feature, rois, self.output_size, scale, int(self.sampling_ratio), aligned
        )

    def forward(self, features: Sequence[Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """Pool every box.

        Args:
            features: ``Tensor[B, C, H_l, W_l]`` per level, in the order of ``scales``.
            boxes: ``Tensor[R_i, 4]`` xyxy image-pixel boxes per image (``B`` tensors).

        Returns:
            Tensor[R, C, PH, PW]: one pooled feature per box, in the order of the concatenated
            ``boxes``.
        """
        name = "MultiLevelRoIPooler"
        if len(features) != len(self.scales):
            raise ValueError(
                f"{name}: {len(features)} feature maps given but {len(self.scales)} scales"
            )
        for i, f in enumerate(features):
            if f.dim() != 4 or f.shape[:2] != features[0].shape[:2]:
                raise ValueError(
                    f"{name}: features[{i}] has shape {list(f.shape)}; every level must be "
                    f"[B, C, H, W] with the B and C of features[0] {list(features[0].shape[:2])}"
                )
        if len(boxes) != features[0].shape[0]:
            raise ValueError(
                f"{name}: {len(boxes)} box tensors for a batch of {features[0].shape[0]} images"
            )
        for i, b in enumerate(boxes):  # structure here; values below, only where cheap
            if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
                shape = list(b.shape) if isinstance(b, Tensor) else type(b).__name__
                raise ValueError(f"{name}: boxes[{i}] must be Tensor[R, 4], got {shape}")
            if not b.is_floating_point() or b.device != features[0].device:
                raise ValueError(
                    f"{name}: boxes[{i}] must be floating and on {features[0].device}, got "
                    f"{b.dtype} on {b.device}"
                )
            if values_on_host(b):  # box order too, where reading it costs no device sync
                check_boxes(b, f"boxes[{i}]", name)
        exact = _rois(boxes)
        rois = exact.to(features[0].dtype)
        if len(features) == 1:
            return self._pool(features[0], rois, self.scales[0])
        # Levels from the boxes' own precision: in half precision the area of a 300 px box
        # overflows (as detectron2, which casts only for RoIAlign).
        level = _levels(
            exact[:, 1:],
            self.min_level,
            self.max_level,
            self.canonical_box_size,
            self.canonical_level,
        )
        c = features[0].shape[1]
        out = features[0].new_zeros((rois.shape[0], c, *self.output_size))
        for lvl, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            idx = torch.nonzero(level == lvl).squeeze(1)
            if idx.numel() > 0:
                out.index_put_((idx,), self._pool(feature, rois[idx], scale))
        return out

    def extra_repr(self) -> str:
        """Constructor arguments, shown by ``print(module)``."""
        return (
            f"output_size={self.output_size}, scales={self.scales}, "
            f"pooler_type={self.pooler_type!r}, sampling_ratio={self.sampling_ratio}"
        )
