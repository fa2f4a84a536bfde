"""Vectorised pure-PyTorch RoIPool (max pooling over RoI bins), forward and backward.

The max over a rectangular bin is a max over its rows of a max over its columns. Each RoI reads
one window of a channels-last map ``[B, H, W, C]`` (a view, no copy) and reduces it in two steps:

1. columns: gather the columns of every column bin, padded to the widest bin by repeating a
   column of the bin (harmless for a max), ``[h, PW * Kw, C]``, and take the max over each bin;
2. rows: gather the rows of every row bin from that, padded likewise, and take the max again.

The bin bounds of all RoIs are computed at once; only these gathers and reductions loop over RoIs.
When the input needs a gradient, the forward also finds where each maximum came from (the first
maximum in row-major order, as torchvision's kernel does) as a flat index into the input, and the
backward is a single ``index_add_``. Bins follow torchvision's ``roi_pool`` kernel exactly; see
``detforge.ops.roi_pool``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from detforge.ops._reference._windows import channels_last, compute_dtype

__all__ = ["roi_pool"]


@dataclass(frozen=True)
class _Plan:
    """Windows and padded bin indices of every RoI."""

    b: Tensor  # [R] image index
    y0: Tensor  # [R] first row of the window
    x0: Tensor  # [R] first column of the window
    rows: Tensor  # [R, PH, Kh] window-local rows of each row bin, padded by repetition
    cols: Tensor  # [R, PW, Kw] window-local columns of each column bin
    h: list[int]  # window height per RoI
    w: list[int]  # window width per RoI
    kh: list[int]  # rows of the tallest bin per RoI (the used part of ``rows``)
    kw: list[int]  # columns of the widest bin per RoI
    empty: Tensor  # [R, PH, PW] bins that are empty after clipping to the map


def _round_half_away(x: Tensor) -> Tensor:
    """C's ``round``: halves go away from zero (``torch.round`` rounds them to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _axis(
    start: Tensor, length: Tensor, pooled: int, size: int, dt: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bins along one axis for ``n`` RoIs, as the kernel computes them.

    Args:
        start (Tensor[n]): first map cell of the RoI (rounded, int64); ``length``: cells (>= 1).
        pooled: bins along this axis; ``size``: map length along it; ``dt``: compute dtype.

    Returns:
        lo (Tensor[n]) first window cell, span (Tensor[n]) window length (>= 1), index
        (Tensor[n, pooled, K]) window-local cells of each bin padded to the longest bin ``K``
        by repeating its last cell, and count (Tensor[n, pooled]) cells per bin (0: empty).
    """
    step = (length.to(dt) / pooled)[:, None]  # bin size, [n, 1]
    p = torch.arange(pooled, device=start.device, dtype=dt)[None, :]
    first = (torch.floor(p * step).long() + start[:, None]).clamp(0, size)  # [n, P]
    end = (torch.ceil((p + 1) * step).long() + start[:, None]).clamp(0, size)
    count = end - first  # cells per bin, >= 0
    lo = first[:, 0].clamp(max=size - 1)
    span = (end[:, -1] - lo).clamp(min=1)
    j = torch.arange(max(int(count.max()), 1), device=start.device)
    index = first[..., None] + torch.minimum(j, (count - 1).clamp(min=0)[..., None])
    index = torch.minimum(index - lo[:, None, None], span[:, None, None] - 1).clamp(min=0)
    return lo, span, index, count


def _plan(
    rois: Tensor, map_hw: tuple[int, int], output_size: tuple[int, int], spatial_scale: float
) -> _Plan:
    """Windows and bins of every RoI (``rois``: Tensor[R, 5], R > 0)."""
    dt = compute_dtype(rois.dtype)
    # As the kernel: ``round(coordinate * spatial_scale)`` in the compute dtype, C rounding.
    ends = _round_half_away(rois[:, 1:].to(dt) * spatial_scale).long()  # [R, 4]
    size = (ends[:, 2:] - ends[:, :2] + 1).clamp(min=1)  # (width, height), [R, 2]
    y0, h, rows, count_h = _axis(ends[:, 1], size[:, 1], output_size[0], map_hw[0], dt)
    x0, w, cols, count_w = _axis(ends[:, 0], size[:, 0], output_size[1], map_hw[1], dt)
    # Past a RoI's tallest bin its padded indices only repeat: each RoI uses the first kh of them.
    kh = count_h.amax(dim=1).clamp(min=1)
    kw = count_w.amax(dim=1).clamp(min=1)
    empty = (count_h == 0)[:, :, None] | (count_w == 0)[:, None, :]
    return _Plan(
        rois[:, 0].long(), y0, x0, rows, cols, h.tolist(), w.tolist(), kh.tolist(),
        kw.tolist(), empty,
    )  # fmt: skip


def _first_match(block: Tensor, value: Tensor, dim: int) -> Tensor:
    """Index along ``dim`` of the first element of ``block`` equal to ``value`` (unsqueezed at
    ``dim``), clamped to the last index where there is none (a NaN maximum)."""
    k = block.shape[dim]
    shape = [1] * block.dim()
    shape[dim] = k
    small = torch.uint8 if k < 256 else torch.int32  # narrow ranks keep this pass cheap
    rank = torch.arange(k, 0, -1, device=block.device, dtype=small).view(shape)  # k, ..., 1
    first = k - ((block == value.unsqueeze(dim)) * rank).amax(dim=dim).long()
    return first.clamp_(max=k - 1)


def _pool_window(
    window: Tensor,
    rows: Tensor,
    cols: Tensor,
    out: Tensor,
    where: tuple[Tensor, Tensor, int] | None,
) -> None:
    """Max-pool one RoI.

    Args:
        window (Tensor[h, w, C]): the RoI's window of the channels-last map.
        rows (Tensor[PH, Kh]): window-local rows of each row bin; ``cols (Tensor[PW, Kw])``.
        out (Tensor[PH, PW, C]): receives the maxima (may be a strided view).
        where: ``(argmax, offset, W)`` to also locate each maximum: ``argmax`` (Tensor[PH, PW, C])
            receives ``offset + row * W + col``, its flat index into the NCHW input, where
            ``offset`` (Tensor[C]) is the flat index of the window's first cell per channel.
    """
    (ph, kh), (pw, kw), c = rows.shape, cols.shape, window.shape[2]
    picked = window.index_select(1, cols.flatten()).view(-1, pw, kw, c)  # [h, PW, Kw, C]
    block = picked.amax(dim=2).index_select(0, rows.flatten()).view(ph, kh, pw, c)
    top = block.amax(dim=1)  # [PH, PW, C]
    out.copy_(top)
    if where is None:
        return
    argmax, offset, map_width = where
    row = rows.gather(1, _first_match(block, top, 1).view(ph, -1)).view(ph, pw, c)
    in_row = picked.gather(0, row[:, :, None, :].expand(ph, pw, kw, c))  # [PH, PW, Kw, C]
    k_col = _first_match(in_row, top, 2).transpose(0, 1).reshape(pw, -1)
    col = cols.gather(1, k_col).view(pw, ph, c).transpose(0, 1)  # [PH, PW, C]
    torch.add(offset, col, out=argmax).add_(row * map_width)


def _forward(
    input: Tensor,
    rois: Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    with_argmax: bool,
) -> tuple[Tensor, Tensor | None]:
    """Pooled values (Tensor[R, C, PH, PW]) and, if asked, the flat argmax into ``input``.

    The argmax (same shape) points empty bins and NaN maxima at ``input.numel()``, one past the
    end, so that the backward can add every gradient without masking.
    """
    bsz, c, height, width = input.shape
    out = input.new_empty((rois.shape[0], c, *output_size))
    argmax = torch.empty(out.shape, dtype=torch.long, device=out.device) if with_argmax else None
    if out.numel() == 0:
        return out, argmax
    plan = _plan(rois, (height, width), output_size, spatial_scale)
    feats = channels_last(input, input.dtype)  # [B, H, W, C]
    channel = torch.arange(c, device=out.device) * (height * width)  # [C]
    spans = zip(plan.b.tolist(), plan.y0.tolist(), plan.x0.tolist(), plan.h, plan.w, strict=True)
    for i, (b, y0, x0, h, w) in enumerate(spans):
        where = None
        if argmax is not None:
            offset = channel + (b * c * height * width + y0 * width + x0)
            where = (argmax[i].permute(1, 2, 0), offset, width)
        rows, cols = plan.rows[i, :, : plan.kh[i]], plan.cols[i, :, : plan.kw[i]]
        window = feats[b, y0 : y0 + h, x0 : x0 + w]  # [h, w, C] view
        _pool_window(window, rows, cols, out[i].permute(1, 2, 0), where)
    empty = plan.empty[:, None]  # [R, 1, PH, PW]
    if argmax is not None:
        argmax.masked_fill_(empty | torch.isnan(out), input.numel())
    return out.masked_fill_(empty, 0), argmax


class _RoIPoolFunction(torch.autograd.Function):
    """Autograd wrapper: the gradient of each output goes to the input element it came from."""

    @staticmethod
    def forward(
        ctx: Any, input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float
    ) -> Tensor:
        with_argmax = bool(ctx.needs_input_grad[0])
        out, argmax = _forward(
            input.detach(), rois.detach(), output_size, spatial_scale, with_argmax
        )
        if argmax is not None:
            ctx.save_for_backward(argmax)
        ctx.input_meta = (input.shape, input.dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (argmax,) = ctx.saved_tensors
        shape, dtype = ctx.input_meta
        # One extra slot past the end collects the gradients of empty bins, then is dropped.
        grad = grad_out.new_zeros(shape.numel() + 1, dtype=compute_dtype(dtype))
        grad.index_add_(0, argmax.flatten(), grad_out.flatten().to(grad.dtype))
        return grad[:-1].view(shape).to(dtype), None, None, None


def roi_pool(
    input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float
) -> Tensor:
    """RoIPool on checked arguments; see ``detforge.ops.roi_pool`` for the documentation.

    Args:
        input (Tensor[B, C, H, W]): floating feature map, any layout.
        rois (Tensor[R, 5]): ``(batch index, x1, y1, x2, y2)``, same dtype and device as input.
        output_size: ``(PH, PW)``.
        spatial_scale: map cells per image pixel.

    Returns:
        Tensor[R, C, PH, PW] in the dtype of ``input``.
    """
    apply = cast("Callable[..., Tensor]", _RoIPoolFunction.apply)  # torch leaves it untyped
    return apply(input, rois, output_size, spatial_scale)
