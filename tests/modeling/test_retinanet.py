"""RetinaNet head and detector: init, shapes, hand-computed losses and detections, input checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detforge.modeling.anchors import AnchorGenerator
from detforge.modeling.box_coder import BoxCoder
from detforge.modeling.dense_heads.dense_anchors import permute_to_n_hwa_k
from detforge.modeling.dense_heads.retina_head import RetinaNetHead
from detforge.modeling.detectors.detector_io import detector_postprocess as rescale_detections
from detforge.modeling.detectors.retinanet import RetinaNet
from detforge.modeling.matcher import Matcher
from detforge.structures.instances import Instances

LEVELS = ("p3", "p4", "p5", "p6", "p7")


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class TinyPyramid(nn.Module):
    """A stride-8 conv, then four stride-2 convs: p3 .. p7 with 8 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=8, padding=1)
        self.downs = nn.ModuleList(nn.Conv2d(8, 8, 3, stride=2, padding=1) for _ in range(4))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {"p3": F.relu(self.stem(x))}
        for name, conv in zip(LEVELS[1:], self.downs, strict=True):
            out[name] = conv(F.relu(list(out.values())[-1]))
        return out


def _retina_anchors() -> AnchorGenerator:
    sizes = [[s * 2 ** (i / 3) for i in range(3)] for s in (32, 64, 128, 256, 512)]
    return AnchorGenerator(sizes, [0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128])


def _model(num_classes: int = 3, **kw) -> RetinaNet:
    return RetinaNet(
        backbone=TinyPyramid(),
        head=RetinaNetHead(in_channels=8, num_anchors=9, num_classes=num_classes),
        anchor_generator=_retina_anchors(),
        box_coder=BoxCoder((1.0, 1.0, 1.0, 1.0)),
        anchor_matcher=Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True),
        num_classes=num_classes,
        **{"pixel_mean": [100.0, 110.0, 120.0], "pixel_std": [50.0, 50.0, 50.0], **kw},
    )


def _images() -> list[Tensor]:
    return [
        torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8),
        torch.randint(0, 256, (3, 64, 50), dtype=torch.uint8),
    ]


def _targets() -> list[Instances]:
    return [
        Instances(
            (70, 90),
            boxes=torch.tensor([[10.0, 12.0, 50.0, 60.0], [40.0, 5.0, 88.0, 40.0]]),
            labels=torch.tensor([0, 2]),
        ),
        Instances((64, 50), boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long)),
    ]


# --------------------------------------------------------------------------- head


def test_head_init_and_names():
    head = RetinaNetHead(in_channels=32, num_anchors=9, num_classes=80)
    sd = head.state_dict()
    convs = [f"{s}_subnet.{i}" for s in ("cls", "bbox") for i in (0, 2, 4, 6)]
    expected = {f"{m}.{p}" for m in [*convs, "cls_score", "bbox_pred"] for p in ("weight", "bias")}
    assert set(sd) == expected
    assert isinstance(head.cls_subnet[1], nn.ReLU) and len(head.cls_subnet) == 8
    bias = -math.log((1 - 0.01) / 0.01)
    assert torch.allclose(sd["cls_score.bias"], torch.full((9 * 80,), bias))
    assert sd["cls_score.bias"][0].item() == pytest.approx(-4.59512, abs=1e-5)
    for name in expected - {"cls_score.bias"}:
        t = sd[name]
        if name.endswith("bias"):
            assert torch.count_nonzero(t) == 0, name
        else:
            assert t.mean().abs() < 1e-3 and t.std().item() == pytest.approx(0.01, rel=0.05), name
    assert sd["bbox_pred.weight"].shape == (36, 32, 3, 3)


def test_head_prior_prob_gives_initial_probability():
    head = RetinaNetHead(in_channels=4, num_anchors=1, num_classes=2, prior_prob=0.2)
    nn.init.zeros_(head.cls_score.weight)
    logits, _ = head([torch.randn(1, 4, 3, 3)])
    assert torch.allclose(logits[0].sigmoid(), torch.full((1, 2, 3, 3), 0.2))


def test_head_shapes_per_level():
    head = RetinaNetHead(in_channels=8, num_anchors=3, num_classes=5, num_convs=2, conv_dims=16)
    feats = [torch.randn(2, 8, 12, 10), torch.randn(2, 8, 6, 5), torch.randn(2, 8, 1, 1)]
    logits, deltas = head(feats)
    assert [list(x.shape) for x in logits] == [[2, 15, 12, 10], [2, 15, 6, 5], [2, 15, 1, 1]]
    assert [list(x.shape) for x in deltas] == [[2, 12, 12, 10], [2, 12, 6, 5], [2, 12, 1, 1]]
    assert head.cls_subnet[2].out_channels == 16 and head.cls_score.in_channels == 16


def test_head_with_group_norm_and_no_convs():
    head = RetinaNetHead(in_channels=32, num_anchors=1, num_classes=2, num_convs=2, norm="GN")
    assert [type(m).__name__ for m in head.cls_subnet] == [
        "Conv2d", "GroupNorm", "ReLU", "Conv2d", "GroupNorm", "ReLU",
    ]  # fmt: skip
    assert head([torch.randn(1, 32, 4, 4)])[0][0].shape == (1, 2, 4, 4)
    bare = RetinaNetHead(in_channels=4, num_anchors=2, num_classes=3, num_convs=0)
    assert len(bare.cls_subnet) == 0 and bare([torch.randn(1, 4, 2, 2)])[1][0].shape == (1, 8, 2, 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prior_prob": 0.0}, "prior_prob"),
        ({"prior_prob": 1.0}, "prior_prob"),
        ({"conv_dims": [8, 8]}, "conv_dims"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_anchors": 2.5}, "num_anchors"),
    ],
)
def test_head_rejects_bad_arguments(kwargs, match):
    args = {"in_channels": 8, "num_anchors": 9, "num_classes": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        RetinaNetHead(**args)


def test_head_rejects_bad_features():
    head = RetinaNetHead(in_channels=8, num_anchors=1, num_classes=2)
    with pytest.raises(ValueError, match=r"features\[1\].*\[B, 8, H, W\]"):
        head([torch.randn(1, 8, 4, 4), torch.randn(1, 7, 2, 2)])
    with pytest.raises(TypeError, match="non-empty list"):
        head([])


def test_permute_matches_anchor_order():
    b, a, k, h, w = 2, 3, 4, 5, 6
    x = torch.randn(b, a * k, h, w)
    out = permute_to_n_hwa_k(x, k)
    assert out.shape == (b, h * w * a, k)
    for n, y, xx, aa, kk in [(0, 0, 0, 0, 0), (1, 4, 5, 2, 3), (0, 2, 3, 1, 2), (1, 1, 0, 2, 0)]:
        assert out[n, (y * w + xx) * a + aa, kk] == x[n, aa * k + kk, y, xx]


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("loss_type", ["smooth_l1", "giou"])
def test_train_step_finite_losses_and_gradients_everywhere(loss_type):
    model = _model(box_reg_loss_type=loss_type).train()
    losses = model(_images(), _targets())
    assert set(losses) == {"loss_cls", "loss_box"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert losses["loss_box"] > 0
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert 90.1 < model.loss_normalizer < 100  # 0.9 * 100 + 0.1 * num_fg, with 1 <= num_fg < 100


def test_train_step_without_any_annotation():
    model = _model().train()
    no_boxes, no_labels = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    empty = [Instances((70, 90), no_boxes, no_labels), Instances((64, 50), no_boxes, no_labels)]
    losses = model(_images(), empty)
    assert losses["loss_box"].item() == 0.0 and torch.isfinite(losses["loss_cls"])
    assert model.loss_normalizer == pytest.approx(0.9 * 100 + 0.1 * 1)
    losses["loss_cls"].backward()


class _PoolPyramid(nn.Module):
    """Average pools at the given strides: a backbone without parameters."""

    def __init__(self, strides: dict[str, int]) -> None:
        super().__init__()
        self.strides = strides

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {name: F.avg_pool2d(x, s) for name, s in self.strides.items()}


class _FixedHead(nn.Module):
    """Returns preset per-level logits and deltas (their first B images)."""

    def __init__(self, logits: list[Tensor], deltas: list[Tensor]) -> None:
        super().__init__()
        self.logits, self.deltas = logits, deltas

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        b = features[0].shape[0]
        for f, lg in zip(features, self.logits, strict=True):
            assert f.shape[-2:] == lg.shape[-2:]
        return [x[:b] for x in self.logits], [x[:b] for x in self.deltas]


def _one_level_model(box_reg_loss_type: str = "smooth_l1") -> RetinaNet:
    # 64x64 input, stride 16: a 4x4 grid of 16 px square anchors centred at (16 x, 16 y).
    head = _FixedHead([torch.zeros(1, 3, 4, 4)], [torch.zeros(1, 4, 4, 4)])
    return RetinaNet(
        backbone=_PoolPyramid({"p4": 16}),
        head=head,
        anchor_generator=AnchorGenerator([[16.0]], [[1.0]], strides=[16]),
        box_coder=BoxCoder(),
        anchor_matcher=Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True),
        num_classes=3,
        in_features=["p4"],
        box_reg_loss_type=box_reg_loss_type,  # type: ignore[arg-type]
        pixel_mean=[0.0, 0.0, 0.0],
    )


def test_anchor_labels_by_hand():
    model = _one_level_model()
    anchors = model.anchor_generator.grid_anchors([(4, 4)])[0]
    # Ground truth [8, 8, 24, 38] (class 2): anchor 5 = [8, 8, 24, 24] has IoU 256/480 = 0.53
    # (foreground), anchor 9 = [8, 24, 24, 40] has IoU 224/512 = 0.44 (ignored), the others 0.
    gt = Instances((64, 64), boxes=torch.tensor([[8.0, 8, 24, 38]]), labels=torch.tensor([2]))
    labels, matched = model.outputs.label_anchors(anchors, [gt])
    expected = torch.full((16,), 3)
    expected[5], expected[9] = 2, -1
    assert torch.equal(labels[0], expected)
    assert torch.equal(matched[0][5], torch.tensor([8.0, 8, 24, 38]))


def test_zero_size_ground_truth_is_ignored():
    # A degenerate box overlaps nothing; matched as is, low-quality matching would make every
    # anchor (all at IoU 0 with it) foreground. It is dropped instead.
    model = _one_level_model()
    anchors = model.anchor_generator.grid_anchors([(4, 4)])[0]
    boxes = torch.tensor([[10.0, 10, 10, 30], [8, 8, 24, 38]])
    gt = Instances((64, 64), boxes=boxes, labels=torch.tensor([0, 2]))
    labels, matched = model.outputs.label_anchors(anchors, [gt])
    assert (labels[0] == 0).sum() == 0 and labels[0][5] == 2
    only_degenerate = gt[[0]]
    labels, _ = model.outputs.label_anchors(anchors, [only_degenerate])
    assert torch.equal(labels[0], torch.full((16,), 3))


@pytest.mark.parametrize("loss_type", ["smooth_l1", "giou"])
def test_losses_by_hand(loss_type):
    model = _one_level_model(loss_type).train()
    gt = Instances((64, 64), boxes=torch.tensor([[8.0, 8, 24, 38]]), labels=torch.tensor([2]))
    losses = model([torch.zeros(3, 64, 64)], [gt])
    normalizer = 0.9 * 100 + 0.1 * 1  # one foreground anchor
    # Logits 0 (p = 0.5): focal term 0.25 * ln 2 per (anchor, class), times alpha_t; 15 valid
    # anchors x 3 classes, all negatives (0.75) except anchor 5 class 2 (0.25).
    focal = (15 * 3 * 0.75 - 1 * 0.5) * 0.25 * math.log(2)
    assert losses["loss_cls"].item() == pytest.approx(focal / normalizer, rel=1e-6)
    # smooth-L1: zero deltas against (dx, dy, dw, dh) = (0, 7/16, 0, log(30/16)), beta 0.1.
    # GIoU: the anchor against the ground truth, whose box is also the enclosing box.
    smooth_l1 = (7 / 16 - 0.05) + (math.log(30 / 16) - 0.05)
    box = smooth_l1 if loss_type == "smooth_l1" else 1 - 256 / 480
    assert losses["loss_box"].item() == pytest.approx(box / normalizer, rel=1e-5)
    model([torch.zeros(3, 64, 64)], [gt])
    assert model.loss_normalizer == pytest.approx(0.9 * normalizer + 0.1)


def test_resnet_fpn_end_to_end():
    from detforge.modeling.backbones.resnet import resnet18
    from detforge.modeling.necks.fpn import FPN, LastLevelP6P7

    backbone = resnet18(out_features=("res3", "res4", "res5"), norm="FrozenBN")
    neck = FPN(
        backbone.output_shape(), ("res3", "res4", "res5"), 16, top_block=LastLevelP6P7(512, 16)
    )
    model = RetinaNet(
        backbone=backbone,
        neck=neck,
        head=RetinaNetHead(in_channels=16, num_anchors=9, num_classes=3, num_convs=2),
        anchor_generator=_retina_anchors(),
        box_coder=BoxCoder(),
        anchor_matcher=Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True),
        num_classes=3,
    )
    losses = model.train()(_images(), _targets())
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with torch.no_grad():
        out = model.eval()(_images(), original_sizes=[(140, 180), (64, 50)])
    assert [d.image_size for d in out] == [(140, 180), (64, 50)]
    for d in out:
        assert d.scores is not None and d.labels is not None and len(d) <= 100
        assert d.labels.dtype == torch.int64 and ((d.labels >= 0) & (d.labels < 3)).all()
        assert (d.scores > 0.05).all() and torch.equal(d.scores, d.scores.sort(descending=True)[0])


# --------------------------------------------------------------------------- inference


def _set(level_logits: Tensor, idx: int, cls: int, score: float) -> None:
    w = level_logits.shape[-1]
    level_logits[0, cls, idx // w, idx % w] = _logit(score)


def _inference_model(max_det: int = 5) -> RetinaNet:
    """Two levels on a 64x64 image: p4 (4x4 grid, 16 px anchors), p5 (2x2 grid, 32 px)."""
    lg4, lg5 = torch.full((2, 2, 4, 4), -10.0), torch.full((2, 2, 2, 2), -10.0)
    dl4, dl5 = torch.zeros(2, 4, 4, 4), torch.zeros(2, 4, 2, 2)
    _set(lg4, 5, 0, 0.9)  # a: [8, 8, 24, 24]
    _set(lg4, 6, 0, 0.85)  # b: [10, 8, 26, 24], IoU 0.78 with a: suppressed
    dl4[0, 0, 1, 2] = -0.875
    _set(lg4, 5, 1, 0.8)  # c: same box as a, other class: kept
    _set(lg4, 10, 1, 0.7)  # d: 4th candidate of p4: cut by the per-level top-3
    _set(lg4, 12, 0, 0.04)  # e: below the score threshold
    _set(lg5, 3, 1, 0.95)  # f: [16, 16, 48, 48]
    _set(lg5, 0, 0, 0.6)  # g: [-16, -16, 16, 16]
    _set(lg5, 2, 0, 0.55)  # h: [0, 0, 16, 16]; IoU 0.25 with g, but 1.0 once g is clipped
    dl5[0, :, 1, 0] = torch.tensor([0.25, -0.75, math.log(0.5), math.log(0.5)])
    return RetinaNet(
        backbone=_PoolPyramid({"p4": 16, "p5": 32}),
        head=_FixedHead([lg4, lg5], [dl4, dl5]),
        anchor_generator=AnchorGenerator([[16.0], [32.0]], [[1.0]], strides=[16, 32]),
        box_coder=BoxCoder(),
        anchor_matcher=Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True),
        num_classes=2,
        in_features=["p4", "p5"],
        test_topk_candidates=3,
        max_detections_per_image=max_det,
    ).eval()


def test_inference_by_hand():
    model = _inference_model()
    images = [torch.zeros(3, 64, 64), torch.zeros(3, 64, 48)]
    det, empty = model(images)
    expected_boxes = torch.tensor(
        [[16.0, 16, 48, 48], [8, 8, 24, 24], [8, 8, 24, 24], [0, 0, 16, 16], [0, 0, 16, 16]]
    )
    assert torch.allclose(det.boxes, expected_boxes, atol=1e-5)
    assert torch.allclose(det.scores, torch.tensor([0.95, 0.9, 0.8, 0.6, 0.55]), atol=1e-6)
    assert det.labels.tolist() == [1, 0, 1, 0, 0]
    assert det.image_size == (64, 64)
    assert len(empty) == 0 and empty.image_size == (64, 48) and empty.boxes.shape == (0, 4)


def test_inference_max_detections_and_rescaling():
    model = _inference_model(max_det=2)
    (det,) = model([torch.zeros(3, 64, 64)], original_sizes=[(128, 96)])
    # f and a, scaled by x 96/64 = 1.5 and y 128/64 = 2.
    assert torch.allclose(det.boxes, torch.tensor([[24.0, 32, 72, 96], [12, 16, 36, 48]]))
    assert det.labels.tolist() == [1, 0] and det.image_size == (128, 96)


def test_rescale_detections_clips_and_drops_empty():
    det = Instances(
        (50, 100),
        boxes=torch.tensor([[-10.0, 5, 20, 60], [101, 0, 120, 10], [10, 10, 10, 20]]),
        scores=torch.tensor([0.9, 0.8, 0.7]),
        labels=torch.tensor([1, 2, 3]),
    )
    out = rescale_detections(det, (100, 50))  # x * 0.5, y * 2
    assert out.image_size == (100, 50)
    assert torch.equal(out.boxes, torch.tensor([[0.0, 10, 10, 100]]))
    assert out.scores.tolist() == [pytest.approx(0.9)] and out.labels.tolist() == [1]


# --------------------------------------------------------------------------- input checks


def _ok_target(h: int = 70, w: int = 90, box=(10.0, 10.0, 20.0, 20.0), label: int = 0):
    return Instances((h, w), boxes=torch.tensor([box]), labels=torch.tensor([label]))


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        ([], ValueError, "empty"),
        (torch.zeros(1, 3, 32, 32), TypeError, "list of Tensor"),
        ([torch.zeros(32, 32)], ValueError, r"images\[0\].*\[3, H, W\]"),
        ([torch.zeros(3, 32, 32), torch.zeros(1, 32, 32)], ValueError, r"images\[1\]"),
        ([torch.zeros(3, 32, 32, dtype=torch.int32)], TypeError, "uint8 or floating"),
        ([torch.zeros(3, 0, 32)], ValueError, "H, W > 0"),
    ],
)
def test_bad_images(images, error, match):
    with pytest.raises(error, match=match):
        _model().eval()(images)


@pytest.mark.parametrize(
    ("targets", "error", "match"),
    [
        (None, ValueError, "targets` are required"),
        ([_ok_target()], ValueError, "1 targets for 2 images"),
        ([_ok_target(), _ok_target(64, 50, box=(10.0, 10.0, 52.0, 20.0))], ValueError,
         r"targets\[1\].boxes\[0\].*64x50"),
        ([_ok_target(box=(30.0, 10.0, 20.0, 20.0)), _ok_target(64, 50)], ValueError,
         r"targets\[0\].boxes\[0\].*ordered"),
        ([_ok_target(label=3), _ok_target(64, 50)], ValueError, r"labels\[0\]` is 3"),
        ([_ok_target(64, 50), _ok_target(64, 50)], ValueError, r"image_size` is \(64, 50\)"),
        ([Instances((70, 90), boxes=torch.zeros(0, 4)), _ok_target(64, 50)], ValueError,
         r"targets\[0\].labels"),
        ([_ok_target(), "x"], TypeError, r"targets\[1\]` must be Instances"),
    ],
)  # fmt: skip
def test_bad_targets(targets, error, match):
    with pytest.raises(error, match=match):
        _model().train()(_images(), targets)


def test_small_box_overhang_is_tolerated():
    targets = [_ok_target(box=(-0.5, 0.0, 90.8, 70.0)), _ok_target(64, 50)]
    losses = _model().train()(_images(), targets)
    assert torch.isfinite(losses["loss_cls"])


def test_bad_original_sizes_and_mismatched_head():
    with pytest.raises(ValueError, match="original_sizes"):
        _model().eval()(_images(), original_sizes=[(10, 10)])
    model = _model(num_classes=4)
    model.head = RetinaNetHead(in_channels=8, num_anchors=9, num_classes=3)
    with pytest.raises(ValueError, match=r"level 0 \(p3\).*expected \[2, 36"):
        model.eval()(_images())
    with pytest.raises(ValueError, match=r"\['p8'\] not produced"):
        _model(in_features=["p3", "p4", "p5", "p6", "p8"]).eval()(_images())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_features": ["p3", "p4"]}, "one map per anchor level"),
        ({"box_reg_loss_type": "l2"}, "box_reg_loss_type"),
        ({"input_format": "YUV"}, "input_format"),
        ({"test_nms_thresh": 1.5}, "test_nms_thresh"),
        ({"pixel_std": [1.0, 0.0, 1.0]}, "pixel_std"),
        ({"pixel_std": [1.0, 1.0]}, "channels"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _model(**kwargs)


@pytest.mark.parametrize("k", [1, 5, 37, 200, 1000])
def test_stable_topk_subset_matches_a_full_stable_sort(k):
    from detforge.modeling.dense_heads.dense_inference import stable_topk_subset

    gen = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 20, (500,), generator=gen).float() / 20  # many ties
    indices = torch.randperm(10_000, generator=gen)[:500].sort().values
    got = stable_topk_subset(indices, scores, k)
    ref = indices[scores.sort(descending=True, stable=True).indices[:k]]
    assert torch.equal(got, ref.sort().values)


def test_settings_on_the_model_reach_its_outputs():
    model = _model()
    model.test_score_thresh = 0.3
    model.loss_normalizer, model.loss_normalizer_momentum = 7.0, 0.5
    out = model.outputs
    assert out.test_score_thresh == 0.3 and out.loss_normalizer == 7.0
    assert out.loss_normalizer_momentum == 0.5
    out.loss_normalizer = 9.0
    assert model.loss_normalizer == 9.0
    # The statistics are the detector's own non-persistent buffers, as before the split.
    assert [n for n, _ in model.named_buffers()][:2] == ["pixel_mean", "pixel_std"]
    assert not [k for k in model.state_dict() if not k.startswith(("backbone.", "head."))]
