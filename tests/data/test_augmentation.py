"""Augmentation policies: detectron2's size rules, determinism per seed, annotation consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detforge.data.augmentation import (
    AugmentationList,
    LargeScaleJitter,
    RandomApply,
    RandomBrightness,
    RandomContrast,
    RandomCrop,
    RandomFlip,
    RandomLighting,
    RandomSaturation,
    ResizeShortestEdge,
    shortest_edge_size,
)
from detforge.data.transforms import TransformList
from detforge.data.transforms_crop import CropTransform, PadTransform
from detforge.data.transforms_geometric import HFlipTransform, ResizeTransform, VFlipTransform
from detforge.data.transforms_photometric import ContrastTransform
from detforge.structures.masks import BitMasks, polygons_to_bitmask


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_shortest_edge_size_detectron2_rounding() -> None:
    assert shortest_edge_size(480, 640, 800, 1333) == (800, 1067)  # 1066.67 rounds up
    assert shortest_edge_size(640, 480, 800, 1333) == (1067, 800)
    assert shortest_edge_size(200, 1000, 800, 1333) == (267, 1333)  # capped: 266.6 x 1333
    assert shortest_edge_size(427, 640, 800, 1333) == (800, 1199)  # 1199.06
    assert shortest_edge_size(100, 100, 64, 1000) == (64, 64)


def test_resize_shortest_edge_sampling() -> None:
    img = _image(48, 64)
    aug = ResizeShortestEdge((20, 22), max_size=1000, sample_style="range")
    shorts = set()
    for seed in range(60):
        t = aug.get_transform(img, np.random.default_rng(seed))
        assert isinstance(t, ResizeTransform) and (t.h, t.w) == (48, 64)
        shorts.add(t.new_h)
        assert t.new_w == int(t.new_h * 64 / 48 + 0.5)
    assert shorts == {20, 21, 22}  # both ends of the range are inclusive
    choice = ResizeShortestEdge((16, 32), sample_style="choice")
    drawn = set()
    for seed in range(30):
        t = choice.get_transform(img, np.random.default_rng(seed))
        assert isinstance(t, ResizeTransform)
        drawn.add(t.new_h)
    assert drawn == {16, 32}
    none = ResizeShortestEdge(0).get_transform(img, np.random.default_rng(0))
    assert isinstance(none, TransformList) and len(none) == 0
    with pytest.raises(ValueError, match="sample_style"):
        ResizeShortestEdge((1, 2, 3), sample_style="range")
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        ResizeShortestEdge(10).get_transform(img, 0)  # type: ignore[arg-type]


def test_random_flip() -> None:
    img = _image(10, 20)
    t = RandomFlip(1.0).get_transform(img, np.random.default_rng(0))
    assert isinstance(t, HFlipTransform) and t.width == 20
    t = RandomFlip(1.0, horizontal=False, vertical=True).get_transform(
        img, np.random.default_rng(0)
    )
    assert isinstance(t, VFlipTransform) and t.height == 10
    assert len(RandomFlip(0.0).get_transform(img, np.random.default_rng(0))) == 0  # type: ignore[arg-type]
    flips = sum(
        isinstance(RandomFlip(0.5).get_transform(img, np.random.default_rng(s)), HFlipTransform)
        for s in range(200)
    )
    assert 70 < flips < 130
    with pytest.raises(ValueError, match="exactly one"):
        RandomFlip(horizontal=True, vertical=True)
    with pytest.raises(ValueError, match="prob"):
        RandomFlip(1.5)


def test_random_crop_types() -> None:
    img = _image(11, 21)
    rng = np.random.default_rng(0)
    assert RandomCrop("relative", (0.5, 0.5)).crop_size_for(11, 21, rng) == (6, 11)
    assert RandomCrop("absolute", (5, 100)).crop_size_for(11, 21, rng) == (5, 21)
    for seed in range(50):
        rng = np.random.default_rng(seed)
        t = RandomCrop("absolute_range", (3, 15)).get_transform(img, rng)
        assert isinstance(t, CropTransform)
        assert 3 <= t.h <= 11 and 3 <= t.w <= 15
        assert t.x0 + t.w <= 21 and t.y0 + t.h <= 11 and (t.orig_h, t.orig_w) == (11, 21)
        t = RandomCrop("relative_range", (0.5, 0.2)).get_transform(img, rng)
        assert isinstance(t, CropTransform)
        assert int(11 * 0.5 + 0.5) <= t.h <= 11 and int(21 * 0.2 + 0.5) <= t.w <= 21
    with pytest.raises(ValueError, match="crop_type"):
        RandomCrop("random", (1, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"relative `crop_size`"):
        RandomCrop("relative", (0.0, 0.5))
    with pytest.raises(ValueError, match="min, max"):
        RandomCrop("absolute_range", (9, 3))


def test_random_apply_and_photometric_policies() -> None:
    img = _image(8, 8)
    inner = RandomFlip(1.0)
    assert isinstance(
        RandomApply(inner, 1.0).get_transform(img, np.random.default_rng(0)), HFlipTransform
    )
    assert len(RandomApply(inner, 0.0).get_transform(img, np.random.default_rng(0))) == 0  # type: ignore[arg-type]
    for seed in range(20):
        rng = np.random.default_rng(seed)
        assert 0.8 <= RandomBrightness(0.8, 1.2).get_transform(img, rng).factor <= 1.2  # type: ignore[attr-defined]
        assert 0.5 <= RandomSaturation(0.5, 1.5).get_transform(img, rng).factor <= 1.5  # type: ignore[attr-defined]
    t = RandomContrast(0.9, 0.9).get_transform(img, np.random.default_rng(0))
    assert isinstance(t, ContrastTransform)
    assert t.factor == pytest.approx(0.9) and t.mean == pytest.approx(img.mean())
    a = RandomLighting(0.1).get_transform(img, np.random.default_rng(7))
    b = RandomLighting(0.1).get_transform(img, np.random.default_rng(7))
    np.testing.assert_array_equal(a.alphas, b.alphas)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="intensity_min"):
        RandomBrightness(1.5, 1.0)


def test_large_scale_jitter_sizes() -> None:
    img = _image(60, 80)
    aug = LargeScaleJitter((64, 96), min_scale=0.3, max_scale=2.0)
    kinds = set()
    for seed in range(40):
        t = aug.get_transform(img, np.random.default_rng(seed))
        assert t.apply_image(img).shape == (64, 96, 3)
        assert isinstance(t, TransformList)
        resize = t.transforms[0]
        assert isinstance(resize, ResizeTransform)
        # replicate the draw: scale to fit inside jitter * output_size
        jitter = np.random.default_rng(seed).uniform(0.3, 2.0)
        scale = min(jitter * 64 / 60, jitter * 96 / 80)
        assert (resize.new_h, resize.new_w) == (round(60 * scale), round(80 * scale))
        kinds.add(tuple(type(s).__name__ for s in t.transforms[1:]))
        if any(isinstance(s, PadTransform) for s in t):
            pad = t.transforms[-1]
            assert pad.top == 0 and pad.left == 0 and pad.pad_value == 128  # type: ignore[attr-defined]
    assert ("CropTransform",) in kinds and ("PadTransform",) in kinds


def test_augmentation_list_chains_and_is_deterministic() -> None:
    img = _image(30, 40)
    augs = AugmentationList(
        [
            ResizeShortestEdge((20, 60), max_size=100),
            RandomFlip(1.0),
            RandomCrop("relative_range", (0.5, 0.5)),
            RandomBrightness(0.5, 1.5),
        ]
    )
    out1, t1 = augs(img, np.random.default_rng(5))
    out2, t2 = augs(img, np.random.default_rng(5))
    assert repr(t1) == repr(t2)
    np.testing.assert_array_equal(out1, out2)
    np.testing.assert_array_equal(t1.apply_image(img), out1)
    resize, flip = t1.transforms[0], t1.transforms[1]
    assert isinstance(resize, ResizeTransform) and isinstance(flip, HFlipTransform)
    assert flip.width == resize.new_w  # the flip saw the resized image
    reprs = {repr(augs.get_transform(img, np.random.default_rng(s))) for s in range(10)}
    assert len(reprs) > 5
    with pytest.raises(TypeError, match="item 1"):
        AugmentationList([RandomFlip(), "flip"])  # type: ignore[list-item]


def _star(cx: float, cy: float, r1: float, r2: float, n: int = 7) -> np.ndarray:
    angles = np.arange(2 * n) * np.pi / n
    radius = np.where(np.arange(2 * n) % 2 == 0, r1, r2)
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1).ravel()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("with_crop", [False, True])
def test_box_polygon_bitmask_stay_consistent(with_crop: bool) -> None:
    h, w = 90, 120
    polys = [_star(40, 45, 30, 18), _star(90, 30, 22, 12)]
    masks = np.stack([polygons_to_bitmask([p], h, w).numpy() for p in polys])
    boxes = BitMasks(torch.from_numpy(masks)).bounding_boxes().numpy().astype(np.float64)
    augs = [
        ResizeShortestEdge((60, 140), max_size=400),
        RandomFlip(0.5),
        RandomFlip(0.5, horizontal=False, vertical=True),
    ]
    if with_crop:
        augs += [RandomCrop("relative_range", (0.6, 0.6))]
    policy = AugmentationList(augs)
    checked = 0
    for seed in range(12):
        out, t = policy(_image(h, w), np.random.default_rng(seed))
        oh, ow = out.shape[:2]
        new_masks = t.apply_bitmasks(masks)
        new_boxes = t.apply_boxes(boxes)
        tight = BitMasks(torch.from_numpy(new_masks)).bounding_boxes().numpy()
        for k, p in enumerate(polys):
            new_polys = t.apply_polygons([p])
            if not new_masks[k].any():
                continue
            raster = polygons_to_bitmask(new_polys, oh, ow).numpy()
            checked += 1
            assert _iou(raster, new_masks[k]) > 0.85
            if with_crop:  # the clipped box contains what is left of the object
                assert (tight[k, :2] >= new_boxes[k, :2] - 1).all()
                assert (tight[k, 2:] <= new_boxes[k, 2:] + 1).all()
            else:
                np.testing.assert_allclose(tight[k], new_boxes[k], atol=1.0)
    assert checked >= 20
