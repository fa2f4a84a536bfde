import math

import pytest
import torch
import torch.nn.functional as F

from detforge.modeling.roi_heads.mask_head import (
    MaskRCNNConvUpsampleHead,
    mask_rcnn_inference,
    mask_rcnn_loss,
    mask_targets,
)
from detforge.modeling.zoo import build_model
from detforge.structures.instances import Instances
from detforge.structures.masks import BitMasks, PolygonMasks

IMAGE = (48, 64)


def _square(x1, y1, x2, y2):
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def test_head_layout_shapes_and_init():
    torch.manual_seed(0)
    head = MaskRCNNConvUpsampleHead(in_channels=8, num_classes=3, conv_dim=64)
    names = [n for n, _ in head.named_parameters()]
    assert names == [
        *[f"mask_fcn{k}.{p}" for k in range(1, 5) for p in ("weight", "bias")],
        "deconv.weight", "deconv.bias", "predictor.weight", "predictor.bias",
    ]  # fmt: skip
    assert head.deconv.kernel_size == (2, 2) and head.deconv.stride == (2, 2)
    out = head(torch.randn(5, 8, 14, 14))
    assert out.shape == (5, 3, 28, 28)
    assert head.predictor.weight.std().item() == pytest.approx(0.001, rel=0.1)
    for layer in (head.mask_fcn1, head.mask_fcn4, head.deconv, head.predictor):
        assert layer.bias.abs().sum() == 0
    # MSRA fill: std sqrt(2 / fan_out), fan_out = 64 * 3 * 3 for a 3x3 conv
    assert head.mask_fcn2.weight.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.05)

    agnostic = MaskRCNNConvUpsampleHead(
        in_channels=8, num_classes=3, num_conv=1, conv_dim=32, norm="GN", class_agnostic=True
    )
    assert agnostic(torch.randn(2, 8, 7, 7)).shape == (2, 1, 14, 14)
    assert agnostic.mask_fcn1.bias is None
    assert "mask_fcn1.norm.weight" in dict(agnostic.named_parameters())
    with pytest.raises(ValueError, match=r"`x` must have shape \[R, 8, S, S\]"):
        head(torch.randn(2, 4, 14, 14))


def _fg_proposals(masks, boxes, labels):
    return Instances(IMAGE, boxes=boxes, labels=torch.tensor(labels), masks=masks)


def test_loss_perfect_logits_beat_their_negation():
    box = torch.tensor([[10.0, 8, 30, 40]])
    # left half of the box is object: x in [10, 20)
    polys = PolygonMasks([_square(10, 8, 20, 40)])
    proposals = [_fg_proposals(polys, box, [2])]
    target = polys.crop_and_resize(box, 28)  # [1, 28, 28]
    assert target[0, :, :14].eq(1).all() and target[0, :, 14:].eq(0).all()
    perfect = torch.full((1, 3, 28, 28), 5.0, dtype=torch.float64)  # other channels: wrong
    perfect[0, 2] = torch.where(target[0] > 0, 10.0, -10.0)
    good = mask_rcnn_loss(perfect, proposals)
    bad = mask_rcnn_loss(-perfect, proposals)
    assert good.item() == pytest.approx(
        F.softplus(torch.tensor(-10.0, dtype=torch.float64)).item(), rel=1e-9
    )
    assert bad.item() == pytest.approx(
        F.softplus(torch.tensor(10.0, dtype=torch.float64)).item(), rel=1e-9
    )
    assert good < bad


def test_loss_targets_match_crop_and_resize_and_class_channel():
    torch.manual_seed(0)
    polys = PolygonMasks([_square(5, 5, 25, 30), [[30.0, 10, 50, 12, 40, 40]]])
    boxes = torch.tensor([[4.0, 6, 28, 28], [28.0, 8, 52, 44]])
    labels = [1, 0]
    logits = torch.randn(2, 2, 28, 28, requires_grad=True)
    loss = mask_rcnn_loss(logits, [_fg_proposals(polys, boxes, labels)])
    target = polys.crop_and_resize(boxes, 28)
    picked = torch.stack([logits[0, 1], logits[1, 0]])
    expected = F.binary_cross_entropy_with_logits(picked, target)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[1, 1].abs().sum() == 0
    torch.testing.assert_close(mask_targets(polys, boxes, 28, where="t"), target)


def test_loss_bitmasks_are_thresholded_at_one_half():
    bits = torch.zeros(2, *IMAGE, dtype=torch.bool)
    bits[0, 10:30, 10:21] = True  # an odd width, so the box edge falls inside pixel bins
    bits[1, 0:20, 30:60] = True
    boxes = torch.tensor([[10.0, 10, 30, 30], [25.0, 0, 61, 25]])
    soft = BitMasks(bits).crop_and_resize(boxes, 28)
    assert bool(((soft > 0) & (soft < 1)).any())  # a soft border exists, so thresholding matters
    target = mask_targets(BitMasks(bits), boxes, 28, where="t")
    torch.testing.assert_close(target, (soft >= 0.5).float())
    # a bool tensor is treated as bitmasks
    torch.testing.assert_close(mask_targets(bits, boxes, 28, where="t"), target)
    logits = torch.zeros(2, 1, 28, 28)
    loss = mask_rcnn_loss(logits, [_fg_proposals(BitMasks(bits), boxes, [0, 0])])
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)  # class-agnostic, logits 0


def test_loss_split_over_images_and_empty():
    polys = PolygonMasks([_square(0, 0, 10, 10)])
    box = torch.tensor([[0.0, 0, 10, 10]])
    empty = Instances(IMAGE, boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    proposals = [empty, _fg_proposals(polys, box, [0])]
    logits = torch.full((1, 1, 28, 28), 3.0)
    assert mask_rcnn_loss(logits, proposals).item() == pytest.approx(
        F.softplus(torch.tensor(-3.0)).item(), rel=1e-6
    )
    none = torch.zeros(0, 3, 28, 28, requires_grad=True)
    loss = mask_rcnn_loss(none, [empty])
    assert loss.item() == 0
    loss.backward()
    assert none.grad is not None


def test_loss_bad_inputs():
    box = torch.tensor([[0.0, 0, 10, 10]])
    with pytest.raises(ValueError, match=r"must have shape \[2, K, M, M\]"):
        mask_rcnn_loss(
            torch.zeros(1, 1, 28, 28),
            [_fg_proposals(PolygonMasks([_square(0, 0, 5, 5)] * 2), box.repeat(2, 1), [0, 0])],
        )
    no_masks = Instances(IMAGE, boxes=box, labels=torch.tensor([0]))
    with pytest.raises(ValueError, match=r"proposals\[0\] need `labels` and `masks`"):
        mask_rcnn_loss(torch.zeros(1, 1, 28, 28), [no_masks])
    wrong = Instances(IMAGE, boxes=box, labels=torch.tensor([0]), masks=[[1.0]])  # type: ignore
    with pytest.raises(TypeError, match="must be PolygonMasks, BitMasks"):
        mask_rcnn_loss(torch.zeros(1, 1, 28, 28), [wrong])


def test_out_of_range_labels_are_rejected_at_the_detector_edge():
    # mask_rcnn_loss trusts its labels (reading them would synchronise every training step);
    # the detector's forward rejects the same label 2 of a 2-class model first.
    model = build_model("mask_rcnn_r18_fpn_tiny", num_classes=2).train()
    polys = PolygonMasks([_square(0, 0, 5, 5)])
    target = _fg_proposals(polys, torch.tensor([[0.0, 0, 10, 10]]), [2])
    with pytest.raises(ValueError, match=r"labels\[0\]` is 2, outside \[0, 2\)"):
        model([torch.zeros(3, *IMAGE)], [target])


def test_inference_picks_predicted_class_and_splits():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 28, 28)
    d0 = Instances(IMAGE, boxes=torch.rand(2, 4) * 10 + torch.tensor([0, 0, 10, 10]),
                   labels=torch.tensor([3, 1]), scores=torch.tensor([0.9, 0.8]))  # fmt: skip
    d1 = Instances((20, 20), boxes=torch.tensor([[1.0, 1, 5, 5]]), labels=torch.tensor([0]),
                   scores=torch.tensor([0.5]))  # fmt: skip
    out = mask_rcnn_inference(logits, [d0, d1])
    assert out[0].masks.shape == (2, 1, 28, 28) and out[1].masks.shape == (1, 1, 28, 28)
    torch.testing.assert_close(out[0].masks[:, 0], logits[[0, 1], [3, 1]].sigmoid())
    torch.testing.assert_close(out[1].masks[0, 0], logits[2, 0].sigmoid())
    assert out[0].scores is d0.scores and d0.masks is None  # inputs are not modified
    agnostic = mask_rcnn_inference(logits[:, :1], [d0, d1])
    torch.testing.assert_close(agnostic[1].masks, logits[2:, :1].sigmoid())
    empty = Instances(IMAGE, boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    (e,) = mask_rcnn_inference(torch.zeros(0, 4, 28, 28), [empty])
    assert e.masks.shape == (0, 1, 28, 28)


def test_bitmask_value_of_exactly_one_half_is_foreground():
    bits = torch.zeros(1, 10, 20, dtype=torch.bool)
    bits[0, :, :10] = True  # x in [0, 10)
    # Bin k of this box is sampled at x = 6 + k; bin 4 sits on the mask edge x = 10: value 0.5.
    box = torch.tensor([[5.5, 0.0, 15.5, 10.0]])
    soft = BitMasks(bits).crop_and_resize(box, 10)
    assert bool((soft[0, :, 4] == 0.5).all())
    target = mask_targets(BitMasks(bits), box, 10, where="t")
    assert target[0, 0].tolist() == [1.0] * 5 + [0.0] * 5
