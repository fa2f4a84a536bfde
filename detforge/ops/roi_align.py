"""RoIAlign (Mask R-CNN): bilinear pooling of a feature map over boxes, as a function and a module.

The semantics are those of torchvision's and detectron2's ``roi_align`` kernels, exactly in where
the samples fall and which of them count. The argument checks shared with ``roi_pool`` live here
too. No compiled kernel exists yet, so ``roi_align`` always dispatches to the vectorised reference
in ``detforge.ops._reference.roi_align``; a future ``torch.ops.detforge.roi_align`` kernel would
be dispatched to from here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detforge.ops._reference import roi_align as _ref
from detforge.utils.checks import (
    as_tuple2,
    check_boxes,
    check_floating,
    check_same_device,
    check_shape,
    check_tensor,
)

__all__ = ["RoIAlign", "roi_align"]


def _is_int(value: object) -> bool:
    """An integer (Python or NumPy), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _rois_from_list(fn: str, boxes: Sequence[object], input: Tensor) -> Tensor:
    """``B`` tensors ``[Ri, 4]`` (one per image) -> ``Tensor[R, 5]`` with the batch index first."""
    if len(boxes) != input.shape[0]:
        raise ValueError(
            f"{fn}: `rois` given as a list must hold one box tensor per image of `input` "
            f"({input.shape[0]}), got {len(boxes)}"
        )
    rows = []
    for i, b in enumerate(boxes):
        b = check_boxes(b, f"rois[{i}]", fn, ordered=False)
        if b.dtype != input.dtype or b.device != input.device:
            raise TypeError(
                f"{fn}: `rois[{i}]` must have the dtype and device of `input` "
                f"({input.dtype}, {input.device}), got {b.dtype}, {b.device}"
            )
        rows.append(torch.cat([torch.full_like(b[:, :1], i), b], dim=1))
    if not rows:
        return input.new_zeros((0, 5))
    return torch.cat(rows, dim=0)


def _check_rois(fn: str, rois: Tensor, input: Tensor) -> None:
    """Check ``Tensor[R, 5]`` RoIs: dtype, device, finiteness, batch indices and box order."""
    check_shape(rois, "rois", fn, (None, 5))
    check_floating(rois, "rois", fn)
    check_same_device(fn, input=input, rois=rois)
    if rois.dtype != input.dtype:
        raise TypeError(
            f"{fn}: `rois` must have the dtype of `input` ({input.dtype}), got {rois.dtype}"
        )
    if rois.shape[0] == 0:
        return
    bad = ~torch.isfinite(rois).all(dim=1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{fn}: `rois` must be finite; row {i} is {rois[i].tolist()}")
    idx = rois[:, 0]
    bad = (idx != idx.floor()) | (idx < 0) | (idx >= input.shape[0])
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{fn}: `rois` row {i} has batch index {idx[i].item():g} but `input` has "
            f"{input.shape[0]} images (indices must be integers in [0, {input.shape[0]}))"
        )
    check_boxes(rois[:, 1:], "rois", fn)


def check_roi_inputs(
    fn: str,
    input: object,
    rois: object,
    output_size: object,
    spatial_scale: object,
) -> tuple[Tensor, Tensor, tuple[int, int], float]:
    """Validate the arguments every RoI op takes and normalise them.

    Args:
        fn: name of the op, used in error messages.
        input: should be a floating ``Tensor[B, C, H, W]`` with ``H, W > 0``.
        rois: ``Tensor[R, 5]`` or a sequence of ``B`` tensors ``[Ri, 4]``; see ``roi_align``.
        output_size: positive ``int`` or pair of ints.
        spatial_scale: positive finite number.

    Returns:
        ``(input, rois as Tensor[R, 5], (PH, PW), spatial_scale as float)``.

    Raises:
        TypeError: for a wrong type or dtype. ValueError: for a wrong shape, device or value.
    """
    x = check_tensor(input, "input", fn)
    check_shape(x, "input", fn, (None, None, None, None))
    check_floating(x, "input", fn)
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{fn}: `input` must have positive height and width, got {list(x.shape)}")
    if isinstance(rois, Tensor):
        r = rois
        _check_rois(fn, r, x)
    elif isinstance(rois, Sequence) and not isinstance(rois, str):
        r = _rois_from_list(fn, rois, x)
        _check_rois(fn, r, x)
    else:
        raise TypeError(
            f"{fn}: `rois` must be a Tensor[R, 5] or a list of Tensor[Ri, 4], "
            f"got {type(rois).__name__}"
        )
    if _is_int(output_size):
        size = as_tuple2(int(output_size), "output_size", fn)  # type: ignore[call-overload]
    elif isinstance(output_size, Sequence) and all(_is_int(v) for v in output_size):
        size = as_tuple2([int(v) for v in output_size], "output_size", fn)
    else:
        raise TypeError(f"{fn}: `output_size` must be an int or two ints, got {output_size!r}")
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, numbers.Real):
        raise TypeError(f"{fn}: `spatial_scale` must be a number, got {spatial_scale!r}")
    scale = float(spatial_scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{fn}: `spatial_scale` must be positive and finite, got {scale}")
    return x, r, size, scale


def roi_align(
    input: Tensor,
    rois: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Pool each RoI of a feature map into a fixed grid of bins by bilinear sampling (RoIAlign).

    Each RoI is scaled to map coordinates (``x * spatial_scale``, then ``- 0.5`` when
    ``aligned``), split into ``PH x PW`` bins, and each bin is the average of a regular grid of
    bilinear samples. A sample more than one cell outside the map (``y < -1`` or ``y > H``, same
    for ``x``) counts as zero; otherwise it is clamped to the map. The average is over all the
    bin's samples, including those that count as zero. This matches torchvision's and
    detectron2's kernels for finite inputs (a NaN or inf in ``input`` can spread to every bin of
    a RoI whose window covers it, where the kernels touch only the four neighbours of a sample).

    Args:
        input (Tensor[B, C, H, W]): feature map, any floating dtype (half and bfloat16 are
            computed in float32), any layout.
        rois (Tensor[R, 5] or list of B Tensor[Ri, 4]): ``(batch index, x1, y1, x2, y2)`` in
            image pixels (the pixel model of ``detforge.structures.boxes``), same dtype and device
            as ``input``; or one ``xyxy`` tensor per image. Boxes must satisfy ``x2 >= x1`` and
            ``y2 >= y1``; zero-size boxes are allowed. RoIs get no gradient.
        output_size: ``PH`` = ``PW``, or ``(PH, PW)``.
        spatial_scale: map cells per image pixel, e.g. ``1 / 4`` for a stride-4 map.
        sampling_ratio: samples per bin along each axis; ``<= 0`` is adaptive:
            ``ceil(roi_height / PH)`` rows and ``ceil(roi_width / PW)`` columns, per RoI.
        aligned: ``True`` shifts the scaled box by half a cell so that box edges fall on cell
            edges (detectron2's ``ROIAlignV2``); ``False`` is the legacy behaviour, which also
            enlarges RoIs smaller than one cell to one cell.

    Returns:
        Tensor[R, C, PH, PW]: pooled features, contiguous, in the dtype of ``input``.

    Raises:
        TypeError, ValueError: for invalid arguments, naming the argument.
    """
    x, r, size, scale = check_roi_inputs("roi_align", input, rois, output_size, spatial_scale)
    if not _is_int(sampling_ratio):
        raise TypeError(f"roi_align: `sampling_ratio` must be an int, got {sampling_ratio!r}")
    return _ref.roi_align(x, r, size, scale, int(sampling_ratio), bool(aligned))


class RoIAlign(nn.Module):
    """``roi_align`` as a module; see that function for the arguments and semantics.

    Args:
        output_size: ``PH`` = ``PW``, or ``(PH, PW)``.
        spatial_scale: map cells per image pixel.
        sampling_ratio: samples per bin along each axis; ``<= 0`` for adaptive.
        aligned: half-pixel-corrected sampling (``True``) or legacy (``False``).
    """

    def __init__(
        self,
        output_size: int | tuple[int, int],
        *,
        spatial_scale: float,
        sampling_ratio: int = -1,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        self.output_size = as_tuple2(output_size, "output_size", "RoIAlign")
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor | Sequence[Tensor]) -> Tensor:
        """Pool ``rois`` (Tensor[R, 5] or B Tensor[Ri, 4]) from ``input`` (Tensor[B, C, H, W]).

        Returns:
            Tensor[R, C, PH, PW].
        """
        return roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def extra_repr(self) -> str:
        """The constructor arguments, shown by ``repr``."""
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
