import math

import pytest
import torch

from detforge.modeling.box_coder import DEFAULT_SCALE_CLAMP, BoxCoder


def _random_boxes(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    xy = torch.rand(n, 2, dtype=dtype) * 200
    wh = torch.rand(n, 2, dtype=dtype) * 100 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_encode_hand_computed():
    proposals = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # w 10, h 20, centre (5, 10)
    targets = torch.tensor([[2.0, 4.0, 22.0, 44.0]])  # w 20, h 40, centre (12, 24)
    deltas = BoxCoder().encode(proposals, targets)
    torch.testing.assert_close(deltas, torch.tensor([[0.7, 0.7, math.log(2), math.log(2)]]))
    weighted = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(proposals, targets)
    torch.testing.assert_close(
        weighted, torch.tensor([[7.0, 7.0, 5 * math.log(2), 5 * math.log(2)]])
    )


def test_decode_hand_computed():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    deltas = torch.tensor([[0.1, -0.2, 0.0, math.log(0.5)]])
    # centre (5 + 1, 10 - 4), size (10, 10)
    torch.testing.assert_close(
        BoxCoder().decode(deltas, boxes), torch.tensor([[1.0, 1.0, 11.0, 11.0]])
    )
    # the same boxes from weighted deltas
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    weighted = deltas * torch.tensor([10.0, 10.0, 5.0, 5.0])
    torch.testing.assert_close(
        coder.decode(weighted, boxes), torch.tensor([[1.0, 1.0, 11.0, 11.0]])
    )


@pytest.mark.parametrize(
    "weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (2.0, 3.0, 4.0, 5.0)]
)
def test_round_trip(weights):
    coder = BoxCoder(weights)
    proposals, targets = _random_boxes(50), _random_boxes(50)
    deltas = coder.encode(proposals, targets)
    assert deltas.dtype == torch.float64
    torch.testing.assert_close(coder.decode(deltas, proposals), targets)


def test_round_trip_float32_within_hundredth_of_a_pixel():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    proposals, targets = _random_boxes(200, torch.float32), _random_boxes(200, torch.float32)
    back = coder.decode(coder.encode(proposals, targets), proposals)
    assert back.dtype == torch.float32
    assert (back - targets).abs().max() < 1e-3


def test_scale_clamp():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    deltas = torch.tensor([[0.0, 0.0, 10.0, -10.0]])
    out = BoxCoder().decode(deltas, boxes)
    w = 10 * math.exp(DEFAULT_SCALE_CLAMP)  # 625: a 16 px box may grow to 1000 px at most
    h = 10 * math.exp(-10.0)  # small values are never clamped
    torch.testing.assert_close(out, torch.tensor([[5 - w / 2, 5 - h / 2, 5 + w / 2, 5 + h / 2]]))
    assert w == pytest.approx(625.0)
    # the clamp applies after dividing by the weights
    out_w = BoxCoder((1.0, 1.0, 5.0, 5.0)).decode(torch.tensor([[0.0, 0.0, 10.0, 0.0]]), boxes)
    assert (out_w[0, 2] - out_w[0, 0]).item() == pytest.approx(10 * math.exp(2.0), rel=1e-6)
    unclamped = BoxCoder(scale_clamp=math.inf).decode(deltas.double(), boxes.double())
    assert (unclamped[0, 2] - unclamped[0, 0]).item() == pytest.approx(10 * math.exp(10.0))


def test_class_specific_decode():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    boxes = _random_boxes(7)
    deltas = torch.randn(7, 3 * 4, dtype=torch.float64)
    out = coder.decode(deltas, boxes)
    assert out.shape == (7, 12)
    for k in range(3):
        single = coder.decode(deltas[:, 4 * k : 4 * k + 4], boxes)
        torch.testing.assert_close(out[:, 4 * k : 4 * k + 4], single)


def test_decode_matches_float64_formula():
    boxes = _random_boxes(30)
    deltas = torch.randn(30, 4, dtype=torch.float64) * 0.5
    out = BoxCoder((1.0, 2.0, 3.0, 4.0)).decode(deltas, boxes)
    for i in range(30):
        x1, y1, x2, y2 = boxes[i].tolist()
        dx, dy, dw, dh = (
            deltas[i] / torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
        ).tolist()
        w, h = x2 - x1, y2 - y1
        cx, cy = x1 + w / 2 + dx * w, y1 + h / 2 + dy * h
        pw, ph = w * math.exp(dw), h * math.exp(dh)
        expected = [cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2]
        assert out[i].tolist() == pytest.approx(expected, rel=1e-12, abs=1e-9)


def test_empty_inputs():
    coder = BoxCoder()
    assert coder.encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    assert coder.decode(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 8)


def test_half_inputs_decoded_in_float32():
    boxes = torch.tensor([[1000.0, 1000.0, 1100.0, 1050.0]])
    deltas = torch.tensor([[0.013, -0.02, 0.1, 0.05]])
    out = BoxCoder().decode(deltas.half(), boxes)
    assert out.dtype == torch.float32
    ref = BoxCoder().decode(deltas.half().float(), boxes)
    assert torch.equal(out, ref)


def test_gradient_flows_through_decode():
    deltas = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    boxes = _random_boxes(5)
    assert torch.autograd.gradcheck(
        lambda d: BoxCoder((10.0, 10.0, 5.0, 5.0)).decode(d, boxes), (deltas,)
    )


def test_zero_size_target_gives_minus_inf_like_detectron2():
    deltas = BoxCoder().encode(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.zeros(1, 4))
    assert deltas[0, 2].item() == -math.inf and deltas[0, 3].item() == -math.inf


def test_bad_inputs():
    coder = BoxCoder()
    with pytest.raises(ValueError, match=r"proposal 1 is \[0.0, 0.0, 0.0, 5.0\]"):
        coder.encode(torch.tensor([[0.0, 0, 1, 1], [0, 0, 0, 5]]), torch.ones(2, 4))
    with pytest.raises(ValueError, match="same length"):
        coder.encode(torch.ones(2, 4), torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"`targets` must have shape"):
        coder.encode(torch.ones(2, 4), torch.ones(2, 5))
    with pytest.raises(TypeError, match="floating"):
        coder.encode(torch.ones(2, 4, dtype=torch.int64), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"\[N, K \* 4\]"):
        coder.decode(torch.ones(2, 6), torch.ones(2, 4))
    with pytest.raises(ValueError, match="same length"):
        coder.decode(torch.ones(2, 4), torch.ones(3, 4))
    with pytest.raises(ValueError, match="weights"):
        BoxCoder((1.0, 1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="weights"):
        BoxCoder((1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="scale_clamp"):
        BoxCoder(scale_clamp=math.nan)


def test_proposal_sizes_are_checked_on_the_cpu_only():
    # Reading the proposals back on an accelerator would synchronise every training step: the
    # check runs on the CPU only (the meta device stands in for an accelerator).
    proposals = torch.tensor([[0.0, 0, 1, 1], [0, 0, 0, 5]])
    with pytest.raises(ValueError, match="proposal 1"):
        BoxCoder().encode(proposals, torch.ones(2, 4))
    assert BoxCoder().encode(proposals.to("meta"), torch.ones(2, 4, device="meta")).shape == (2, 4)
