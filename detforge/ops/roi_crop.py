"""RoI crop pooling: a bilinear crop of each RoI at ``2 x`` the output size, then 2x2 max pooling.

This is the "crop" pooling mode of faster-rcnn.pytorch (after the spatial-transformer crop of
Chen & Gupta's "An Implementation of Faster RCNN with Study for Region Sampling"): in feature
coordinates ``x = x_img * spatial_scale``, the crop samples ``2 * PW`` points evenly spaced from
``x1`` to ``x2`` *inclusive* (``torch.linspace``), likewise ``2 * PH`` rows, each by bilinear
interpolation of the four nearest cells with zeros outside the map (``grid_sample`` with
``align_corners=True``); a 2x2 max pool then gives ``PH x PW``. Unlike RoIAlign it does not
average within bins and treats coordinates as cell centres (no half-pixel shift).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detforge.ops.roi_align import check_roi_inputs

__all__ = ["RoICrop", "roi_crop"]


def roi_crop(
    input: Tensor,
    rois: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Crop-and-max-pool each RoI (see the module docstring).

    Args:
        input (Tensor[B, C, H, W]): floating feature map.
        rois (Tensor[R, 5] or list of B Tensor[R_i, 4]): ``(batch index, x1, y1, x2, y2)`` in
            image pixels.
        output_size: ``PH`` or ``(PH, PW)``.
        spatial_scale: map cells per image pixel (``1 / stride``).

    Returns:
        Tensor[R, C, PH, PW] in the dtype of ``input``; differentiable w.r.t. ``input``.
    """
    x, r, size, scale = check_roi_inputs("roi_crop", input, rois, output_size, spatial_scale)
    return crop_pool(x, r, size, scale)


def crop_pool(x: Tensor, r: Tensor, size: tuple[int, int], scale: float) -> Tensor:
    """:func:`roi_crop` on arguments it has already checked and normalised (no checks: for
    callers such as the pooler that checked at their own edge)."""
    ph, pw = size
    n, c, h, w = x.shape
    out = x.new_zeros((r.shape[0], c, 2 * ph, 2 * pw))
    if r.shape[0] == 0:
        return F.max_pool2d(out, 2)
    dtype = x.dtype if x.dtype == torch.float64 else torch.float32
    boxes = r[:, 1:].to(dtype) * scale  # [R, 4] feature coordinates
    t_x = torch.linspace(0, 1, 2 * pw, dtype=dtype, device=x.device)
    t_y = torch.linspace(0, 1, 2 * ph, dtype=dtype, device=x.device)
    px = boxes[:, 0:1] + t_x * (boxes[:, 2:3] - boxes[:, 0:1])  # [R, 2PW] cell indices
    py = boxes[:, 1:2] + t_y * (boxes[:, 3:4] - boxes[:, 1:2])  # [R, 2PH]
    # grid_sample with align_corners=True: index 0 -> -1, index W-1 -> +1.
    gx = 2 * px / max(w - 1, 1) - 1
    gy = 2 * py / max(h - 1, 1) - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    batch = r[:, 0].long()
    for b in batch.unique().tolist():
        idx = (batch == b).nonzero().squeeze(1)
        g = grid[idx].reshape(1, -1, 2 * pw, 2)  # RoIs stacked along the grid's height
        crop = F.grid_sample(x[b : b + 1].to(dtype), g, align_corners=True)  # [1, C, k*2PH, 2PW]
        out[idx] = crop.view(c, idx.numel(), 2 * ph, 2 * pw).transpose(0, 1).to(x.dtype)
    return F.max_pool2d(out, 2)


class RoICrop(nn.Module):
    """Module form of :func:`roi_crop`."""

    def __init__(self, output_size: int | tuple[int, int], *, spatial_scale: float) -> None:
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        """Crop-and-max-pool ``rois`` from ``input``."""
        return roi_crop(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        """Constructor arguments."""
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
