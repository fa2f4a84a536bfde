"""roi_pool: reference vs a loop-based oracle; gradients, dtypes, layouts, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from detforge.ops.roi_pool import RoIPool, roi_pool

# ----------------------------------------------------------------------------------------------
# Oracle: torchvision's CPU kernel transcribed into plain Python. The kernel computes the scaled
# corners and the bin bounds in the input's precision ``T`` (float32 for float32 inputs), so the
# oracle does too; the maximum itself is exact in any precision.


def _c_round(v: float) -> int:
    """C's ``round``: halves away from zero."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def oracle_roi_pool(
    x: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float
) -> tuple[Tensor, Tensor]:
    """Pooled values and argmax (flat index into ``x``, -1 for empty bins)."""
    t = np.float64 if x.dtype == torch.float64 else np.float32
    maps = x.double().tolist()  # [B][C][H][W]
    _, channels, height, width = x.shape
    ph_n, pw_n = output_size
    out = torch.zeros(rois.shape[0], channels, ph_n, pw_n, dtype=torch.float64)
    argmax = torch.full(out.shape, -1, dtype=torch.long)
    for r, (b, *box) in enumerate(rois.double().tolist()):
        sw, sh, ew, eh = (_c_round(float(t(v) * t(spatial_scale))) for v in box)
        roi_w, roi_h = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
        bin_h, bin_w = t(roi_h) / t(ph_n), t(roi_w) / t(pw_n)
        for ph in range(ph_n):
            hs = min(max(math.floor(t(ph) * bin_h) + sh, 0), height)
            he = min(max(math.ceil(t(ph + 1) * bin_h) + sh, 0), height)
            for pw in range(pw_n):
                ws = min(max(math.floor(t(pw) * bin_w) + sw, 0), width)
                we = min(max(math.ceil(t(pw + 1) * bin_w) + sw, 0), width)
                for c in range(channels):
                    best, where = (0.0, -1) if (he <= hs or we <= ws) else (-math.inf, -1)
                    for h in range(hs, he):
                        for w in range(ws, we):
                            if maps[int(b)][c][h][w] > best:
                                best = maps[int(b)][c][h][w]
                                where = ((int(b) * channels + c) * height + h) * width + w
                    out[r, c, ph, pw], argmax[r, c, ph, pw] = best, where
    return out, argmax


MAP_SHAPE = (2, 3, 9, 11)


def _distinct(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
    """Random values without ties, so that the maximum of every bin is unique."""
    n = math.prod(shape)
    return (torch.randperm(n).to(dtype) / n - 0.5).view(shape)


def _rois(scale: float) -> Tensor:
    """Hand-made RoIs in map cells, converted to image pixels for ``scale``."""
    cells = [
        [0, 1.3, 2.2, 7.6, 6.1],  # inside
        [1, 0.0, 0.0, 10.0, 8.0],  # the whole map
        [0, -2.5, -1.7, 4.2, 3.3],  # over the top-left corner: leading bins clipped away
        [1, 8.2, 6.4, 13.9, 12.5],  # over the bottom-right corner: trailing bins empty
        [0, -6.0, 2.0, -1.8, 5.0],  # left of the map: every bin empty
        [1, 12.5, 10.2, 15.0, 14.0],  # right of and below the map
        [0, 3.0, 4.0, 3.0, 4.0],  # a point: one cell
        [1, 2.5, 1.5, 6.5, 1.5],  # corners on halves: C rounding (away from zero)
        [0, -1.5, 0.5, 0.5, 2.5],  # a negative half
        [1, 0.4, 8.6, 10.7, 9.4],  # a thin strip along the last row
    ]
    rois = torch.tensor(cells)
    rois[:, 1:] /= scale
    return rois


def _random_rois(n: int, scale: float, gen: torch.Generator) -> Tensor:
    _, _, height, width = MAP_SHAPE
    size = torch.rand(n, 2, generator=gen) * torch.tensor([width, height]) * 0.9
    lo = torch.rand(n, 2, generator=gen) * torch.tensor([width, height]) * 1.4 - 2.0
    b = torch.randint(0, MAP_SHAPE[0], (n, 1), generator=gen).float()
    return torch.cat([b, lo / scale, (lo + size) / scale], dim=1)


@pytest.mark.parametrize("spatial_scale", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("output_size", [(7, 7), (3, 5), (1, 1), (12, 2)])
def test_matches_oracle(spatial_scale: float, output_size: tuple[int, int]) -> None:
    x = _distinct(MAP_SHAPE)
    gen = torch.Generator().manual_seed(1)
    rois = torch.cat([_rois(spatial_scale), _random_rois(8, spatial_scale, gen)])
    got = roi_pool(x, rois, output_size, spatial_scale)
    want, _ = oracle_roi_pool(x, rois, output_size, spatial_scale)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=0)


def test_gradient_goes_to_the_argmax() -> None:
    """With ties, the gradient goes to the first maximum in row-major order, as in the kernel."""
    x = torch.randint(0, 3, (2, 2, 7, 8)).double().requires_grad_(True)  # many ties
    rois = torch.cat([_rois(1.0), _random_rois(6, 1.0, torch.Generator().manual_seed(5))])
    rois = rois.double()
    out = roi_pool(x, rois, (3, 2), 1.0)
    want, argmax = oracle_roi_pool(x.detach(), rois, (3, 2), 1.0)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    g = torch.rand(out.shape, dtype=torch.float64)
    out.backward(g)
    hit = argmax >= 0
    expected = torch.zeros(x.numel(), dtype=torch.float64).index_add_(0, argmax[hit], g[hit])
    assert x.grad is not None
    torch.testing.assert_close(x.grad.flatten(), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("output_size", [(3, 2), (1, 4)])
def test_gradcheck(output_size: tuple[int, int]) -> None:
    x = _distinct((2, 2, 5, 6), torch.float64).requires_grad_(True)
    rois = torch.tensor(
        [[0, 0.3, 1.2, 5.5, 4.7], [1, -2.0, -1.0, 3.0, 9.0], [1, 4.2, 0.1, 7.9, 2.6]],
        dtype=torch.float64,
    )
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, output_size, 1.0), (x,))


def test_empty_rois() -> None:
    x = torch.randn(2, 3, 5, 6, requires_grad=True)
    out = roi_pool(x, torch.zeros(0, 5), (2, 3), 0.5)
    assert out.shape == (0, 3, 2, 3)
    out.sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))


def test_many_random_rois_and_gradient_positions() -> None:
    x = _distinct(MAP_SHAPE, torch.float64).requires_grad_(True)
    rois = _random_rois(150, 0.5, torch.Generator().manual_seed(3)).double()
    out = roi_pool(x, rois, (3, 4), 0.5)
    want, argmax = oracle_roi_pool(x.detach(), rois, (3, 4), 0.5)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    out.sum().backward()
    hit = argmax >= 0
    ones = torch.ones(int(hit.sum()), dtype=torch.float64)
    expected = torch.zeros(x.numel(), dtype=torch.float64).index_add_(0, argmax[hit], ones)
    assert x.grad is not None
    torch.testing.assert_close(x.grad.flatten(), expected, rtol=0, atol=0)


def test_non_contiguous_input_rois_and_list_form() -> None:
    x = _distinct(MAP_SHAPE)
    rois = _rois(0.5)
    want = roi_pool(x, rois, (3, 4), 0.5)
    variants = [
        torch.randn(2, 11, 9, 3).permute(0, 3, 2, 1).copy_(x),
        torch.randn(2, 6, 9, 22)[:, ::2, :, ::2].copy_(x),
        x.contiguous(memory_format=torch.channels_last),
    ]
    rois_t = rois.t().contiguous().t()
    assert not rois_t.is_contiguous()
    for xv in variants:
        xv.requires_grad_(True)
        got = roi_pool(xv, rois_t, (3, 4), 0.5)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        got.sum().backward()
        x_ref = x.clone().requires_grad_(True)
        roi_pool(x_ref, rois, (3, 4), 0.5).sum().backward()
        assert xv.grad is not None and x_ref.grad is not None
        torch.testing.assert_close(xv.grad, x_ref.grad, rtol=0, atol=0)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    order = torch.argsort(rois[:, 0], stable=True)
    torch.testing.assert_close(roi_pool(x, boxes, (3, 4), 0.5), want[order], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_float32(dtype: torch.dtype) -> None:
    x = torch.randn(MAP_SHAPE).to(dtype)
    rois = _rois(0.5).to(dtype)
    xh = x.clone().requires_grad_(True)
    got = roi_pool(xh, rois, (3, 4), 0.5)
    assert got.dtype == dtype
    x32 = x.float().requires_grad_(True)
    want = roi_pool(x32, rois.float(), (3, 4), 0.5)
    torch.testing.assert_close(got.float(), want, rtol=5e-3, atol=5e-3)
    got.sum().backward()
    want.sum().backward()
    assert xh.grad is not None and x32.grad is not None and xh.grad.dtype == dtype
    torch.testing.assert_close(xh.grad.float(), x32.grad, rtol=5e-3, atol=5e-3)


def test_module() -> None:
    x = _distinct(MAP_SHAPE)
    rois = _rois(0.25)
    m = RoIPool((3, 2), spatial_scale=0.25)
    torch.testing.assert_close(m(x, rois), roi_pool(x, rois, (3, 2), 0.25))
    assert "output_size=(3, 2)" in repr(m)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((torch.randn(2, 3, 8), None), ValueError, r"roi_pool: `input` must have shape"),
        ((None, torch.zeros(2, 4)), ValueError, r"roi_pool: `rois` must have shape \[\*, 5\]"),
        ((None, torch.zeros(2, 5).double()), TypeError, r"roi_pool: `rois` must have the dtype"),
        ((None, torch.tensor([[2.0, 0, 0, 1, 1]])), ValueError, r"`rois` row 0 has batch"),
        ((None, torch.tensor([[0.0, 0, 2, 1, 1]])), ValueError, r"roi_pool: `rois` must be xyxy"),
        ((None, torch.tensor([[0.0, 0, 0, 1, math.nan]])), ValueError, r"roi_pool: `rois` must be"),
    ],
)  # fmt: skip
def test_bad_arguments(
    args: tuple[Tensor | None, Tensor | None], error: type[Exception], match: str
) -> None:
    x = args[0] if args[0] is not None else torch.randn(2, 3, 8, 8)
    r = args[1] if args[1] is not None else torch.tensor([[0.0, 1, 1, 4, 4]])
    with pytest.raises(error, match=match):
        roi_pool(x, r, 2)


@pytest.mark.parametrize(
    ("output_size", "spatial_scale", "error", "match"),
    [
        (0, 1.0, ValueError, r"roi_pool: `output_size` must be positive"),
        ((2, 2.5), 1.0, TypeError, r"roi_pool: `output_size` must be an int or two ints"),
        (2, 0.0, ValueError, r"roi_pool: `spatial_scale` must be positive"),
        (2, None, TypeError, r"roi_pool: `spatial_scale` must be a number"),
    ],
)
def test_bad_options(
    output_size: object, spatial_scale: object, error: type[Exception], match: str
) -> None:
    x, r = torch.randn(2, 3, 8, 8), torch.tensor([[0.0, 1, 1, 4, 4]])
    with pytest.raises(error, match=match):
        roi_pool(x, r, output_size, spatial_scale)  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype: torch.dtype) -> None:
    x = _distinct(MAP_SHAPE, dtype)
    gen = torch.Generator().manual_seed(4)
    rois = torch.cat([_rois(0.5), _random_rois(20, 0.5, gen)]).to(dtype)
    g = torch.randn(rois.shape[0], 3, 4, 3).to(dtype)
    results = []
    for device in ("cpu", "cuda"):
        xd = x.to(device, copy=True).requires_grad_(True)
        out = roi_pool(xd, rois.to(device), (4, 3), 0.5)
        out.backward(g.to(device))
        assert xd.grad is not None
        results.append((out.cpu(), xd.grad.cpu()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    # Gradients summed in a different order where several bins share a maximum.
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-6, atol=1e-6)
