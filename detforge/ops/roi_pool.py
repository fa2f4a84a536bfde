"""RoIPool (Fast R-CNN): max pooling of a feature map over quantised RoI bins.

The semantics are those of torchvision's ``roi_pool`` kernel. No compiled kernel exists yet, so
``roi_pool`` always dispatches to the vectorised reference in ``detforge.ops._reference``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from detforge.ops._reference import roi_pool as _ref
from detforge.ops.roi_align import check_roi_inputs
from detforge.utils.checks import as_tuple2

__all__ = ["RoIPool", "roi_pool"]


def roi_pool(
    input: Tensor,
    rois: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Max-pool each RoI of a feature map into a fixed grid of bins (RoIPool).

    Each RoI corner is scaled and rounded to a map cell (``round(x1 * spatial_scale)``, C
    rounding, halves away from zero); the RoI covers the cells from the start to the end cell
    inclusive (at least one). Bin ``ph`` covers rows ``[floor(ph * bh), ceil((ph + 1) * bh))``
    after the start row, with ``bh = roi_height / PH``, clipped to the map; columns likewise.
    Each output is the maximum over its bin, or 0 for a bin that is empty after clipping. The
    gradient of an output goes to the element it was taken from (the first maximum in row-major
    order). This matches torchvision's kernel, except that a NaN in a bin makes its output NaN
    (with no gradient) where the kernel skips NaNs.

    Args:
        input (Tensor[B, C, H, W]): feature map, any floating dtype, any layout.
        rois (Tensor[R, 5] or list of B Tensor[Ri, 4]): ``(batch index, x1, y1, x2, y2)`` in
            image pixels, same dtype and device as ``input``; or one ``xyxy`` tensor per image.
            Boxes must satisfy ``x2 >= x1`` and ``y2 >= y1``. RoIs get no gradient.
        output_size: ``PH`` = ``PW``, or ``(PH, PW)``.
        spatial_scale: map cells per image pixel, e.g. ``1 / 16`` for a stride-16 map.

    Returns:
        Tensor[R, C, PH, PW]: pooled features, contiguous, in the dtype of ``input``.

    Raises:
        TypeError, ValueError: for invalid arguments, naming the argument.
    """
    x, r, size, scale = check_roi_inputs("roi_pool", input, rois, output_size, spatial_scale)
    return _ref.roi_pool(x, r, size, scale)


class RoIPool(nn.Module):
    """``roi_pool`` as a module; see that function for the arguments and semantics.

    Args:
        output_size: ``PH`` = ``PW``, or ``(PH, PW)``.
        spatial_scale: map cells per image pixel.
    """

    def __init__(self, output_size: int | tuple[int, int], *, spatial_scale: float) -> None:
        super().__init__()
        self.output_size = as_tuple2(output_size, "output_size", "RoIPool")
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Tensor | Sequence[Tensor]) -> Tensor:
        """Pool ``rois`` (Tensor[R, 5] or B Tensor[Ri, 4]) from ``input`` (Tensor[B, C, H, W]).

        Returns:
            Tensor[R, C, PH, PW].
        """
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        """The constructor arguments, shown by ``repr``."""
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
