"""Helpers shared by the RPN and RetinaNet: anchor-order layout, anchor matching, box loss."""

from __future__ import annotations

import math

import pytest
import torch

from detforge.modeling.box_coder import BoxCoder
from detforge.modeling.dense_heads.dense_anchors import (
    dense_box_regression_loss,
    match_anchors,
    permute_to_n_hwa_k,
)
from detforge.modeling.matcher import Matcher
from detforge.ops.losses import giou_loss, smooth_l1_loss


@pytest.mark.parametrize("channels_last", [False, True])
def test_permute_to_n_hwa_k_is_the_anchor_order(channels_last):
    b, a, k, h, w = 2, 3, 5, 4, 6
    x = torch.randn(b, a * k, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = permute_to_n_hwa_k(x, k)
    assert out.shape == (b, h * w * a, k) and out.is_contiguous()
    for n, y, xx, aa in [(0, 0, 0, 0), (1, 3, 5, 2), (0, 2, 1, 1)]:
        assert torch.equal(out[n, (y * w + xx) * a + aa], x[n, aa * k : (aa + 1) * k, y, xx])
    if channels_last:  # no copy: the channels-last map already is in anchor order
        assert out.data_ptr() == x.data_ptr()


def test_permute_to_n_hwa_k_matches_the_one_number_layout():
    # The RPN's objectness: one logit per anchor, [B, A, H, W] -> [B, H * W * A].
    x = torch.randn(2, 3, 4, 5)
    got = permute_to_n_hwa_k(x, 1).squeeze(-1)
    assert torch.equal(got, x.permute(0, 2, 3, 1).flatten(1)) and got.is_contiguous()


def _matcher() -> Matcher:
    return Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)


def test_match_anchors_by_hand():
    anchors = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 14], [40, 40, 50, 50]])
    gt = torch.tensor([[20.0, 20, 30, 30], [0, 0, 10, 12]], dtype=torch.float64)
    idx, labels, boxes = match_anchors(anchors, gt, _matcher())
    # anchor 0: IoU 100/120 with gt 1; 1: 1.0 with gt 0; 2: 120/140 with gt 1; 3: nothing.
    assert idx[:3].tolist() == [1, 0, 1]
    assert labels.tolist() == [1, 1, 1, 0] and labels.dtype == torch.int8
    assert boxes.dtype == anchors.dtype  # the anchors' dtype, whatever the ground truth's
    assert torch.equal(boxes[:3], gt.float()[[1, 0, 1]])


def test_match_anchors_without_ground_truth():
    anchors = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]])
    idx, labels, boxes = match_anchors(anchors, torch.zeros(0, 4), _matcher())
    assert idx.tolist() == [0, 0] and labels.tolist() == [0, 0]
    assert torch.equal(boxes, torch.zeros(2, 4))


def _loss_inputs():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(6, 2, generator=g) * 50
    anchors = torch.cat([xy, xy + 8 + torch.rand(6, 2, generator=g) * 20], dim=1)  # [6, 4]
    deltas = torch.randn(2, 6, 4, generator=g) * 0.2
    matched = anchors.expand(2, -1, -1) + torch.randn(2, 6, 4, generator=g)
    fg = torch.tensor([[True, False, True, False, False, False], [False] * 5 + [True]])
    return anchors, deltas, matched, fg


@pytest.mark.parametrize("loss_type", ["smooth_l1", "giou"])
def test_box_loss_equals_encoding_every_anchor_then_masking(loss_type):
    # detectron2's `_dense_box_regression_loss` encodes (or decodes) all anchors of every
    # image, then keeps the foreground; the helper selects first and must agree bit for bit.
    anchors, deltas, matched, fg = _loss_inputs()
    coder = BoxCoder()
    got = dense_box_regression_loss(
        anchors, deltas, matched, fg, box_coder=coder, loss_type=loss_type, smooth_l1_beta=0.1
    )
    if loss_type == "smooth_l1":
        gt_deltas = torch.stack([coder.encode(anchors, m) for m in matched])
        want = smooth_l1_loss(deltas[fg], gt_deltas[fg], beta=0.1, reduction="sum")
    else:
        pred = coder.decode(deltas.reshape(-1, 4), anchors.repeat(2, 1)).view(2, -1, 4)
        want = giou_loss(pred[fg], matched[fg], reduction="sum")
    assert torch.equal(got, want)


def test_box_loss_by_hand():
    anchors = torch.tensor([[8.0, 8, 24, 24]])
    matched = torch.tensor([[[8.0, 8, 24, 38]]])
    fg = torch.tensor([[True]])
    loss = dense_box_regression_loss(
        anchors,
        torch.zeros(1, 1, 4),
        matched,
        fg,
        box_coder=BoxCoder(),
        loss_type="smooth_l1",
        smooth_l1_beta=0.1,
    )
    # Zero deltas against (0, 7/16, 0, log(30/16)): two L1 terms past beta.
    assert loss.item() == pytest.approx((7 / 16 - 0.05) + (math.log(30 / 16) - 0.05), rel=1e-6)


@pytest.mark.parametrize("loss_type", ["smooth_l1", "giou"])
def test_box_loss_without_foreground_is_zero_with_a_gradient(loss_type):
    anchors, deltas, matched, _ = _loss_inputs()
    deltas.requires_grad_(True)
    loss = dense_box_regression_loss(
        anchors,
        deltas,
        matched,
        torch.zeros(2, 6, dtype=torch.bool),
        box_coder=BoxCoder(),
        loss_type=loss_type,
        smooth_l1_beta=0.0,
    )
    assert loss.item() == 0.0
    loss.backward()
    assert deltas.grad is not None and torch.count_nonzero(deltas.grad) == 0
