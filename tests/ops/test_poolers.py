import pytest
import torch

from detforge.ops.poolers import MultiLevelRoIPooler, assign_boxes_to_levels, boxes_to_rois
from detforge.ops.roi_align import roi_align
from detforge.ops.roi_crop import roi_crop
from detforge.ops.roi_pool import roi_pool


def _square(size: float, x: float = 0.0) -> list[float]:
    return [x, 0.0, x + size, size]


def test_canonical_level_rule():
    boxes = torch.tensor(
        [_square(s) for s in (224, 223.9, 112, 111.9, 448, 1000, 10, 0)], dtype=torch.float32
    )
    levels = assign_boxes_to_levels(boxes, 2, 5) + 2
    assert levels.tolist() == [4, 3, 3, 2, 5, 5, 2, 2]
    # Other canonical settings shift the rule.
    levels = assign_boxes_to_levels(boxes[:1], 3, 7, canonical_box_size=112, canonical_level=4) + 3
    assert levels.tolist() == [5]


def test_boxes_to_rois():
    rois = boxes_to_rois([torch.ones(2, 4), torch.zeros(0, 4), 2 * torch.ones(1, 4)])
    assert rois[:, 0].tolist() == [0, 0, 2]
    assert rois[2, 1:].tolist() == [2, 2, 2, 2]


def _pyramid(b: int = 2, c: int = 3) -> list[torch.Tensor]:
    return [torch.randn(b, c, 256 // s, 320 // s, dtype=torch.float64) for s in (4, 8, 16, 32)]


def _boxes() -> list[torch.Tensor]:
    b0 = torch.tensor([[10.0, 12, 40, 50], [0, 0, 250, 200], [100, 30, 220, 150]])
    b1 = torch.tensor([[5.0, 5, 6, 7], [30, 40, 300, 250], [60, 60, 120, 110], [0, 0, 0, 0]])
    return [b0.double(), b1.double()]


@pytest.mark.parametrize("kind", ["roi_align_v2", "roi_align", "roi_pool", "roi_crop"])
def test_pooler_matches_per_level_op(kind):
    feats, boxes = _pyramid(), _boxes()
    scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
    pooler = MultiLevelRoIPooler((7, 5), scales, pooler_type=kind, sampling_ratio=2)
    out = pooler(feats, boxes)
    assert out.shape == (7, 3, 7, 5)
    rois = boxes_to_rois(boxes)
    levels = assign_boxes_to_levels(rois[:, 1:], 2, 5)
    assert len(set(levels.tolist())) >= 3  # the test exercises several levels
    for i in range(rois.shape[0]):
        lv = int(levels[i])
        if kind == "roi_pool":
            want = roi_pool(feats[lv], rois[i : i + 1], (7, 5), spatial_scale=scales[lv])
        elif kind == "roi_crop":
            want = roi_crop(feats[lv], rois[i : i + 1], (7, 5), spatial_scale=scales[lv])
        else:
            want = roi_align(
                feats[lv],
                rois[i : i + 1],
                (7, 5),
                spatial_scale=scales[lv],
                sampling_ratio=2,
                aligned=kind == "roi_align_v2",
            )
        torch.testing.assert_close(out[i : i + 1], want)


def test_single_level_and_gradients():
    feats = [f.requires_grad_(True) for f in _pyramid()]
    pooler = MultiLevelRoIPooler(4, (1 / 4, 1 / 8, 1 / 16, 1 / 32))
    pooler(feats, _boxes()).sum().backward()
    got_grad = [f.grad is not None and bool(f.grad.abs().sum() > 0) for f in feats]
    assert got_grad[:3] == [True, True, True]
    single = MultiLevelRoIPooler(3, (1 / 8,))
    out = single([feats[1]], _boxes())
    assert out.shape == (7, 3, 3, 3)


def test_empty_boxes():
    pooler = MultiLevelRoIPooler(7, (1 / 4, 1 / 8))
    feats = _pyramid()[:2]
    out = pooler(feats, [torch.zeros(0, 4, dtype=torch.float64)] * 2)
    assert out.shape == (0, 3, 7, 7)


def test_errors():
    with pytest.raises(ValueError, match="power of two"):
        MultiLevelRoIPooler(7, (0.3,))
    with pytest.raises(ValueError, match="consecutive"):
        MultiLevelRoIPooler(7, (1 / 4, 1 / 16))
    with pytest.raises(ValueError, match="pooler_type"):
        MultiLevelRoIPooler(7, (1 / 4,), pooler_type="roi_foo")  # type: ignore[arg-type]
    pooler = MultiLevelRoIPooler(7, (1 / 4, 1 / 8))
    feats = _pyramid()[:2]
    with pytest.raises(ValueError, match="3 feature maps given but 2 scales"):
        pooler(feats + feats[:1], _boxes())
    with pytest.raises(ValueError, match="1 box tensors for a batch of 2"):
        pooler(feats, _boxes()[:1])
    with pytest.raises(ValueError, match=r"features\[1\]"):
        pooler([feats[0], feats[1][:, :2]], _boxes())
    with pytest.raises(ValueError, match="x2 >= x1"):
        pooler(feats, [torch.tensor([[5.0, 0, 1, 1]]).double(), torch.zeros(0, 4).double()])


def test_output_size_must_be_ints():
    with pytest.raises(ValueError, match="`output_size` must be an int or a pair of ints"):
        MultiLevelRoIPooler(7.5, (1 / 4,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pair of ints"):
        MultiLevelRoIPooler((7, 7, 7), (1 / 4,))  # type: ignore[arg-type]
    assert MultiLevelRoIPooler((7, 5), (1 / 4,)).output_size == (7, 5)


def test_half_precision_features_keep_float32_level_assignment():
    # A 300 px box has an area (90000) that overflows float16: its level must still come from
    # the float32 box (P4), as in detectron2, not from the cast one.
    feats = [torch.zeros(1, 2, 256 // s, 320 // s, dtype=torch.float16) for s in (4, 8, 16, 32)]
    for i, f in enumerate(feats):
        f += i  # level i holds the value i
    pooler = MultiLevelRoIPooler(2, (1 / 4, 1 / 8, 1 / 16, 1 / 32), pooler_type="roi_align_v2")
    out = pooler(feats, [torch.tensor([[0.0, 0.0, 300.0, 300.0], [0.0, 0.0, 60.0, 60.0]])])
    assert out.dtype == torch.float16
    assert out[:, 0, 0, 0].tolist() == [2.0, 0.0]  # P4 (index 2) and P2 (index 0)
