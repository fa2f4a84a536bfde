"""Vectorised pure-PyTorch RoIAlign, forward and backward.

RoIAlign is separable. A bilinear sample at ``(y, x)`` weighs map cell ``(h, w)`` by
``a(y, h) * b(x, w)``, a sample counts only when both ``y`` and ``x`` are in range, and the samples
of a bin form a Cartesian grid, so the average over a bin's samples is a row average times a
column average. For RoI ``r`` of image ``b`` and every channel ``c``::

    out[r, c] = Ay[r] @ F[b, c] @ Ax[r]^T        # Ay[r]: [PH, H], Ax[r]: [PW, W]

Row ``ph`` of ``Ay[r]`` holds the summed bilinear row weights of the ``grid_h`` sample rows of bin
row ``ph``, divided by ``grid_h``; ``Ax`` likewise. Both are zero outside the window of rows and
columns that the RoI's samples touch, so each RoI needs only its window ``F[b, y0:y0+h, x0:x0+w]``.
On a channels-last map that window is a strided ``[h, w * C]`` matrix which ``torch.mm`` reads in
place, with no gather: the forward is one ``mm`` (rows) and one small batched ``matmul`` (columns)
per RoI, and the backward two products that ``addmm_`` straight into the gradient window. The
interpolation weights are built for all RoIs at once; only the two products loop over RoIs, image
by image (so only one image is ever held channels-last), in top-to-bottom order for locality.

The sample positions and weights follow torchvision's and detectron2's ``roi_align`` kernels
exactly (``bilinear_interpolate``); see ``detforge.ops.roi_align`` for the semantics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from detforge.ops._reference._windows import compute_dtype, store_nchw

__all__ = ["roi_align"]

_CHUNK = 1024  # RoIs whose interpolation weights are built together


@dataclass(frozen=True)
class _Plan:
    """Per-RoI windows and interpolation weights, sorted by image and then by top edge."""

    index: list[int]  # the RoI's row in ``rois``
    b: list[int]  # image index
    y0: list[int]  # first row of the window
    x0: list[int]  # first column of the window
    ay: list[Tensor]  # [PH, h] row weights over the window's h rows
    ax: list[Tensor]  # [PW, w] column weights over the window's w columns

    def images(self) -> dict[int, range]:
        """The positions (in this plan) of each image's RoIs."""
        spans: dict[int, range] = {}
        start = 0
        for i in range(1, len(self.b) + 1):
            if i == len(self.b) or self.b[i] != self.b[start]:
                spans[self.b[start]] = range(start, i)
                start = i
        return spans


def _axis_weights(
    start: Tensor, extent: Tensor, grid: Tensor, pooled: int, size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Bilinear weights along one axis for ``n`` RoIs.

    Args:
        start (Tensor[n]): RoI start in map coordinates (after scaling and the aligned shift).
        extent (Tensor[n]): RoI length in map cells (clamped to >= 1 when not aligned).
        grid (Tensor[n]): samples per bin along this axis (int64, may be 0).
        pooled: output bins along this axis.
        size: map length along this axis (``H`` or ``W``).

    Returns:
        lo (Tensor[n]): first map index of each RoI's window (int64).
        span (Tensor[n]): window length (int64, >= 1).
        weights (Tensor[n, pooled, S]): weight of window cell ``s`` for bin ``p``, where ``S`` is
            the largest span; a bin's weights sum to the fraction of its samples in range.
    """
    dt, dev = start.dtype, start.device
    n = start.shape[0]
    g_max = max(int(grid.max()), 1)
    step = (extent / pooled)[:, None, None]  # bin size, [n, 1, 1]
    count = grid.clamp(min=1).to(dt)[:, None, None]
    p = torch.arange(pooled, device=dev, dtype=dt)[None, :, None]
    k = torch.arange(g_max, device=dev, dtype=dt)[None, None, :]
    # Same expression and evaluation order as the kernels: start + p * bin + (k + .5) * bin / grid.
    pos = start[:, None, None] + p * step + (k + 0.5) * step / count  # [n, P, G]
    valid = (k < grid[:, None, None]) & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0.0)
    low_f = pos.floor()
    top = low_f >= size - 1  # at or past the last cell: all weight on it
    frac = torch.where(top, torch.zeros_like(pos), pos - low_f)
    low = low_f.long().clamp(max=size - 1)
    high = torch.where(top, low, low + 1)
    lo = torch.where(valid, low, size).flatten(1).amin(dim=1)  # [n]
    hi = torch.where(valid, high, -1).flatten(1).amax(dim=1)
    none = hi < 0  # no sample in range: an all-zero window of one cell
    lo = torch.where(none, 0, lo)
    span = torch.where(none, 1, hi - lo + 1)
    s_max = int(span.max())
    shift = lo[:, None, None]
    index = torch.cat([low - shift, high - shift], dim=2).clamp(0, s_max - 1)  # [n, P, 2G]
    share = valid.to(dt) / count
    src = torch.cat([(1.0 - frac) * share, frac * share], dim=2)
    weights = torch.zeros(n, pooled, s_max, device=dev, dtype=dt).scatter_add_(2, index, src)
    return lo, span, weights


def _plan(
    rois: Tensor,
    map_hw: tuple[int, int],
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> _Plan:
    """Interpolation weights and windows of every RoI, built ``_CHUNK`` RoIs at a time."""
    (ph, pw), (height, width) = output_size, map_hw
    offset = 0.5 if aligned else 0.0
    by_top = torch.argsort(rois[:, 2], stable=True)
    order = by_top[torch.argsort(rois[by_top, 0], stable=True)]  # by image, then by top edge
    plan = _Plan(order.tolist(), [], [], [], [], [])
    for s in range(0, rois.shape[0], _CHUNK):
        r = rois[order[s : s + _CHUNK]]  # [n, 5]
        x1, y1, x2, y2 = (r[:, i] * spatial_scale - offset for i in range(1, 5))
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:  # legacy: force malformed RoIs to be 1x1
            roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
        if sampling_ratio > 0:
            grid_h = grid_w = torch.full_like(roi_h, sampling_ratio, dtype=torch.long)
        else:
            grid_h, grid_w = (roi_h / ph).ceil().long(), (roi_w / pw).ceil().long()
        y0, h, ay = _axis_weights(y1, roi_h, grid_h, ph, height)
        x0, w, ax = _axis_weights(x1, roi_w, grid_w, pw, width)
        plan.b.extend(r[:, 0].long().tolist())
        plan.y0.extend(y0.tolist())
        plan.x0.extend(x0.tolist())
        plan.ay.extend(a[:, :n] for a, n in zip(ay.unbind(0), h.tolist(), strict=True))
        plan.ax.extend(a[:, :n] for a, n in zip(ax.unbind(0), w.tolist(), strict=True))
    return plan


def _is_channels_last(x: Tensor) -> bool:
    """Whether each image of ``x`` (Tensor[B, C, H, W]) is a contiguous ``[H, W, C]`` block."""
    return x.shape[0] > 0 and x[0].permute(1, 2, 0).is_contiguous()


def _forward(input: Tensor, plan: _Plan, out: Tensor, dtype: torch.dtype) -> None:
    """Fill ``out`` (Tensor[R, C, PH, PW]) with RoIAlign of ``input`` (Tensor[B, C, H, W])."""
    c, ph = out.shape[1], out.shape[2]
    direct = _is_channels_last(input) and input.dtype == dtype
    c_in, height, width = input.shape[1:]
    buffer = None if direct else input.new_empty((height, width, c_in), dtype=dtype)
    for b, span in plan.images().items():
        image = input[b].permute(1, 2, 0)  # [H, W, C]
        feats = image if buffer is None else buffer.copy_(image)  # contiguous [H, W, C]
        for i in span:
            ay, ax, y0, x0 = plan.ay[i], plan.ax[i], plan.y0[i], plan.x0[i]
            h, w = ay.shape[1], ax.shape[1]
            window = feats[y0 : y0 + h, x0 : x0 + w].reshape(h, w * c)  # view, [h, w*C]
            t = torch.mm(ay, window).view(ph, w, c)  # rows contracted, [PH, w, C]
            out[plan.index[i]].copy_(torch.matmul(ax, t).permute(2, 0, 1))  # [C, PH, PW]


def _backward(grad_out: Tensor, plan: _Plan, grad_in: Tensor, dtype: torch.dtype) -> None:
    """Write the input gradient into ``grad_in`` (Tensor[B, C, H, W], any dtype and layout)."""
    c, ph = grad_out.shape[1], grad_out.shape[2]
    spans = plan.images()
    direct = _is_channels_last(grad_in) and grad_in.dtype == dtype
    height, width = grad_in.shape[2:]
    buffer = None if direct else grad_in.new_empty((height, width, c), dtype=dtype)
    for b in range(grad_in.shape[0]):
        if b not in spans:
            grad_in[b].zero_()
            continue
        acc = (grad_in[b].permute(1, 2, 0) if buffer is None else buffer).zero_()  # [H, W, C]
        for i in spans[b]:
            ay, ax, y0, x0 = plan.ay[i], plan.ax[i], plan.y0[i], plan.x0[i]
            h, w = ay.shape[1], ax.shape[1]
            g = grad_out[plan.index[i]].permute(1, 2, 0).to(dtype)  # [PH, PW, C]
            t = torch.matmul(ax.t(), g)  # [PH, w, C]
            window = acc[y0 : y0 + h, x0 : x0 + w].view(h, w * c)
            window.addmm_(ay.t(), t.view(ph, w * c))
        if buffer is not None:
            store_nchw(acc, grad_in[b])


class _RoIAlignFunction(torch.autograd.Function):
    """Autograd wrapper: the weights depend only on ``rois``, which get no gradient."""

    @staticmethod
    def forward(
        ctx: Any,
        input: Tensor,
        rois: Tensor,
        output_size: tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool,
    ) -> Tensor:
        dtype = compute_dtype(input.dtype)
        bsz, c, height, width = input.shape
        plan = _plan(
            rois.detach().to(dtype), (height, width), output_size, spatial_scale,
            sampling_ratio, aligned,
        )  # fmt: skip
        out = input.new_empty((rois.shape[0], c, *output_size))  # [R, C, PH, PW]
        _forward(input.detach(), plan, out, dtype)
        ctx.plan = plan
        ctx.input_meta = (input.shape, input.dtype, _is_channels_last(input))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        shape, in_dtype, channels_last = ctx.input_meta
        # The gradient takes the input's layout: channels-last or contiguous.
        layout = torch.channels_last if channels_last else torch.contiguous_format
        grad_in = torch.empty(shape, dtype=in_dtype, device=grad_out.device, memory_format=layout)
        _backward(grad_out, ctx.plan, grad_in, compute_dtype(in_dtype))
        return grad_in, None, None, None, None, None


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """RoIAlign on checked arguments; see ``detforge.ops.roi_align`` for the documentation.

    Args:
        input (Tensor[B, C, H, W]): floating feature map, any layout.
        rois (Tensor[R, 5]): ``(batch index, x1, y1, x2, y2)``, same dtype and device as input.
        output_size: ``(PH, PW)``.
        spatial_scale: map cells per image pixel.
        sampling_ratio: samples per bin along each axis; ``<= 0`` for adaptive.
        aligned: subtract half a cell after scaling.

    Returns:
        Tensor[R, C, PH, PW] in the dtype of ``input``.
    """
    apply = cast("Callable[..., Tensor]", _RoIAlignFunction.apply)  # torch leaves it untyped
    return apply(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
