import pytest
import torch

from detforge.modeling.matcher import Matcher
from detforge.modeling.roi_heads.box_head import FastRCNNConvFCHead
from detforge.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detforge.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead
from detforge.modeling.roi_heads.roi_heads import GT_PROPOSAL_LOGIT, StandardROIHeads
from detforge.modeling.sampling import subsample_labels
from detforge.modeling.zoo import build_model
from detforge.ops.poolers import MultiLevelRoIPooler
from detforge.structures.boxes import box_iou
from detforge.structures.instances import Instances
from detforge.structures.masks import PolygonMasks

SIZES = [(64, 80), (60, 72)]
LEVELS = ("p2", "p3", "p4", "p5")
SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
K = 3
C = 8


def _heads(with_mask: bool = True, **kw) -> StandardROIHeads:
    box_head = FastRCNNConvFCHead(in_channels=C, num_conv=1, conv_dim=8, num_fc=2, fc_dim=32)
    mask_kw = {}
    if with_mask:
        mask_kw = dict(
            mask_in_features=LEVELS,
            mask_pooler=MultiLevelRoIPooler(14, SCALES),
            mask_head=MaskRCNNConvUpsampleHead(in_channels=C, num_classes=K, conv_dim=8),
        )
    args = dict(
        num_classes=K,
        box_in_features=LEVELS,
        box_pooler=MultiLevelRoIPooler(7, SCALES),
        box_head=box_head,
        box_predictor=FastRCNNOutputLayers(box_head.output_size, num_classes=K),
        proposal_matcher=Matcher([0.5], [0, 1]),
        batch_size_per_image=16,
        positive_fraction=0.25,
        **mask_kw,
    )
    args.update(kw)
    return StandardROIHeads(**args)


def _features() -> dict[str, torch.Tensor]:
    # padded batch 64 x 80
    return {
        name: torch.randn(2, C, 64 // s, (80 + s - 1) // s)
        for name, s in zip(LEVELS, (4, 8, 16, 32), strict=True)
    }


def _square(x1, y1, x2, y2):
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


GT0 = torch.tensor([[10.0, 10, 40, 30], [44, 20, 70, 60]])


def _targets() -> list[Instances]:
    t0 = Instances(
        SIZES[0],
        boxes=GT0,
        labels=torch.tensor([2, 0]),
        masks=PolygonMasks([_square(12, 12, 38, 28), _square(45, 22, 69, 58)]),
    )
    t1 = Instances(
        SIZES[1],
        boxes=torch.zeros(0, 4),
        labels=torch.zeros(0, dtype=torch.long),
        masks=PolygonMasks([]),
    )
    return [t0, t1]


def _proposals() -> list[Instances]:
    g = torch.Generator().manual_seed(1)
    # 10 proposals near the ground truth (IoU >= 0.5), 30 elsewhere
    near = GT0.repeat(5, 1) + torch.rand(10, 4, generator=g) * 2 - 1
    xy = torch.rand(30, 2, generator=g) * torch.tensor([60.0, 44])
    far = torch.cat([xy, xy + 4 + torch.rand(30, 2, generator=g) * 12], dim=1)
    p0 = torch.cat([near, far])
    xy = torch.rand(25, 2, generator=g) * 50
    p1 = torch.cat([xy, xy + 5 + torch.rand(25, 2, generator=g) * 15], dim=1)
    return [
        Instances(SIZES[0], boxes=p0, scores=torch.randn(40, generator=g)),
        Instances(SIZES[1], boxes=p1, scores=torch.randn(25, generator=g)),
    ]


def test_train_step_losses_and_gradients_reach_every_parameter():
    heads = _heads().train()
    sampled, losses = heads(SIZES, _features(), _proposals(), _targets())
    assert set(losses) == {"loss_cls", "loss_box", "loss_mask"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    for name, p in heads.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert [len(s) for s in sampled] == [16, 16]
    assert not sampled[0].boxes.requires_grad


def test_train_step_without_mask_head_and_without_any_ground_truth():
    heads = _heads(with_mask=False).train()
    empty = Instances(SIZES[0], boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    targets = [empty, _targets()[1]]
    sampled, losses = heads(SIZES, _features(), _proposals(), targets)
    assert set(losses) == {"loss_cls", "loss_box"}
    assert losses["loss_box"].item() == 0 and torch.isfinite(losses["loss_cls"])
    assert all(bool((s.labels == K).all()) for s in sampled)


def test_sampling_counts_fraction_and_appended_ground_truth():
    heads = _heads()
    sampled = heads.label_and_sample_proposals(_proposals(), _targets())
    s0, s1 = sampled
    # image 0: 12 foreground candidates (10 near + 2 appended GT): at most int(16 * 0.25) = 4
    assert len(s0) == 16
    assert bool((s0.labels[:4] < K).all())
    assert bool((s0.labels[4:] == K).all())
    fg = s0[:4]
    torch.testing.assert_close(fg.extras["matched_boxes"], GT0[fg.extras["matched_indices"]])
    assert fg.labels.tolist() == torch.tensor([2, 0])[fg.extras["matched_indices"]].tolist()
    assert box_iou(fg.boxes, GT0).max(1).values.min() >= 0.5
    assert isinstance(fg.masks, PolygonMasks) and len(fg.masks) == 4
    # image 1: no ground truth, 25 proposals: 16 background samples, no matched fields
    assert len(s1) == 16 and bool((s1.labels == K).all())
    assert bool((s1.extras["matched_indices"] == -1).all()) and s1.masks is None


def test_ground_truth_is_appended_and_sampled_like_subsample_labels():
    heads = _heads(batch_size_per_image=64, positive_fraction=0.5)
    far = _proposals()[0][10:]  # no proposal overlaps the ground truth
    sampled = heads.label_and_sample_proposals([far], _targets()[:1])[0]
    fg = sampled[sampled.labels < K]
    assert len(fg) == 2  # exactly the two appended ground-truth boxes
    order = fg.extras["matched_indices"].argsort()
    torch.testing.assert_close(fg.boxes[order], GT0)
    torch.testing.assert_close(fg.scores, torch.full((2,), GT_PROPOSAL_LOGIT))
    assert abs(GT_PROPOSAL_LOGIT - 23.02585) < 1e-4  # log(1e10)
    assert len(sampled) == 32

    # Oracle: same matching and sampling done by hand with the same random state.
    boxes = torch.cat([far.boxes, GT0])
    _, match_labels = Matcher([0.5], [0, 1])(box_iou(GT0, boxes))
    labels = torch.where(match_labels == 1, 0, K)
    torch.manual_seed(5)
    pos, neg = subsample_labels(labels, 64, 0.5, K)
    torch.manual_seed(5)
    again = heads.label_and_sample_proposals([far], _targets()[:1])[0]
    torch.testing.assert_close(again.boxes, boxes[torch.cat([pos, neg])])

    no_append = _heads(proposal_append_gt=False)
    sampled = no_append.label_and_sample_proposals([far], _targets()[:1])[0]
    assert len(sampled) == 16 and bool((sampled.labels == K).all())


def test_eval_returns_detections_with_masks():
    heads = _heads().eval()
    with torch.no_grad():
        dets, losses = heads(SIZES, _features(), _proposals())
    assert losses == {}
    assert len(dets) == 2
    for det, (h, w) in zip(dets, SIZES, strict=True):
        assert det.image_size == (h, w)
        assert 0 < len(det) <= 100  # untrained: every class scores about 1/4 > 0.05
        assert det.masks.shape == (len(det), 1, 28, 28) and det.masks.dtype == torch.float32
        assert bool(((det.masks > 0) & (det.masks < 1)).all())
        assert bool((det.scores > 0.05).all()) and bool((det.labels < K).all())
        assert bool((det.boxes[:, 0::2] <= w).all()) and bool((det.boxes[:, 1::2] <= h).all())
        assert bool((det.boxes >= 0).all())
    box_only = _heads(with_mask=False).eval()
    dets, _ = box_only(SIZES, _features(), _proposals())
    assert dets[0].masks is None


def test_bad_inputs_give_clear_errors():
    heads = _heads().train()
    feats, proposals, targets = _features(), _proposals(), _targets()
    with pytest.raises(ValueError, match="`targets` are required in training"):
        heads(SIZES, feats, proposals)
    missing = {k: v for k, v in feats.items() if k != "p5"}
    with pytest.raises(ValueError, match=r"\['p5'\] are missing"):
        heads(SIZES, missing, proposals, targets)
    with pytest.raises(ValueError, match=r"proposals\[1\] have image_size"):
        heads([SIZES[0], SIZES[0]], feats, proposals, targets)
    with pytest.raises(ValueError, match="1 proposal sets for 2 images"):
        heads(SIZES, feats, proposals[:1], targets)
    no_masks = _targets()
    no_masks[0].masks = None
    with pytest.raises(ValueError, match=r"targets\[0\] has no `masks`"):
        heads(SIZES, feats, proposals, no_masks)
    with pytest.raises(ValueError, match="all of `mask_in_features`"):
        _heads(with_mask=False, mask_in_features=LEVELS)
    with pytest.raises(ValueError, match="box pooler has 4 scales"):
        _heads(box_in_features=("p2", "p3"))
    with pytest.raises(ValueError, match="`box_predictor` has 3 classes"):
        _heads(num_classes=4)


def test_out_of_range_target_labels_are_rejected_at_the_detector_edge():
    # The RoI heads trust the labels (reading them would synchronise every training step);
    # the detector's forward rejects a label K of a K-class model before any stage runs.
    model = build_model("mask_rcnn_r18_fpn_tiny", num_classes=K).train()
    bad = _targets()
    bad[0].labels = torch.tensor([0, K])
    images = [torch.zeros(3, *size) for size in SIZES]
    with pytest.raises(ValueError, match=r"targets\[0\].labels\[1\]` is 3, outside \[0, 3\)"):
        model(images, bad)
