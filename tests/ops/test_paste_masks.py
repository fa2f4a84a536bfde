import math

import pytest
import torch
import torch.nn.functional as F

from detforge.ops.paste_masks import paste_masks_in_image


def _oracle(masks: torch.Tensor, boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-pixel, float64, straight from the definition: bilinear with zero padding at each
    pixel centre, inside the box grown by one pixel."""
    n, mh, mw = masks.shape
    out = torch.zeros(n, h, w, dtype=torch.float64)
    m = masks.double()
    for d in range(n):
        x0, y0, x1, y1 = boxes[d].double().tolist()
        rx0, ry0 = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
        rx1, ry1 = min(math.ceil(x1) + 1, w), min(math.ceil(y1) + 1, h)
        for py in range(ry0, ry1):
            u = (py + 0.5 - y0) / (y1 - y0) * mh - 0.5
            for px in range(rx0, rx1):
                v = (px + 0.5 - x0) / (x1 - x0) * mw - 0.5
                acc = 0.0
                for k in (math.floor(u), math.floor(u) + 1):
                    for j in (math.floor(v), math.floor(v) + 1):
                        if 0 <= k < mh and 0 <= j < mw:
                            acc += (1 - abs(u - k)) * (1 - abs(v - j)) * m[d, k, j].item()
                out[d, py, px] = acc
    return out


def _boxes(n: int, h: int, w: int) -> torch.Tensor:
    xy = torch.rand(n, 2) * torch.tensor([w, h]) - 5
    wh = torch.rand(n, 2) * 30 + 0.5
    return torch.cat([xy, xy + wh], dim=1)


def test_matches_oracle_probabilities():
    masks = torch.rand(6, 7, 5)
    boxes = _boxes(6, 40, 50)
    boxes[0] = torch.tensor([-10.0, -3.0, 60.0, 45.0])  # larger than the image
    got = paste_masks_in_image(masks, boxes, (40, 50), threshold=None)
    want = _oracle(masks, boxes, 40, 50)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_matches_grid_sample_inside_box():
    masks = torch.rand(3, 28, 28, dtype=torch.float64)
    boxes = torch.tensor([[10.3, 5.7, 40.1, 33.2], [0.0, 0.0, 64.0, 48.0], [50, 40, 60.5, 47]])
    boxes = boxes.double()
    h, w = 48, 64
    got = paste_masks_in_image(masks, boxes, (h, w), threshold=None)
    for d in range(3):
        x0, y0, x1, y1 = boxes[d].tolist()
        gy = ((torch.arange(h, dtype=torch.float64) + 0.5 - y0) / (y1 - y0)) * 2 - 1
        gx = ((torch.arange(w, dtype=torch.float64) + 0.5 - x0) / (x1 - x0)) * 2 - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]
        ref = F.grid_sample(masks[d][None, None], grid, align_corners=False)[0, 0]
        inside = slice(math.ceil(y0), math.floor(y1)), slice(math.ceil(x0), math.floor(x1))
        torch.testing.assert_close(got[d][inside], ref[inside])


def test_threshold_and_full_box():
    masks = torch.ones(2, 28, 28)
    boxes = torch.tensor([[10.0, 20.0, 30.0, 25.0], [0.0, 0.0, 8.0, 8.0]])
    out = paste_masks_in_image(masks, boxes, (32, 40))
    assert out.dtype == torch.bool and out.shape == (2, 32, 40)
    # An all-ones mask fills its box exactly: centres inside the box get >= 0.5.
    expected = torch.zeros(32, 40, dtype=torch.bool)
    expected[20:25, 10:30] = True
    assert torch.equal(out[0], expected)
    assert out[1, :8, :8].all() and out[1].sum() == 64
    half = torch.zeros(1, 28, 28)
    half[:, :, :14] = 1
    out = paste_masks_in_image(half, boxes[:1], (32, 40), threshold=0.5)
    assert out[0, 20:25, 10:20].all() and not out[0, 20:25, 21:30].any()


def test_chunking_gives_same_result():
    masks = torch.rand(20, 14, 14)
    boxes = _boxes(20, 60, 80)
    a = paste_masks_in_image(masks, boxes, (60, 80))
    b = paste_masks_in_image(masks, boxes, (60, 80), max_chunk_bytes=1)
    assert torch.equal(a, b)


def test_empty_and_degenerate():
    out = paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), (10, 12))
    assert out.shape == (0, 10, 12) and out.dtype == torch.bool
    z = paste_masks_in_image(torch.ones(1, 28, 28), torch.tensor([[5.0, 5.0, 5.0, 5.0]]), (10, 10))
    assert not z.any()
    outside = paste_masks_in_image(
        torch.ones(1, 4, 4), torch.tensor([[50.0, 50, 60, 60]]), (10, 10)
    )
    assert not outside.any()
    four_d = paste_masks_in_image(torch.ones(1, 1, 4, 4), torch.tensor([[0.0, 0, 4, 4]]), (4, 4))
    assert four_d.all()


def test_non_contiguous_and_float64():
    masks = torch.rand(4, 10, 10, dtype=torch.float64).transpose(1, 2)
    boxes = _boxes(4, 30, 30).double()[:, [0, 1, 2, 3]].t().contiguous().t()
    got = paste_masks_in_image(masks, boxes, (30, 30), threshold=None)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, _oracle(masks.contiguous(), boxes, 30, 30))


def test_errors():
    with pytest.raises(ValueError, match=r"3 masks but 2 boxes"):
        paste_masks_in_image(torch.rand(3, 4, 4), torch.zeros(2, 4), (5, 5))
    with pytest.raises(ValueError, match=r"`masks` must have shape"):
        paste_masks_in_image(torch.rand(3, 4), torch.zeros(3, 4), (5, 5))
    with pytest.raises(TypeError, match=r"floating"):
        paste_masks_in_image(torch.ones(1, 4, 4, dtype=torch.uint8), torch.zeros(1, 4), (5, 5))
    with pytest.raises(ValueError, match=r"x2 >= x1"):
        paste_masks_in_image(torch.rand(1, 4, 4), torch.tensor([[3.0, 0, 1, 1]]), (5, 5))
    with pytest.raises(ValueError, match=r"non-finite"):
        paste_masks_in_image(torch.rand(1, 4, 4), torch.tensor([[0.0, 0, math.inf, 1]]), (5, 5))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    masks = torch.rand(30, 28, 28)
    boxes = _boxes(30, 100, 120)
    cpu = paste_masks_in_image(masks, boxes, (100, 120), threshold=None)
    gpu = paste_masks_in_image(masks.cuda(), boxes.cuda(), (100, 120), threshold=None)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
