import math

import pytest
import torch

from detforge.ops.roi_crop import RoICrop, roi_crop


def _bilinear(fmap: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """Zero-padded bilinear value of fmap [C, H, W] at cell coordinates (y, x)."""
    c, h, w = fmap.shape
    out = torch.zeros(c, dtype=torch.float64)
    y0, x0 = math.floor(y), math.floor(x)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            wgt = (1 - abs(y - yy)) * (1 - abs(x - xx))
            if 0 <= yy < h and 0 <= xx < w and wgt > 0:
                out += wgt * fmap[:, yy, xx].double()
    return out


def _oracle(feats, rois, ph, pw, scale):
    out = torch.zeros(len(rois), feats.shape[1], ph, pw, dtype=torch.float64)
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        xs = [x1 * scale + (x2 - x1) * scale * i / (2 * pw - 1) for i in range(2 * pw)]
        ys = [y1 * scale + (y2 - y1) * scale * i / (2 * ph - 1) for i in range(2 * ph)]
        crop = torch.stack(
            [torch.stack([_bilinear(feats[int(b)], y, x) for x in xs], -1) for y in ys], -2
        )  # [C, 2PH, 2PW]
        out[r] = crop.view(-1, ph, 2, pw, 2).amax(dim=(2, 4))
    return out


def test_matches_oracle():
    feats = torch.randn(2, 3, 12, 15, dtype=torch.float64)
    rois = torch.tensor(
        [[0, 4.0, 8, 40, 30], [1, -10, -4, 20, 18], [1, 50, 40, 70, 60], [0, 8, 8, 8, 8]],
        dtype=torch.float64,
    )
    got = roi_crop(feats, rois, (3, 4), spatial_scale=0.25)
    torch.testing.assert_close(got, _oracle(feats, rois, 3, 4, 0.25))
    f32 = roi_crop(feats.float(), rois.float(), (3, 4), spatial_scale=0.25)
    torch.testing.assert_close(f32.double(), got, rtol=1e-5, atol=1e-5)


def test_list_rois_module_gradcheck_and_empty():
    feats = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    boxes = [torch.tensor([[1.0, 1.5, 20, 17]], dtype=torch.float64)]
    assert RoICrop(2, spatial_scale=0.3)(feats, boxes).shape == (1, 2, 2, 2)
    assert torch.autograd.gradcheck(lambda f: roi_crop(f, boxes, 2, 0.3), (feats,))
    empty = roi_crop(feats, torch.zeros(0, 5, dtype=torch.float64), 4)
    assert empty.shape == (0, 2, 4, 4)


def test_errors():
    with pytest.raises(ValueError, match="roi_crop"):
        roi_crop(torch.randn(1, 2, 4, 4), torch.tensor([[3.0, 0, 0, 1, 1]]), 2)
