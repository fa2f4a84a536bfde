"""Vectorised pure-PyTorch mask pasting.

Bilinear resampling with zero padding is separable: the weight of mask cell ``(k, l)`` for an
image pixel is ``tent(u - k) * tent(v - l)`` with ``tent(t) = max(0, 1 - |t|)``, where ``u`` and
``v`` are the pixel centre's row and column in mask-cell units. So the pasted region of one
detection is ``Wy @ mask @ Wx^T``: two small matrix products per detection, batched over a chunk
of detections whose regions are padded to the chunk's largest.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["paste_masks_in_image"]


def _tent_weights(start: Tensor, length: int, lo: Tensor, hi: Tensor, cells: int) -> Tensor:
    """Row (or column) interpolation weights, ``Tensor[N, length, cells]``.

    Pixel ``start[n] + i`` has its centre at ``start[n] + i + 0.5``; in mask-cell units of the box
    edge interval ``[lo, hi)`` that is ``u = (p - lo) / (hi - lo) * cells - 0.5`` (the
    ``align_corners=False`` convention of ``grid_sample``). Pixels past the region get no weight.
    """
    i = torch.arange(length, device=lo.device, dtype=lo.dtype)
    p = start[:, None].to(lo.dtype) + i[None, :] + 0.5  # [N, L]
    span = (hi - lo).clamp(min=torch.finfo(lo.dtype).eps)
    u = (p - lo[:, None]) / span[:, None] * cells - 0.5  # [N, L]
    k = torch.arange(cells, device=lo.device, dtype=lo.dtype)
    return (1 - (u[:, :, None] - k).abs()).clamp(min=0)  # [N, L, cells]


def paste_masks_in_image(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float | None,
    max_chunk_bytes: int,
) -> Tensor:
    """See :func:`detforge.ops.paste_masks.paste_masks_in_image` (inputs already validated)."""
    n, mh, mw = masks.shape
    img_h, img_w = image_size
    out_dtype = torch.bool if threshold is not None else masks.dtype
    out = torch.zeros((n, img_h, img_w), dtype=out_dtype, device=masks.device)
    if n == 0 or img_h == 0 or img_w == 0:
        return out
    work = torch.float64 if masks.dtype == torch.float64 else torch.float32
    b = boxes.to(work)
    # The region of a detection: its box grown by one pixel on each side, clipped to the image.
    x0 = (b[:, 0].floor() - 1).clamp(min=0, max=img_w).long()
    y0 = (b[:, 1].floor() - 1).clamp(min=0, max=img_h).long()
    x1 = (b[:, 2].ceil() + 1).clamp(min=0, max=img_w).long()
    y1 = (b[:, 3].ceil() + 1).clamp(min=0, max=img_h).long()
    rh, rw = (y1 - y0).clamp(min=0), (x1 - x0).clamp(min=0)
    order = torch.argsort(rh * rw, descending=True).tolist()
    sizes = torch.stack([rh, rw, y0, x0], dim=1).tolist()
    start = 0
    while start < n:
        # Detections go largest region first; a chunk grows while its buffer, padded to the
        # chunk's largest height and width, stays under the budget (one detection at least).
        count, h0, w0 = 0, 0, 0
        for det in order[start:]:
            h_new, w_new = max(h0, sizes[det][0]), max(w0, sizes[det][1])
            if count > 0 and (count + 1) * h_new * w_new * 8 > max_chunk_bytes:
                break
            count, h0, w0 = count + 1, h_new, w_new
        idx = order[start : start + count]
        start += count
        if h0 == 0 or w0 == 0:
            continue
        sel = torch.tensor(idx, device=masks.device)
        wy = _tent_weights(y0[sel], h0, b[sel, 1], b[sel, 3], mh)  # [n, h0, mh]
        wx = _tent_weights(x0[sel], w0, b[sel, 0], b[sel, 2], mw)  # [n, w0, mw]
        region = torch.bmm(torch.bmm(wy, masks[sel].to(work)), wx.transpose(1, 2))  # [n, h0, w0]
        vals = region >= threshold if threshold is not None else region.to(out_dtype)
        for j, det in enumerate(idx):
            h, w, ys, xs = sizes[det]
            out[det, ys : ys + h, xs : xs + w] = vals[j, :h, :w]
    return out


def chunk_budget_bytes(image_size: tuple[int, int]) -> int:
    """Default memory budget for the float work buffer: 64 MiB, or one full image if larger."""
    return max(64 * 2**20, 8 * math.prod(image_size))
