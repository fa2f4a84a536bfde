import math

import pytest
import torch

from detforge.modeling.roi_heads.box_head import FastRCNNConvFCHead
from detforge.modeling.roi_heads.fast_rcnn import (
    FastRCNNOutputLayers,
    fast_rcnn_inference,
    fast_rcnn_inference_single_image,
)
from detforge.modeling.zoo import build_model
from detforge.structures.instances import Instances

IMAGE = (100, 120)  # (height, width)
PROPOSALS = torch.tensor(
    [
        [10.0, 10, 50, 50],  # p0
        [12.0, 12, 52, 52],  # p1: IoU with p0 = 1444 / 1756 = 0.82
        [100.0, 60, 140, 90],  # p2: sticks out on the right (width 120)
        [0.0, 0, 20, 20],  # p3: background
    ]
)
PROBS = torch.tensor(
    [
        [0.7, 0.2, 0.1],
        [0.6, 0.3, 0.1],
        [0.04, 0.9, 0.06],
        [0.03, 0.04, 0.93],
    ]
)


def _predictor(**kw) -> FastRCNNOutputLayers:
    return FastRCNNOutputLayers(16, num_classes=2, **kw)


def test_inference_hand_built_case_class_specific():
    """Known logits and deltas: exact boxes, scores, labels and source proposals."""
    deltas = torch.zeros(4, 8)
    deltas[0, 2] = 5 * math.log(2)  # p0, class 0: width doubled about the centre
    deltas[2, 4] = 1.0  # p2, class 1: shifted right by 0.1 * width = 4 px
    pred = _predictor()
    dets, idx = pred.inference(PROBS.log(), deltas, [Instances(IMAGE, boxes=PROPOSALS)])
    (det,) = dets
    # class 0: p0 (0.7) suppresses p1 (0.6); class 1: p2 (0.9), p1 (0.3) kept, p0 (0.2) suppressed
    # by p1. p0/class 0 and p1/class 1 overlap but have different classes: both kept.
    # p0 class 0 decodes to [-10, 10, 70, 50] (clipped; IoU 1520 / 2880 with p1, which it still
    # suppresses) and p2 class 1 to [104, 60, 144, 90] (clipped).
    expected_boxes = torch.tensor([[104.0, 60, 120, 90], [0.0, 10, 70, 50], [12.0, 12, 52, 52]])
    torch.testing.assert_close(det.boxes, expected_boxes, rtol=0, atol=1e-4)
    torch.testing.assert_close(det.scores, torch.tensor([0.9, 0.7, 0.3]), rtol=0, atol=1e-6)
    assert det.labels.tolist() == [1, 0, 1]
    assert det.labels.dtype == torch.int64
    assert idx[0].tolist() == [2, 0, 1]
    assert det.image_size == IMAGE


def test_inference_score_threshold_is_strict_and_topk():
    probs = torch.tensor([[0.25, 0.5, 0.25], [0.125, 0.75, 0.125]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [50.0, 50, 60, 60]])
    det, idx = fast_rcnn_inference_single_image(
        boxes, probs, IMAGE, score_thresh=0.25, nms_thresh=0.5, topk_per_image=-1
    )
    # 0.25 is not > 0.25: only class 1 pairs survive
    assert det.labels.tolist() == [1, 1]
    assert det.scores.tolist() == [0.75, 0.5]
    assert idx.tolist() == [1, 0]
    det, idx = fast_rcnn_inference_single_image(
        boxes, probs, IMAGE, score_thresh=0.1, nms_thresh=0.5, topk_per_image=2
    )
    assert det.scores.tolist() == [0.75, 0.5]
    det, _ = fast_rcnn_inference_single_image(
        boxes, probs, IMAGE, score_thresh=0.1, nms_thresh=0.5, topk_per_image=-1
    )
    assert det.scores.tolist() == [0.75, 0.5, 0.25, 0.125]
    assert det.labels.tolist() == [1, 1, 0, 0]


def test_inference_class_agnostic_boxes():
    pred = _predictor(class_agnostic=True)
    assert pred.bbox_pred.out_features == 4
    deltas = torch.zeros(4, 4)
    deltas[2, 0] = 1.0
    (det,), (idx,) = pred.inference(PROBS.log(), deltas, [Instances(IMAGE, boxes=PROPOSALS)])
    # Same class decisions as the class-specific case; one box per proposal for both classes.
    assert det.labels.tolist() == [1, 0, 1]
    assert idx.tolist() == [2, 0, 1]
    expected = torch.tensor([[104.0, 60, 120, 90], [10.0, 10, 50, 50], [12.0, 12, 52, 52]])
    torch.testing.assert_close(det.boxes, expected, rtol=0, atol=1e-4)


def test_inference_drops_non_finite_rows_and_keeps_proposal_indices():
    probs = PROBS.clone()
    probs[0, 0] = float("nan")
    boxes = PROPOSALS.repeat(1, 2)
    det, idx = fast_rcnn_inference_single_image(
        boxes, probs, IMAGE, score_thresh=0.05, nms_thresh=0.5, topk_per_image=100
    )
    # p0 dropped: class 0 is now p1 (0.6), class 1 is p2 (0.9) and p1 (0.3)
    assert idx.tolist() == [2, 1, 1]
    assert det.labels.tolist() == [1, 0, 1]


def test_inference_multiple_images_split_by_proposals():
    pred = _predictor()
    proposals = [Instances(IMAGE, boxes=PROPOSALS[:2]), Instances((40, 40), boxes=PROPOSALS[2:])]
    dets, idx = pred.inference(PROBS.log(), torch.zeros(4, 8), proposals)
    assert [d.image_size for d in dets] == [IMAGE, (40, 40)]
    assert dets[0].labels.tolist() == [0, 1] and idx[0].tolist() == [0, 1]
    # image 1: p2 lies outside the 40x40 image: clipped to an empty box, still reported
    assert idx[1].tolist() == [0]
    torch.testing.assert_close(dets[1].boxes, torch.tensor([[40.0, 40, 40, 40]]))
    with pytest.raises(ValueError, match="proposals hold 2 boxes"):
        pred.inference(PROBS.log(), torch.zeros(4, 8), proposals[:1])
    with pytest.raises(ValueError, match="one of each per image"):
        fast_rcnn_inference(
            [PROPOSALS], [PROBS, PROBS], [IMAGE], score_thresh=0, nms_thresh=0.5, topk_per_image=1
        )


def _loss_case():
    proposals = torch.tensor([[0.0, 0, 10, 10], [5.0, 5, 25, 25], [0.0, 0, 20, 20]])
    gt_boxes = torch.tensor([[1.0, 0, 11, 10], [0.0, 0, 1, 1], [0.0, 0, 40, 20]])
    labels = torch.tensor([0, 2, 1])  # 2 = background
    return proposals, gt_boxes, labels


def test_losses_smooth_l1_hand_computed():
    pred = _predictor(loss_weights={"loss_box": 2.0})
    proposals, gt_boxes, labels = _loss_case()
    scores = torch.zeros(3, 3, requires_grad=True)
    deltas = torch.zeros(3, 8)
    deltas[0, 4:] = 100.0  # another class's deltas: never read
    deltas[1] = 50.0  # background row: never read
    deltas.requires_grad_(True)
    losses = pred.losses(scores, deltas, proposals, labels, gt_boxes)
    assert set(losses) == {"loss_cls", "loss_box"}
    assert losses["loss_cls"].item() == pytest.approx(math.log(3), rel=1e-6)
    # row 0: dx = 10 * 1 / 10 = 1; row 2: dx = 10 * 10 / 20 = 5, dw = 5 * log 2. Divided by R = 3.
    expected = (1 + 5 + 5 * math.log(2)) / 3 * 2.0
    assert losses["loss_box"].item() == pytest.approx(expected, rel=1e-6)
    losses["loss_box"].backward()
    grad_rows = deltas.grad.abs().sum(1)
    assert grad_rows[1] == 0  # background
    assert deltas.grad[0, 4:].abs().sum() == 0 and deltas.grad[2, :4].abs().sum() == 0


def test_losses_smooth_l1_beta():
    pred = _predictor(smooth_l1_beta=2.0)
    proposals, gt_boxes, labels = _loss_case()
    losses = pred.losses(torch.zeros(3, 3), torch.zeros(3, 8), proposals, labels, gt_boxes)
    # |x| < 2 -> 0.5 x^2 / 2; else |x| - 1
    dw = 5 * math.log(2)
    expected = (0.25 * 1 + (5 - 1) + (dw - 1)) / 3
    assert losses["loss_box"].item() == pytest.approx(expected, rel=1e-6)


def test_losses_giou_hand_computed():
    pred = _predictor(box_reg_loss_type="giou")
    proposals, gt_boxes, labels = _loss_case()
    losses = pred.losses(torch.zeros(3, 3), torch.zeros(3, 8), proposals, labels, gt_boxes)
    # zero deltas: predictions are the proposals. 1 - 90/110 and 1 - 400/800.
    expected = (20 / 110 + 0.5) / 3
    assert losses["loss_box"].item() == pytest.approx(expected, rel=1e-5)


def test_losses_class_agnostic_and_empty():
    pred = _predictor(class_agnostic=True)
    proposals, gt_boxes, labels = _loss_case()
    losses = pred.losses(torch.zeros(3, 3), torch.zeros(3, 4), proposals, labels, gt_boxes)
    assert losses["loss_box"].item() == pytest.approx((6 + 5 * math.log(2)) / 3, rel=1e-6)
    scores = torch.zeros(0, 3, requires_grad=True)
    deltas = torch.zeros(0, 4, requires_grad=True)
    empty = pred.losses(
        scores, deltas, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, 4)
    )
    assert empty["loss_cls"].item() == 0 and empty["loss_box"].item() == 0
    sum(empty.values()).backward()
    assert scores.grad is not None


def test_losses_bad_inputs():
    pred = _predictor()
    proposals, gt_boxes, labels = _loss_case()
    with pytest.raises(ValueError, match="`deltas` must have shape"):
        pred.losses(torch.zeros(3, 3), torch.zeros(3, 4), proposals, labels, gt_boxes)
    with pytest.raises(ValueError, match="`gt_boxes` has 2 rows"):
        pred.losses(torch.zeros(3, 3), torch.zeros(3, 8), proposals, labels, gt_boxes[:2])
    with pytest.raises(ValueError, match="box_reg_loss_type"):
        _predictor(box_reg_loss_type="l2")
    with pytest.raises(ValueError, match="loss_weights"):
        _predictor(loss_weights={"loss_box_reg": 1.0})


def test_predictor_layers_and_init():
    torch.manual_seed(0)
    pred = FastRCNNOutputLayers(1024, num_classes=80)
    assert pred.cls_score.out_features == 81 and pred.bbox_pred.out_features == 320
    assert pred.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert pred.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert pred.cls_score.bias.abs().sum() == 0 and pred.bbox_pred.bias.abs().sum() == 0
    assert pred.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    assert (pred.test_score_thresh, pred.test_nms_thresh, pred.test_topk_per_image) == (
        0.05,
        0.5,
        100,
    )
    scores, deltas = pred(torch.randn(5, 256, 2, 2))  # flattened
    assert scores.shape == (5, 81) and deltas.shape == (5, 320)


def test_box_head_layout_shapes_and_init():
    head = FastRCNNConvFCHead(
        in_channels=8, num_conv=2, conv_dim=32, num_fc=2, fc_dim=32, norm="GN"
    )
    names = [n for n, _ in head.named_parameters()]
    assert names == [
        "conv1.weight", "conv1.norm.weight", "conv1.norm.bias",
        "conv2.weight", "conv2.norm.weight", "conv2.norm.bias",
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
    ]  # fmt: skip
    assert head.fc1.in_features == 32 * 7 * 7 and head.output_size == 32
    out = head(torch.randn(3, 8, 7, 7))
    assert out.shape == (3, 32) and bool((out >= 0).all())  # ReLU after the last fc
    # Xavier-like (kaiming_uniform a=1): bound sqrt(3 / fan_in); MSRA convs: std sqrt(2 / fan_out)
    bound = math.sqrt(3 / head.fc1.in_features)
    assert head.fc1.weight.abs().max().item() <= bound and head.fc1.bias.abs().sum() == 0
    std = math.sqrt(2 / (32 * 9))
    assert head.conv2.weight.std().item() == pytest.approx(std, rel=0.1)

    plain = FastRCNNConvFCHead(in_channels=8, in_size=(7, 5), num_fc=1, fc_dim=10)
    assert [n for n, _ in plain.named_parameters()] == ["fc1.weight", "fc1.bias"]
    assert plain(torch.randn(2, 8, 7, 5)).shape == (2, 10)
    convs_only = FastRCNNConvFCHead(in_channels=8, num_conv=1, conv_dim=4, num_fc=0)
    assert convs_only(torch.randn(2, 8, 7, 7)).shape == (2, 4, 7, 7)
    assert convs_only.output_size == 4 * 49
    assert convs_only.conv1.bias is not None  # no norm: the conv keeps its bias
    with pytest.raises(ValueError, match=r"`x` must have shape \[R, 8, 7, 7\]"):
        head(torch.randn(3, 8, 14, 14))
    with pytest.raises(ValueError, match="at least one"):
        FastRCNNConvFCHead(in_channels=8, num_conv=0, num_fc=0)


def test_out_of_range_labels_are_rejected_at_the_detector_edge():
    # The losses trust their labels (reading them would synchronise every training step); the
    # detector's forward rejects the same bad label 3 of a 2-class model first.
    model = build_model("faster_rcnn_r18_fpn_tiny", num_classes=2).train()
    _, gt_boxes, labels = _loss_case()
    target = Instances((64, 64), boxes=gt_boxes, labels=labels + 1)
    with pytest.raises(ValueError, match=r"labels\[1\]` is 3, outside \[0, 2\)"):
        model([torch.zeros(3, 64, 64)], [target])
