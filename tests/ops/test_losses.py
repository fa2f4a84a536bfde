import math

import pytest
import torch
import torch.nn.functional as F

from detforge.ops.losses import giou_loss, l1_loss, sigmoid_focal_loss, smooth_l1_loss
from detforge.structures.boxes import generalized_box_iou


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _focal_oracle(x: float, t: float, alpha: float, gamma: float) -> float:
    p = _sigmoid(x)
    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    a = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else 1.0
    return a * (1 - p_t) ** gamma * ce


def _random_boxes(n: int) -> torch.Tensor:
    xy = torch.rand(n, 2, dtype=torch.float64) * 50
    wh = torch.rand(n, 2, dtype=torch.float64) * 30 + 0.5
    return torch.cat([xy, xy + wh], dim=1)


# ---------------------------------------------------------------- focal


def test_focal_hand_computed():
    inputs = torch.tensor([0.0, 0.0, 2.0, -1.5])
    targets = torch.tensor([1.0, 0.0, 0.0, 1.0])
    loss = sigmoid_focal_loss(inputs, targets)
    # x = 0: p = 0.5, CE = log 2, (1 - p_t) ** 2 = 0.25, alpha_t = 0.25 (pos) or 0.75 (neg)
    assert loss[0].item() == pytest.approx(0.25 * 0.25 * math.log(2), rel=1e-6)
    assert loss[1].item() == pytest.approx(0.75 * 0.25 * math.log(2), rel=1e-6)
    for i in (2, 3):
        expected = _focal_oracle(inputs[i].item(), targets[i].item(), 0.25, 2.0)
        assert loss[i].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (-1.0, 1.5), (0.5, 0.0), (1.0, 3.0)])
def test_focal_against_scalar_oracle(alpha, gamma):
    inputs = torch.randn(20, dtype=torch.float64) * 3
    targets = (torch.rand(20) > 0.5).double()
    loss = sigmoid_focal_loss(inputs, targets, alpha=alpha, gamma=gamma)
    expected = [
        _focal_oracle(x, t, alpha, gamma)
        for x, t in zip(inputs.tolist(), targets.tolist(), strict=True)
    ]
    assert loss.tolist() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_focal_gamma_zero_without_alpha_is_bce():
    inputs = torch.randn(6, 5) * 4
    targets = (torch.rand(6, 5) > 0.7).float()
    loss = sigmoid_focal_loss(inputs, targets, alpha=-1.0, gamma=0.0)
    torch.testing.assert_close(
        loss, F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    )


def test_focal_reductions_and_easy_examples_down_weighted():
    inputs = torch.tensor([[4.0, -4.0], [0.1, -0.1]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    none = sigmoid_focal_loss(inputs, targets)
    assert sigmoid_focal_loss(inputs, targets, reduction="sum").item() == pytest.approx(
        none.sum().item()
    )
    assert sigmoid_focal_loss(inputs, targets, reduction="mean").item() == pytest.approx(
        none.mean().item()
    )
    bce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    ratio = none / bce
    assert ratio[0, 0] < 0.001 and ratio[1, 0] > 0.05  # confident correct predictions count little


def test_focal_gradient():
    inputs = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    targets = (torch.rand(4, 3) > 0.5).double()
    assert torch.autograd.gradcheck(
        lambda x: sigmoid_focal_loss(x, targets, reduction="sum"), (inputs,)
    )
    # the gradient pushes logits towards their targets
    sigmoid_focal_loss(inputs, targets, reduction="sum").backward()
    assert bool(((inputs.grad < 0) == (targets == 1)).all())


# ---------------------------------------------------------------- smooth L1 / L1


def test_smooth_l1_hand_computed():
    inp = torch.tensor([0.5, 2.0, -3.0, 1.0, 0.0])
    loss = smooth_l1_loss(inp, torch.zeros(5), beta=1.0)
    # |x| < 1: 0.5 x**2; else |x| - 0.5 (x = 1 is on the linear side: 0.5 either way)
    assert loss.tolist() == pytest.approx([0.125, 1.5, 2.5, 0.5, 0.0])
    loss = smooth_l1_loss(torch.tensor([0.05, 0.3]), torch.tensor([0.0, 0.1]), beta=0.1)
    assert loss.tolist() == pytest.approx([0.5 * 0.05**2 / 0.1, 0.2 - 0.05])


def test_smooth_l1_with_tiny_beta_is_exactly_l1():
    inp = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randn(10, 4, dtype=torch.float64)
    target[0, 0] = inp[0, 0].detach()  # zero difference: the gradient must not be NaN
    for beta in (0.0, 9e-6):
        loss = smooth_l1_loss(inp, target, beta=beta, reduction="sum")
        assert torch.equal(smooth_l1_loss(inp, target, beta=beta), (inp - target).abs())
        (grad,) = torch.autograd.grad(loss, inp)
        assert bool(torch.isfinite(grad).all())
    assert torch.equal(l1_loss(inp, target), (inp - target).abs())


def test_smooth_l1_matches_torch_and_gradient():
    inp = torch.randn(30, dtype=torch.float64, requires_grad=True)
    target = torch.randn(30, dtype=torch.float64)
    ours = smooth_l1_loss(inp, target, beta=0.5, reduction="mean")
    torch.testing.assert_close(ours, F.smooth_l1_loss(inp, target, beta=0.5))
    assert torch.autograd.gradcheck(
        lambda x: smooth_l1_loss(x, target, beta=0.5, reduction="sum"), (inp,)
    )


def test_l1_reductions():
    inp, target = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.0, 0.0, 1.0])
    assert l1_loss(inp, target, reduction="sum").item() == 5.0
    assert l1_loss(inp, target, reduction="mean").item() == pytest.approx(5 / 3)


def test_empty_mean_is_a_differentiable_zero():
    x = torch.zeros(0, 4, requires_grad=True)
    for loss in (
        sigmoid_focal_loss(x, torch.zeros(0, 4), reduction="mean"),
        smooth_l1_loss(x, torch.zeros(0, 4), beta=0.1, reduction="mean"),
        l1_loss(x, torch.zeros(0, 4), reduction="mean"),
        giou_loss(x, torch.zeros(0, 4), reduction="mean"),
    ):
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()


# ---------------------------------------------------------------- GIoU


def test_giou_hand_computed():
    b1 = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 4.0, 4.0]])
    b2 = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0], [1.0, 1.0, 2.0, 2.0]])
    loss = giou_loss(b1, b2)
    # 1: inter 1, union 7, hull 9; 2: disjoint, union 2, hull 3; 3: nested, IoU 1/16, hull = b1
    expected = [1 - (1 / 7 - 2 / 9), 1 + 1 / 3, 1 - 1 / 16]
    assert loss.tolist() == pytest.approx(expected, rel=1e-5)
    assert giou_loss(b1, b2, reduction="sum").item() == pytest.approx(sum(expected), rel=1e-5)
    torch.testing.assert_close(giou_loss(b2, b1), loss)  # symmetric


def test_giou_identical_boxes_is_zero():
    boxes = _random_boxes(10)
    torch.testing.assert_close(
        giou_loss(boxes, boxes), torch.zeros(10, dtype=torch.float64), atol=1e-8, rtol=0
    )


def test_giou_against_pairwise_generalized_box_iou():
    b1, b2 = _random_boxes(40), _random_boxes(40)
    expected = 1 - generalized_box_iou(b1, b2).diagonal()
    torch.testing.assert_close(giou_loss(b1, b2, eps=1e-12), expected, atol=1e-9, rtol=0)
    # any leading shape: [2, 20, 4]
    torch.testing.assert_close(
        giou_loss(b1.view(2, 20, 4), b2.view(2, 20, 4), eps=1e-12),
        expected.view(2, 20),
        atol=1e-9,
        rtol=0,
    )


def test_giou_gradient():
    b2 = _random_boxes(6)
    xy = torch.rand(6, 2, dtype=torch.float64) * 50
    b1 = torch.cat([xy, xy + 10 + torch.rand(6, 2, dtype=torch.float64) * 20], 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda b: giou_loss(b, b2, reduction="sum"), (b1,))
    far = torch.tensor([[100.0, 100.0, 110.0, 110.0]], requires_grad=True)
    giou_loss(far, torch.tensor([[0.0, 0.0, 10.0, 10.0]]), reduction="sum").backward()
    assert bool(torch.isfinite(far.grad).all()) and far.grad.abs().sum() > 0  # pulled by the hull


# ---------------------------------------------------------------- input checks


def test_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        sigmoid_focal_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(TypeError, match="floating"):
        sigmoid_focal_loss(torch.zeros(3), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="reduction"):
        smooth_l1_loss(torch.zeros(3), torch.zeros(3), beta=1.0, reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta"):
        smooth_l1_loss(torch.zeros(3), torch.zeros(3), beta=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        sigmoid_focal_loss(torch.zeros(3), torch.zeros(3), gamma=-1.0)
    with pytest.raises(ValueError, match=r"`boxes1` must be ordered.*box 1"):
        giou_loss(torch.tensor([[0.0, 0, 1, 1], [2, 0, 1, 1]]), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"`boxes2` must be ordered"):
        giou_loss(torch.ones(1, 4), torch.tensor([[0.0, math.nan, 1, 1]]))
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        giou_loss(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(TypeError, match="giou_loss"):
        giou_loss([[0, 0, 1, 1]], torch.zeros(1, 4))  # type: ignore[arg-type]
