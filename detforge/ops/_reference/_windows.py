"""Helpers shared by the RoI reference ops: compute dtypes and channels-last layouts.

RoIAlign and RoIPool both read, for every RoI, a rectangular window of one image of the feature
map. They work on a channels-last copy of the map or of one image (``[H, W, C]``), where one
window row is a single contiguous run of ``window_width * C`` numbers, so it can be read by a
matrix product or a row gather without any copy of the window itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["channels_last", "compute_dtype", "store_nchw"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an op computes in: float32 for half and bfloat16 inputs, else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def channels_last(input: Tensor, dtype: torch.dtype) -> Tensor:
    """``Tensor[B, C, H, W]`` -> contiguous ``Tensor[B, H, W, C]`` in ``dtype``.

    This is a view, with no copy, when ``input`` is already channels-last in ``dtype``.
    """
    nhwc = input.detach().permute(0, 2, 3, 1)
    if nhwc.is_contiguous() and nhwc.dtype == dtype:
        return nhwc
    return torch.empty(nhwc.shape, dtype=dtype, device=nhwc.device).copy_(nhwc)


def store_nchw(image: Tensor, dst: Tensor, tile: int = 256) -> None:
    """Copy ``image`` (Tensor[H, W, C]) into ``dst`` (Tensor[C, H, W], any dtype and layout).

    For a contiguous ``dst`` on CPU the transpose is copied in ``tile x tile`` blocks, several
    times faster for large maps than one strided copy, which walks the source with a stride of
    ``C``.
    """
    if dst.device.type != "cpu" or not dst.is_contiguous():
        dst.copy_(image.permute(2, 0, 1))
        return
    c, hw = dst.shape[0], dst.shape[1] * dst.shape[2]
    src, out = image.reshape(hw, c), dst.view(c, hw)
    for j in range(0, hw, tile):
        for k in range(0, c, tile):
            out[k : k + tile, j : j + tile].copy_(src[j : j + tile, k : k + tile].t())
