"""Anchor generation for dense detectors (RPN, RetinaNet) as in Faster R-CNN.

Every feature level ``l`` with stride ``s_l`` gets a fixed set of ``A_l`` *cell anchors* centred
at ``(0, 0)``, one per ``(size, aspect ratio)`` pair, enumerated size-major (for each size, for
each ratio). An anchor of size ``s`` and ratio ``r = height / width`` has area ``s ** 2``, width
``w = sqrt(s ** 2 / r)`` and height ``h = r * w``; its box is ``(-w/2, -h/2, w/2, h/2)``.

The cell anchors are then shifted to every location ``(y, x)`` of the ``H_l x W_l`` feature map,
by ``(x * s_l + offset * s_l, y * s_l + offset * s_l)``. With ``offset = 0`` (detectron2's
default configuration) the anchor centres sit on the top-left corners of the feature cells, with
``offset = 0.5`` on the cell centres. Anchors of one level are ordered location-major, row-major
over locations, then by cell anchor: anchor ``a`` at ``(y, x)`` has index ``(y * W_l + x) * A_l
+ a``, which matches a head output of shape ``[B, A_l * k, H_l, W_l]`` permuted to
``[B, H_l, W_l, A_l, k]``.

These are exactly detectron2's ``DefaultAnchorGenerator`` semantics: cell anchors are computed in
Python double precision and stored as float32, and grid anchors are float32 sums of float32
shifts and cell anchors, so loaded detectron2 checkpoints see bit-identical anchors.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detforge.utils.checks import check_float, check_int

__all__ = ["AnchorGenerator", "cell_anchors", "grid_anchors"]

_FN = "AnchorGenerator"


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """Anchors of one feature level centred at the origin.

    Args:
        sizes: anchor sizes (square root of the anchor area), in input-image pixels; positive.
        aspect_ratios: ``height / width`` ratios; positive.

    Returns:
        Tensor[A, 4] (float32): xyxy anchors with ``A = len(sizes) * len(aspect_ratios)``, ordered
        size-major: anchor ``i * len(aspect_ratios) + j`` has size ``sizes[i]`` and ratio
        ``aspect_ratios[j]``.
    """
    sizes = _check_positive_list(sizes, "sizes", "cell_anchors")
    aspect_ratios = _check_positive_list(aspect_ratios, "aspect_ratios", "cell_anchors")
    rows = []
    for size in sizes:
        area = size**2.0
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(rows, dtype=torch.float32)


def grid_anchors(
    cell: Tensor, grid_size: tuple[int, int], stride: int, offset: float = 0.0
) -> Tensor:
    """Tile one level's cell anchors over a feature map.

    Args:
        cell (Tensor[A, 4]): cell anchors centred at the origin (see :func:`cell_anchors`).
        grid_size: ``(H, W)`` of the feature map.
        stride: feature stride in input-image pixels.
        offset: relative offset of the first anchor centre from the image corner, in ``[0, 1)``.

    Returns:
        Tensor[H * W * A, 4]: xyxy anchors on ``cell``'s device and dtype; anchor ``a`` at
        location ``(y, x)`` is row ``(y * W + x) * A + a``.
    """
    if cell.dim() != 2 or cell.shape[1] != 4:
        raise ValueError(f"grid_anchors: `cell` must have shape [A, 4], got {list(cell.shape)}")
    height, width = (int(v) for v in grid_size)
    if height < 0 or width < 0:
        raise ValueError(f"grid_anchors: `grid_size` must be non-negative, got {grid_size}")
    shifts_x = torch.arange(width, dtype=cell.dtype, device=cell.device)
    shifts_y = torch.arange(height, dtype=cell.dtype, device=cell.device)
    shifts_x = shifts_x * stride + offset * stride  # [W]
    shifts_y = shifts_y * stride + offset * stride  # [H]
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")  # [H, W] each
    shift_x = shift_x.reshape(-1)
    shift_y = shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)  # [H * W, 4]
    return (shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4)  # [H * W * A, 4]


class AnchorGenerator(nn.Module):
    """Faster R-CNN anchors on a pyramid of feature maps (detectron2's default generator).

    ``sizes`` and ``aspect_ratios`` are either one list of floats used for every level, a list
    holding a single list (same), or one list per level. RetinaNet's three octave scales per
    level are simply per-level sizes such as ``[[32, 40.3, 50.8], [64, 80.6, 101.6], ...]``.

    Args:
        sizes: anchor sizes (square root of area) in input-image pixels, per level or shared.
        aspect_ratios: ``height / width`` ratios, per level or shared.
        strides: stride of each feature level, in input-image pixels; its length is the number
            of levels ``L``.
        offset: relative offset in ``[0, 1)`` of the first anchor centre from the image's
            top-left corner, in units of the stride (0.0 in detectron2's configs, 0.5 puts
            anchors on feature-cell centres).

    Example:
        >>> gen = AnchorGenerator([[32], [64]], [[0.5, 1.0, 2.0]], strides=[8, 16])
        >>> feats = [torch.zeros(2, 256, 4, 6), torch.zeros(2, 256, 2, 3)]
        >>> [a.shape for a in gen(feats)]
        [torch.Size([72, 4]), torch.Size([18, 4])]
    """

    def __init__(
        self,
        sizes: Sequence[float] | Sequence[Sequence[float]],
        aspect_ratios: Sequence[float] | Sequence[Sequence[float]],
        strides: Sequence[int],
        *,
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(strides, (str, bytes)) or not isinstance(strides, Sequence):
            raise TypeError(f"{_FN}: `strides` must be a sequence of ints, got {strides!r}")
        if len(strides) == 0:
            raise ValueError(f"{_FN}: `strides` must not be empty")
        self.strides: tuple[int, ...] = tuple(check_int(s, "strides", _FN, low=1) for s in strides)
        self.offset: float = check_float(offset, "offset", _FN, low=0, high=1, high_open=True)
        num_levels = len(self.strides)
        self.sizes: list[list[float]] = _broadcast(sizes, num_levels, "sizes")
        self.aspect_ratios: list[list[float]] = _broadcast(
            aspect_ratios, num_levels, "aspect_ratios"
        )
        for level, (s, r) in enumerate(zip(self.sizes, self.aspect_ratios, strict=True)):
            self.register_buffer(f"cell_anchors_{level}", cell_anchors(s, r), persistent=False)

    @property
    def num_levels(self) -> int:
        """Number of feature levels ``L``."""
        return len(self.strides)

    def cell_anchors(self) -> list[Tensor]:
        """The cell anchors of each level.

        Returns:
            list[Tensor[A_l, 4]]: float32 xyxy anchors centred at the origin, one per level.
        """
        return [self.get_buffer(f"cell_anchors_{i}") for i in range(self.num_levels)]

    def num_anchors_per_location(self) -> list[int]:
        """Number of anchors ``A_l`` at every location of each level.

        Returns:
            list[int]: ``len(sizes[l]) * len(aspect_ratios[l])`` for each level ``l``.
        """
        return [int(c.shape[0]) for c in self.cell_anchors()]

    def grid_anchors(self, grid_sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
        """Anchors for feature maps of the given sizes.

        Args:
            grid_sizes: ``(H_l, W_l)`` of each level; exactly ``L`` entries.

        Returns:
            list[Tensor[H_l * W_l * A_l, 4]]: float32 xyxy anchors per level, on the device of
            the module's buffers.
        """
        if len(grid_sizes) != self.num_levels:
            raise ValueError(
                f"{_FN}: got {len(grid_sizes)} feature maps but the generator was built for "
                f"{self.num_levels} levels (strides {list(self.strides)})"
            )
        return [
            grid_anchors(cell, (int(size[0]), int(size[1])), stride, self.offset)
            for cell, size, stride in zip(
                self.cell_anchors(), grid_sizes, self.strides, strict=True
            )
        ]

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Anchors for a list of feature maps; the same for every image of the batch.

        Args:
            features (list[Tensor[B, C, H_l, W_l]]): one feature map per level, finest first,
                in the order of ``strides``. Only their spatial sizes and device are used.

        Returns:
            list[Tensor[H_l * W_l * A_l, 4]]: float32 xyxy anchors per level, on the features'
            device, ordered location-major (index ``(y * W_l + x) * A_l + a``).
        """
        if isinstance(features, Tensor) or not isinstance(features, Sequence):
            raise TypeError(f"{_FN}.forward: `features` must be a list of tensors")
        for i, f in enumerate(features):
            if not isinstance(f, Tensor) or f.dim() < 2:
                raise ValueError(
                    f"{_FN}.forward: `features[{i}]` must be a tensor [B, C, H, W], got "
                    f"{type(f).__name__ if not isinstance(f, Tensor) else list(f.shape)}"
                )
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        anchors = self.grid_anchors(sizes)
        if features and features[0].device != anchors[0].device:
            anchors = [a.to(features[0].device) for a in anchors]
        return anchors

    def extra_repr(self) -> str:
        """Summary shown by ``print(module)``."""
        return (
            f"sizes={self.sizes}, aspect_ratios={self.aspect_ratios}, "
            f"strides={list(self.strides)}, offset={self.offset}"
        )


def _check_positive_list(values: Sequence[float], name: str, fn: str) -> list[float]:
    """Validate a non-empty sequence of positive finite numbers and return it as floats."""
    if isinstance(values, (str, bytes, Tensor)) or not isinstance(values, Sequence):
        raise TypeError(f"{fn}: `{name}` must be a sequence of numbers, got {values!r}")
    if len(values) == 0:
        raise ValueError(f"{fn}: `{name}` must not be empty")
    out: list[float] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{fn}: `{name}` must hold numbers, got {list(values)!r}")
        out.append(check_float(v, name, fn, low=0, low_open=True))
    return out


def _broadcast(
    params: Sequence[float] | Sequence[Sequence[float]], num_levels: int, name: str
) -> list[list[float]]:
    """Expand shared anchor parameters to one list per level (detectron2's broadcast rule)."""
    if isinstance(params, (str, bytes, Tensor)) or not isinstance(params, Sequence):
        raise TypeError(f"{_FN}: `{name}` must be a list of numbers or of lists, got {params!r}")
    if len(params) == 0:
        raise ValueError(f"{_FN}: `{name}` must not be empty")
    if not isinstance(params[0], Sequence):
        shared = _check_positive_list(params, name, _FN)  # type: ignore[arg-type]
        return [list(shared) for _ in range(num_levels)]
    per_level = [
        _check_positive_list(p, f"{name}[{i}]", _FN)  # type: ignore[arg-type]
        for i, p in enumerate(params)
    ]
    if len(per_level) == 1:
        return [list(per_level[0]) for _ in range(num_levels)]
    if len(per_level) != num_levels:
        raise ValueError(
            f"{_FN}: `{name}` has {len(per_level)} levels but `strides` has {num_levels}"
        )
    return per_level
