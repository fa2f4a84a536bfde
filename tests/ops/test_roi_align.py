"""roi_align: reference vs a loop-based float64 oracle; gradients, dtypes, layouts, errors."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from detforge.ops.roi_align import RoIAlign, roi_align

# ----------------------------------------------------------------------------------------------
# Oracle: torchvision's / detectron2's CPU kernel transcribed into plain Python, one sample at a
# time, in float64.


def _bilinear(img: list[list[float]], y: float, x: float) -> float:
    height, width = len(img), len(img[0])
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * img[y_low][x_low]
        + hy * lx * img[y_low][x_high]
        + ly * hx * img[y_high][x_low]
        + ly * lx * img[y_high][x_high]
    )


def oracle_roi_align(
    x: Tensor,
    rois: Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    maps = x.double().tolist()  # [B][C][H][W]
    ph_n, pw_n = output_size
    out = torch.zeros(rois.shape[0], x.shape[1], ph_n, pw_n, dtype=torch.float64)
    offset = 0.5 if aligned else 0.0
    for r, (b, *box) in enumerate(rois.double().tolist()):
        x1, y1, x2, y2 = (v * spatial_scale - offset for v in box)
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / ph_n, roi_w / pw_n
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / ph_n)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pw_n)
        count = max(grid_h * grid_w, 1)
        for c, img in enumerate(maps[int(b)]):
            for ph in range(ph_n):
                for pw in range(pw_n):
                    total = 0.0
                    for iy in range(grid_h):
                        y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                        for ix in range(grid_w):
                            xx = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                            total += _bilinear(img, y, xx)
                    out[r, c, ph, pw] = total / count
    return out


# ----------------------------------------------------------------------------------------------
# Inputs: a 2-image map of 9 x 11 cells and RoIs (in pixels of a 4x larger image) that cover the
# cases the kernel distinguishes.

MAP_SHAPE = (2, 3, 9, 11)


def _rois(scale: float) -> Tensor:
    """Hand-made RoIs, given in map cells and converted to image pixels for ``scale``."""
    cells = [
        [0, 1.3, 2.2, 7.6, 6.1],  # inside
        [1, 0.0, 0.0, 11.0, 9.0],  # the whole map
        [0, -2.5, -1.7, 4.2, 3.3],  # over the top-left corner
        [1, 8.2, 6.4, 13.9, 12.5],  # over the bottom-right corner
        [0, -6.0, 2.0, -1.8, 5.0],  # left of the map: samples at x < -1 count as zero
        [1, 12.5, 10.2, 15.0, 14.0],  # right of and below the map
        [0, 3.0, 4.0, 3.0, 4.0],  # degenerate: a point
        [1, 2.0, 1.0, 6.0, 1.0],  # degenerate: a horizontal line
        [0, 5.1, 5.2, 5.35, 5.3],  # tiny
        [1, 0.4, 8.6, 10.7, 9.4],  # a thin strip along the last row
        [0, -0.9, -0.9, 0.2, 9.9],  # along the first column, just inside y >= -1
    ]
    rois = torch.tensor(cells)
    rois[:, 1:] /= scale
    return rois


def _random_rois(n: int, scale: float, gen: torch.Generator) -> Tensor:
    _, _, height, width = MAP_SHAPE
    size = torch.rand(n, 2, generator=gen) * torch.tensor([width, height]) * 0.8
    lo = torch.rand(n, 2, generator=gen) * torch.tensor([width, height]) * 1.4 - 2.0
    b = torch.randint(0, MAP_SHAPE[0], (n, 1), generator=gen).float()
    return torch.cat([b, lo / scale, (lo + size) / scale], dim=1)


def _assert_close_to_oracle(got: Tensor, want: Tensor) -> None:
    assert got.shape == want.shape
    scale = want.abs().max().item() + 1.0
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.5, 0.25])
def test_matches_oracle(aligned: bool, sampling_ratio: int, spatial_scale: float) -> None:
    x = torch.randn(MAP_SHAPE)
    gen = torch.Generator().manual_seed(1)
    rois = torch.cat([_rois(spatial_scale), _random_rois(6, spatial_scale, gen)])
    for output_size in [(7, 7), (3, 5), (1, 1), (4, 2)]:
        got = roi_align(x, rois, output_size, spatial_scale, sampling_ratio, aligned)
        want = oracle_roi_align(x, rois, output_size, spatial_scale, sampling_ratio, aligned)
        _assert_close_to_oracle(got, want)


def test_matches_oracle_on_large_rois_and_float64() -> None:
    """Large RoIs (adaptive grids of up to 8 x 9 samples per bin) on a bigger map."""
    x = torch.randn(2, 2, 40, 52, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    wh = torch.rand(5, 2, generator=gen, dtype=torch.float64) * 200 + 8
    xy = torch.rand(5, 2, generator=gen, dtype=torch.float64) * 160 - 20
    b = torch.tensor([[0.0], [1.0], [1.0], [0.0], [1.0]], dtype=torch.float64)
    rois = torch.cat([b, xy, xy + wh], dim=1)
    for aligned in (True, False):
        got = roi_align(x, rois, (3, 4), 0.25, -1, aligned)
        want = oracle_roi_align(x, rois, (3, 4), 0.25, -1, aligned)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_linear_ramp_gives_bin_centres() -> None:
    """Bilinear sampling reproduces a linear function, and a bin's samples are symmetric about
    its centre, so RoIAlign of ``f(y, x) = a*x + b*y + c`` is ``f`` at the bin centres.

    With ``aligned=True`` the value of cell ``(i, j)`` sits at map point ``(i, j)``. The box
    ``(6, 5, 30, 27)`` at scale 0.5 is ``x in [2.5, 14.5], y in [2.0, 13.0]`` in the map; with
    4 x 6 bins, bins are ``2.75`` high and ``2`` wide, so the centres are
    ``x = 3.5 + 2 * pw`` and ``y = 3.375 + 2.75 * ph``. Every sample lies inside the 20 x 24 map.
    """
    a, b, c = 0.5, -2.0, 3.0
    rows = torch.arange(20, dtype=torch.float64)[:, None]
    cols = torch.arange(24, dtype=torch.float64)[None, :]
    x = (a * cols + b * rows + c).expand(1, 2, 20, 24)
    rois = torch.tensor([[0.0, 6.0, 5.0, 30.0, 27.0]], dtype=torch.float64)
    xc = 3.5 + 2.0 * torch.arange(6, dtype=torch.float64)
    yc = 3.375 + 2.75 * torch.arange(4, dtype=torch.float64)
    want = a * xc[None, :] + b * yc[:, None] + c  # [4, 6]
    assert want[0, 0].item() == -2.0 and want[3, 5].item() == -13.5
    for sampling_ratio in (-1, 1, 3):
        got = roi_align(x, rois, (4, 6), 0.5, sampling_ratio, aligned=True)
        torch.testing.assert_close(got[0, 0], want, rtol=0, atol=1e-12)
        torch.testing.assert_close(got[0, 1], want, rtol=0, atol=1e-12)


def test_degenerate_boxes() -> None:
    """A zero-size box has no samples when aligned (output 0) and is a 1x1 cell when not."""
    x = torch.randn(1, 2, 6, 6)
    rois = torch.tensor([[0.0, 2.5, 3.5, 2.5, 3.5]])
    assert roi_align(x, rois, 2, 1.0, -1, aligned=True).abs().max() == 0
    got = roi_align(x, rois, 2, 1.0, -1, aligned=False)
    _assert_close_to_oracle(got, oracle_roi_align(x, rois, (2, 2), 1.0, -1, False))
    assert got.abs().max() > 0


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_gradcheck(aligned: bool, sampling_ratio: int) -> None:
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [[0, 0.3, 1.2, 5.5, 4.7], [1, -2.0, -1.0, 3.0, 9.0], [1, 4.2, 0.1, 7.9, 2.6]],
        dtype=torch.float64,
    )
    assert torch.autograd.gradcheck(
        lambda t: roi_align(t, rois, (3, 2), 1.0, sampling_ratio, aligned), (x,)
    )


def test_rois_get_no_gradient() -> None:
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    rois = torch.tensor([[0.0, 0.5, 0.5, 3.5, 4.0]], requires_grad=True)
    roi_align(x, rois, 2, 1.0).sum().backward()
    assert rois.grad is None
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_empty_rois() -> None:
    x = torch.randn(2, 3, 5, 6, requires_grad=True)
    out = roi_align(x, torch.zeros(0, 5), (2, 3), 0.5, -1, True)
    assert out.shape == (0, 3, 2, 3)
    out.sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))
    assert roi_align(x, [torch.zeros(0, 4), torch.zeros(0, 4)], 2).shape == (0, 3, 2, 2)


def test_single_roi_and_output_layout() -> None:
    x = torch.randn(1, 3, 8, 8)
    out = roi_align(x, torch.tensor([[0.0, 1.0, 1.0, 6.0, 7.0]]), (2, 3))
    assert out.shape == (1, 3, 2, 3) and out.is_contiguous() and out.dtype == torch.float32


def test_weights_built_in_several_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the interpolation weights a few RoIs at a time changes nothing."""
    x = torch.randn(MAP_SHAPE)
    rois = _random_rois(230, 1.0, torch.Generator().manual_seed(3))
    want = roi_align(x, rois, (2, 3), 1.0, -1, True)
    monkeypatch.setattr(sys.modules["detforge.ops._reference.roi_align"], "_CHUNK", 50)
    torch.testing.assert_close(roi_align(x, rois, (2, 3), 1.0, -1, True), want, rtol=0, atol=0)


def test_non_contiguous_input_and_rois() -> None:
    x = torch.randn(MAP_SHAPE)
    rois = _rois(0.5)
    want = roi_align(x, rois, (3, 4), 0.5, -1, True)
    variants = [
        torch.randn(2, 11, 9, 3).permute(0, 3, 2, 1).copy_(x),  # transposed
        torch.randn(2, 6, 9, 22)[:, ::2, :, ::2].copy_(x),  # sliced
        x.contiguous(memory_format=torch.channels_last),
    ]
    rois_t = rois.t().contiguous().t()  # column-major
    assert not rois_t.is_contiguous()
    for xv in variants:
        xv.requires_grad_(True)
        got = roi_align(xv, rois_t, (3, 4), 0.5, -1, True)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        got.sum().backward()
        assert xv.grad is not None
        x_ref = x.clone().requires_grad_(True)
        roi_align(x_ref, rois, (3, 4), 0.5, -1, True).sum().backward()
        assert x_ref.grad is not None
        torch.testing.assert_close(xv.grad, x_ref.grad, rtol=1e-6, atol=1e-6)


def test_list_of_boxes() -> None:
    """One ``xyxy`` tensor per image is the same as ``[R, 5]`` RoIs with the image index first."""
    x = torch.randn(3, 2, 9, 11)
    boxes = [
        torch.tensor([[1.0, 0.0, 8.0, 6.0], [2.0, 2.0, 3.0, 9.0]]),
        torch.zeros(0, 4),
        torch.tensor([[4.0, 0.5, 6.0, 7.5]]),
    ]
    rois = torch.tensor(
        [[0.0, 1.0, 0.0, 8.0, 6.0], [0.0, 2.0, 2.0, 3.0, 9.0], [2.0, 4.0, 0.5, 6.0, 7.5]]
    )
    got = roi_align(x, boxes, (2, 3), 1.0, -1, True)
    torch.testing.assert_close(got, roi_align(x, rois, (2, 3), 1.0, -1, True), rtol=0, atol=0)
    got = roi_align(x, tuple(boxes), (2, 3), 0.5, 2, False)
    torch.testing.assert_close(got, roi_align(x, rois, (2, 3), 0.5, 2, False), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_float32(dtype: torch.dtype) -> None:
    x = torch.randn(MAP_SHAPE).to(dtype)
    rois = _rois(0.5).to(dtype)
    xh = x.clone().requires_grad_(True)
    got = roi_align(xh, rois, (3, 4), 0.5, -1, True)
    assert got.dtype == dtype
    x32 = x.float().requires_grad_(True)
    want = roi_align(x32, rois.float(), (3, 4), 0.5, -1, True)
    torch.testing.assert_close(got.float(), want, rtol=5e-3, atol=5e-3 * want.abs().max().item())
    g = torch.randn(want.shape)
    got.backward(g.to(dtype))
    want.backward(g.to(dtype).float())
    assert xh.grad is not None and x32.grad is not None and xh.grad.dtype == dtype
    tol = 5e-3 * x32.grad.abs().max().item()
    torch.testing.assert_close(xh.grad.float(), x32.grad, rtol=5e-3, atol=tol)


def test_module() -> None:
    x = torch.randn(MAP_SHAPE)
    rois = _rois(0.25)
    m = RoIAlign((3, 2), spatial_scale=0.25, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(m(x, rois), roi_align(x, rois, (3, 2), 0.25, 2, True))
    assert "spatial_scale=0.25" in repr(m) and "aligned=True" in repr(m)
    with pytest.raises(TypeError):
        RoIAlign(7, 0.25)  # type: ignore[misc]
    with pytest.raises(ValueError, match="RoIAlign: `output_size` must be positive"):
        RoIAlign(0, spatial_scale=1.0)


# ----------------------------------------------------------------------------------------------
# Input checks


def _good() -> tuple[Tensor, Tensor]:
    return torch.randn(2, 3, 8, 8), torch.tensor([[0.0, 1.0, 1.0, 4.0, 4.0], [1, 0, 0, 2, 3]])


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda x, r: (x.tolist(), r), TypeError, r"roi_align: `input` must be a torch.Tensor"),
        (lambda x, r: (x[0], r), ValueError, r"roi_align: `input` must have shape \[\*, \*, \*"),
        (lambda x, r: (x.long(), r), TypeError, r"roi_align: `input` must be a floating-point"),
        (lambda x, r: (x[:, :, :0], r), ValueError, r"`input` must have positive height and width"),
        (lambda x, r: (x, r[:, :4]), ValueError, r"roi_align: `rois` must have shape \[\*, 5\]"),
        (lambda x, r: (x, r.long()), TypeError, r"roi_align: `rois` must be a floating-point"),
        (lambda x, r: (x, r.double()), TypeError, r"roi_align: `rois` must have the dtype"),
        (lambda x, r: (x, r.to("meta")), ValueError, r"roi_align: all tensors must be on one"),
        (lambda x, r: (x, "rois"), TypeError, r"roi_align: `rois` must be a Tensor\[R, 5\]"),
        (lambda x, r: (x, [r[:, 1:]]), ValueError, r"one box tensor per image of `input`"),
        (lambda x, r: (x, [r[:, 1:], r]), ValueError, r"roi_align: `rois\[1\]` must have shape"),
        (lambda x, r: (x, [r[:, 1:], r[:, 1:].double()]), TypeError, r"`rois\[1\]` must have the"),
        (lambda x, r: (x, [r[:, 1:], r[:, 1:].flip(1)]), ValueError, r"`rois` must be xyxy boxes"),
    ],
)  # fmt: skip
def test_bad_input_and_rois(
    make: Callable[[Tensor, Tensor], tuple[object, object]], error: type[Exception], match: str
) -> None:
    x, r = make(*_good())
    with pytest.raises(error, match=match):
        roi_align(x, r, 2)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ([1.0, 1, 1, 4, 4], None),
        ([5.0, 1, 1, 4, 4], r"roi_align: `rois` row 1 has batch index 5 but `input` has 2 images"),
        ([-1.0, 1, 1, 4, 4], r"`rois` row 1 has batch index -1 but"),
        ([0.5, 1, 1, 4, 4], r"`rois` row 1 has batch index 0.5 but"),
        ([0.0, float("nan"), 1, 4, 4], r"roi_align: `rois` must be finite; row 1"),
        ([0.0, 1, 1, float("inf"), 4], r"roi_align: `rois` must be finite; row 1"),
        ([0.0, 4, 1, 1, 4], r"roi_align: `rois` must be xyxy boxes with x2 >= x1 and y2 >= y1"),
        ([0.0, 1, 4, 4, 3.9], r"`rois` must be xyxy boxes"),
    ],
)  # fmt: skip
def test_bad_roi_values(row: list[float], match: str | None) -> None:
    x, r = _good()
    r[1] = torch.tensor(row)
    if match is None:
        roi_align(x, r, 2)
        return
    with pytest.raises(ValueError, match=match):
        roi_align(x, r, 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"output_size": 0}, ValueError, r"roi_align: `output_size` must be positive"),
        ({"output_size": (2, -1)}, ValueError, r"roi_align: `output_size` must be positive"),
        ({"output_size": (2, 2, 2)}, ValueError, r"`output_size` must be an int or a pair"),
        ({"output_size": 2.5}, TypeError, r"roi_align: `output_size` must be an int or two ints"),
        ({"output_size": (2, 2.0)}, TypeError, r"`output_size` must be an int or two ints"),
        ({"spatial_scale": 0.0}, ValueError, r"roi_align: `spatial_scale` must be positive"),
        ({"spatial_scale": -0.5}, ValueError, r"`spatial_scale` must be positive and finite"),
        ({"spatial_scale": float("nan")}, ValueError, r"`spatial_scale` must be positive"),
        ({"spatial_scale": "1"}, TypeError, r"roi_align: `spatial_scale` must be a number"),
        ({"sampling_ratio": 1.5}, TypeError, r"roi_align: `sampling_ratio` must be an int"),
    ],
)
def test_bad_options(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    x, r = _good()
    args: dict[str, object] = {"output_size": 2, "spatial_scale": 1.0, "sampling_ratio": -1}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        roi_align(x, r, **args)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# CUDA against CPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("aligned", [True, False])
def test_cuda_matches_cpu(dtype: torch.dtype, aligned: bool) -> None:
    x = torch.randn(MAP_SHAPE).to(dtype)
    gen = torch.Generator().manual_seed(4)
    rois = torch.cat([_rois(0.5), _random_rois(20, 0.5, gen)]).to(dtype)
    g = torch.randn(rois.shape[0], 3, 7, 7).to(dtype)
    results = []
    for device in ("cpu", "cuda"):
        xd = x.to(device, copy=True).requires_grad_(True)
        out = roi_align(xd, rois.to(device), 7, 0.5, -1, aligned)
        out.backward(g.to(device))
        assert xd.grad is not None
        results.append((out.cpu().float(), xd.grad.cpu().float()))
    tol = 1e-5 if dtype != torch.float16 else 5e-3
    for a, b in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol * (a.abs().max().item() + 1))
