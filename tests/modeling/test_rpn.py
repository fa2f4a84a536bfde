import math

import pytest
import torch

from detforge.modeling.anchors import AnchorGenerator
from detforge.modeling.box_coder import BoxCoder
from detforge.modeling.dense_heads.rpn import RPN, RPNHead, find_top_proposals
from detforge.modeling.matcher import Matcher
from detforge.structures.instances import Instances


def _rpn(**kw) -> RPN:
    anchors = AnchorGenerator([[16], [32]], [[0.5, 1.0, 2.0]], strides=[4, 8])
    return RPN(
        in_features=["p2", "p3"],
        head=RPNHead(8, 3),
        anchor_generator=anchors,
        anchor_matcher=Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
        box_coder=BoxCoder(),
        batch_size_per_image=64,
        pre_nms_topk=(100, 50),
        post_nms_topk=(40, 20),
        **kw,
    )


def _features(b: int = 2) -> dict[str, torch.Tensor]:
    return {"p2": torch.randn(b, 8, 16, 20), "p3": torch.randn(b, 8, 8, 10)}


def _targets() -> list[Instances]:
    t0 = Instances(
        (64, 80),
        boxes=torch.tensor([[10.0, 10, 40, 30], [50, 20, 70, 60]]),
        labels=torch.tensor([0, 1]),
    )
    t1 = Instances((60, 72), boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    return [t0, t1]


@pytest.mark.parametrize("loss_type", ["smooth_l1", "giou"])
def test_train_step_losses_and_gradients(loss_type):
    rpn = _rpn(box_reg_loss_type=loss_type).train()
    proposals, losses = rpn([(64, 80), (60, 72)], _features(), _targets())
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, p in rpn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert len(proposals) == 2 and all(len(p) <= 40 for p in proposals)
    assert proposals[0].boxes.requires_grad is False
    # Untrained objectness is ~0.5 everywhere and 64 anchors are sampled per image: ~log(2).
    assert losses["loss_rpn_cls"].item() == pytest.approx(math.log(2), rel=0.05)


def test_sampled_labels():
    rpn = _rpn()
    anchors = torch.cat(rpn.anchor_generator(list(_features().values())))
    labels, matched = rpn.label_and_sample_anchors(anchors, _targets())
    assert (labels[0] == 1).sum() >= 2  # at least one anchor per ground truth
    assert ((labels[0] >= 0).sum()) <= 64 and ((labels[0] == 1).sum()) <= 32
    assert (labels[1] == 1).sum() == 0 and (labels[1] == 0).sum() == 64
    assert torch.equal(matched[1], torch.zeros_like(anchors))


def test_eval_proposals_sorted_clipped():
    rpn = _rpn().eval()
    with torch.no_grad():
        proposals, losses = rpn([(64, 80), (30, 40)], _features())
    assert losses == {}
    for p, (h, w) in zip(proposals, [(64, 80), (30, 40)], strict=True):
        assert len(p) <= 20 and p.labels is None
        assert (p.boxes[:, 0::2] <= w).all() and (p.boxes[:, 1::2] <= h).all()
        assert (p.boxes >= 0).all()
        assert torch.equal(p.scores, p.scores.sort(descending=True).values)


def test_find_top_proposals_nms_within_each_level():
    box = torch.tensor([[10.0, 10, 30, 30]])
    # The same box on two levels survives twice (NMS is per level); a duplicate on level 0 not.
    proposals = [torch.cat([box, box + 0.5]).unsqueeze(0), box.unsqueeze(0)]
    logits = [torch.tensor([[2.0, 1.0]]), torch.tensor([[0.5]])]
    out = find_top_proposals(
        proposals,
        logits,
        [(50, 50)],
        nms_thresh=0.7,
        pre_nms_topk=10,
        post_nms_topk=10,
        min_box_size=0.0,
        training=False,
    )
    assert out[0].scores.tolist() == [2.0, 0.5]
    # Pre-NMS top-k per level, and min size after clipping.
    small = [torch.tensor([[[0.0, 0, 1, 1], [5, 5, 45, 45], [60, 60, 80, 80]]])]
    out = find_top_proposals(
        small,
        [torch.tensor([[3.0, 2.0, 1.0]])],
        [(50, 50)],
        nms_thresh=0.7,
        pre_nms_topk=2,
        post_nms_topk=10,
        min_box_size=1.0,
        training=False,
    )
    assert out[0].boxes.tolist() == [[5.0, 5, 45, 45]]


def test_diverged_training_raises():
    bad = [torch.tensor([[[0.0, 0, math.nan, 1]]])]
    with pytest.raises(FloatingPointError, match="diverged"):
        find_top_proposals(
            bad,
            [torch.tensor([[1.0]])],
            [(10, 10)],
            nms_thresh=0.7,
            pre_nms_topk=5,
            post_nms_topk=5,
            min_box_size=0,
            training=True,
        )
    out = find_top_proposals(
        bad,
        [torch.tensor([[1.0]])],
        [(10, 10)],
        nms_thresh=0.7,
        pre_nms_topk=5,
        post_nms_topk=5,
        min_box_size=0,
        training=False,
    )
    assert len(out[0]) == 0


def test_errors():
    with pytest.raises(ValueError, match="in_features"):
        RPN(
            in_features=["p2"],
            head=RPNHead(8, 3),
            anchor_generator=AnchorGenerator([[16], [32]], [[1.0]], strides=[4, 8]),
            anchor_matcher=Matcher([0.3, 0.7], [0, -1, 1]),
            box_coder=BoxCoder(),
        )
    with pytest.raises(ValueError, match="targets"):
        _rpn().train()([(64, 80), (60, 72)], _features())
