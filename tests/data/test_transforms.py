"""Deterministic transforms: exact hand-computed results, inverses, and the PIL/torch oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from detforge.data.transforms import Transform, TransformList, flip_permutation
from detforge.data.transforms_crop import CropTransform, PadTransform, clip_polygon
from detforge.data.transforms_geometric import HFlipTransform, ResizeTransform, VFlipTransform
from detforge.data.transforms_photometric import (
    IMAGENET_EIGENVALUES,
    IMAGENET_EIGENVECTORS,
    BrightnessTransform,
    ContrastTransform,
    LightingTransform,
    SaturationTransform,
)
from detforge.structures.masks import BitMasks, polygons_to_bitmask


def _shoelace(flat: np.ndarray) -> float:
    x, y = flat[0::2], flat[1::2]
    return float(0.5 * abs(x @ np.roll(y, 1) - y @ np.roll(x, 1)))


def _vertex_set(flat: np.ndarray) -> set[tuple[float, float]]:
    return {(float(x), float(y)) for x, y in flat.reshape(-1, 2)}


# ----------------------------------------------------------------------------- resize


def test_resize_coords_boxes_polygons_exact() -> None:
    t = ResizeTransform(h=4, w=6, new_h=8, new_w=3)
    np.testing.assert_array_equal(
        t.apply_coords(np.array([[3.0, 2.0], [6.0, 4.0]])), [[1.5, 4.0], [3.0, 8.0]]
    )
    np.testing.assert_array_equal(
        t.apply_boxes(np.array([[0.0, 1.0, 4.0, 3.0]])), [[0.0, 2.0, 2.0, 6.0]]
    )
    (poly,) = t.apply_polygons([np.array([0.0, 0.0, 2.0, 0.0, 2.0, 1.0])])
    np.testing.assert_array_equal(poly, [0.0, 0.0, 1.0, 0.0, 1.0, 2.0])
    kps = t.apply_keypoints(np.array([[[2.0, 2.0, 2.0]]]))
    np.testing.assert_array_equal(kps, [[[1.0, 4.0, 2.0]]])


def test_resize_bilinear_upsample_hand_computed() -> None:
    # Half-pixel centres: output centres sit at source x = -0.25, 0.25, 0.75, 1.25 (clamped).
    img = np.array([[0, 100]], dtype=np.uint8)
    t = ResizeTransform(h=1, w=2, new_h=1, new_w=4)
    np.testing.assert_array_equal(t.apply_image(img), [[0, 25, 75, 100]])
    out = t.apply_image(img.astype(np.float32))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 25, 75, 100]], atol=1e-4)


def test_resize_uint8_pil_and_float_torch_agree() -> None:
    img = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for new_h, new_w in [(20, 30), (80, 100), (37, 20)]:
        t = ResizeTransform(h=37, w=53, new_h=new_h, new_w=new_w)
        a = t.apply_image(img)
        b = t.apply_image(img.astype(np.float64))
        assert a.shape == b.shape == (new_h, new_w, 3) and a.dtype == np.uint8
        diff = np.abs(a.astype(np.float64) - b)
        assert diff.mean() < 0.5 and diff.max() <= 1.5


def test_resize_nearest_matches_pil_outside_ties() -> None:
    rng = np.random.default_rng(2)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        nh, nw = (int(v) for v in rng.integers(1, 70, 2))
        img = rng.integers(0, 256, (h, w), dtype=np.uint8)
        pil = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.NEAREST))
        t = ResizeTransform(h=h, w=w, new_h=nh, new_w=nw, interp="nearest")
        mine = t.apply_image(img)
        masks = t.apply_bitmasks((img > 127)[None])[0]
        seg = t.apply_segmentation(img.astype(np.int32))
        # where an output centre falls exactly on a source border, PIL's float rounding may pick
        # either neighbour: compare elsewhere.
        ky, kx = np.arange(nh), np.arange(nw)
        ok = (((2 * ky + 1) * h) % (2 * nh) != 0)[:, None] & (((2 * kx + 1) * w) % (2 * nw) != 0)
        np.testing.assert_array_equal(mine[ok], pil[ok])
        np.testing.assert_array_equal(masks, mine > 127)
        np.testing.assert_array_equal(seg, mine)


def test_resize_masks_hand_computed_and_channels() -> None:
    t = ResizeTransform(h=2, w=2, new_h=4, new_w=4)
    m = t.apply_bitmasks(np.array([[[True, False], [False, False]]]))
    expected = np.zeros((1, 4, 4), bool)
    expected[0, :2, :2] = True
    np.testing.assert_array_equal(m, expected)
    down = ResizeTransform(h=4, w=4, new_h=2, new_w=2)  # samples rows/cols 1 and 3
    seg = np.arange(16, dtype=np.int64).reshape(4, 4)
    np.testing.assert_array_equal(down.apply_segmentation(seg), [[5, 7], [13, 15]])
    for shape in [(2, 2), (2, 2, 1), (2, 2, 4)]:
        out = t.apply_image(np.full(shape, 7, np.uint8))
        assert out.shape == (4, 4) + shape[2:] and (out == 7).all()


def test_resize_inverse_and_errors() -> None:
    t = ResizeTransform(h=30, w=40, new_h=17, new_w=61)
    pts = np.random.default_rng(0).uniform(0, 30, (10, 2))
    np.testing.assert_allclose(t.inverse().apply_coords(t.apply_coords(pts)), pts, atol=1e-9)
    with pytest.raises(ValueError, match=r"ResizeTransform.apply_image.*30x40"):
        t.apply_image(np.zeros((30, 41, 3), np.uint8))
    with pytest.raises(TypeError, match="uint8 or floating"):
        t.apply_image(np.zeros((30, 40), np.int32))
    with pytest.raises(ValueError, match="new_h"):
        ResizeTransform(h=3, w=3, new_h=0, new_w=3)
    with pytest.raises(ValueError, match="interp"):
        ResizeTransform(h=3, w=3, new_h=3, new_w=3, interp="lanczos")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- flips


def test_hflip_exact_and_pixel_consistent() -> None:
    t = HFlipTransform(10)
    np.testing.assert_array_equal(
        t.apply_boxes(np.array([[1.0, 2.0, 3.0, 4.0]])), [[7.0, 2.0, 9.0, 4.0]]
    )
    np.testing.assert_array_equal(
        t.apply_coords(np.array([[0.0, 5.0], [2.5, 1.0]])), [[10.0, 5.0], [7.5, 1.0]]
    )
    img = np.arange(30, dtype=np.uint8).reshape(3, 10)
    np.testing.assert_array_equal(t.apply_image(img), img[:, ::-1])
    # the box of a mask, flipped, is the box of the flipped mask
    mask = np.zeros((1, 3, 10), bool)
    mask[0, 1, 1:3] = True  # columns 1, 2 -> box x in [1, 3)
    box = BitMasks(torch.from_numpy(mask)).bounding_boxes().numpy()
    flipped_box = BitMasks(torch.from_numpy(t.apply_bitmasks(mask))).bounding_boxes().numpy()
    np.testing.assert_array_equal(t.apply_boxes(box), flipped_box)
    np.testing.assert_array_equal(flipped_box, [[7, 1, 9, 2]])
    assert isinstance(t.inverse(), HFlipTransform)


def test_vflip_exact() -> None:
    t = VFlipTransform(6)
    np.testing.assert_array_equal(
        t.apply_boxes(np.array([[1.0, 2.0, 3.0, 5.0]])), [[1.0, 1.0, 3.0, 4.0]]
    )
    seg = np.arange(12).reshape(6, 2)
    np.testing.assert_array_equal(t.apply_segmentation(seg), seg[::-1])
    with pytest.raises(ValueError, match="VFlipTransform.apply_image"):
        t.apply_image(np.zeros((5, 2), np.uint8))


@pytest.mark.parametrize("flip", [HFlipTransform(10), VFlipTransform(10)])
def test_flips_swap_left_right_keypoints(flip: Transform) -> None:
    kps = np.array([[[1.0, 2.0, 2.0], [8.0, 3.0, 1.0], [5.0, 5.0, 2.0]]])  # left, right, nose
    out = flip.apply_keypoints(kps, flip_pairs=[(0, 1)])
    moved = flip.apply_coords(kps[0, :, :2])
    np.testing.assert_array_equal(out[0, 0], [*moved[1], 1.0])  # left slot: the moved right
    np.testing.assert_array_equal(out[0, 1], [*moved[0], 2.0])
    np.testing.assert_array_equal(out[0, 2], [*moved[2], 2.0])
    # two flips of the same kind give back the original, labels included
    np.testing.assert_array_equal(flip.apply_keypoints(out, [(0, 1)]), kps)


def test_flip_permutation_checks() -> None:
    np.testing.assert_array_equal(flip_permutation([(0, 2)], 4), [2, 1, 0, 3])
    with pytest.raises(ValueError, match="out of range"):
        flip_permutation([(0, 4)], 4)
    with pytest.raises(ValueError, match="two flip pairs"):
        flip_permutation([(0, 1), (1, 2)], 4)


# ----------------------------------------------------------------------------- crop and pad


def test_crop_boxes_clipped_and_keypoints_unlabelled() -> None:
    t = CropTransform(x0=2, y0=1, w=4, h=3, orig_h=10, orig_w=10)
    boxes = np.array([[0.0, 0.0, 5.0, 5.0], [3.0, 2.0, 4.0, 3.0], [8.0, 8.0, 9.0, 9.0]])
    np.testing.assert_array_equal(t.apply_boxes(boxes), [[0, 0, 3, 3], [1, 1, 2, 2], [4, 3, 4, 3]])
    kps = np.array([[[3.0, 2.0, 2.0], [9.0, 2.0, 2.0], [6.0, 4.0, 1.0]]])
    np.testing.assert_array_equal(
        t.apply_keypoints(kps), [[[1.0, 1.0, 2.0], [7.0, 1.0, 0.0], [4.0, 3.0, 1.0]]]
    )
    img = np.arange(100, dtype=np.uint8).reshape(10, 10)
    np.testing.assert_array_equal(t.apply_image(img), img[1:4, 2:6])
    with pytest.raises(ValueError, match="CropTransform.apply_image"):
        t.apply_image(np.zeros((9, 10), np.uint8))
    with pytest.raises(ValueError, match="beyond `orig_w`"):
        CropTransform(x0=8, y0=0, w=4, h=3, orig_h=10, orig_w=10)


def test_crop_polygons_clipped_hand_computed() -> None:
    t = CropTransform(x0=2, y0=2, w=4, h=4)
    square = np.array([1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0])  # -> (-1, -1)..(3, 3), clipped
    outside = np.array([10.0, 10.0, 12.0, 10.0, 12.0, 12.0])
    out = t.apply_polygons([square, outside])
    assert len(out) == 1
    assert _vertex_set(out[0]) == {(0, 0), (3, 0), (3, 3), (0, 3)}
    # a triangle crossing one corner: the cut point lies on the border
    tri = clip_polygon(np.array([-2.0, 1.0, 2.0, 1.0, 2.0, 5.0]), 10, 10)
    assert tri is not None
    assert _vertex_set(tri) == {(0, 1), (2, 1), (2, 5), (0, 3)}
    assert _shoelace(tri) == pytest.approx(6.0)
    assert clip_polygon(np.array([0.0, 0.0, 5.0, 0.0, 9.0, 0.0]), 10, 10) is None  # no area


def test_crop_concave_polygon_raster_matches_cropped_mask() -> None:
    # a U shape whose two arms are cut apart by the crop
    u = np.array([2, 2, 28, 2, 28, 28, 20, 28, 20, 10, 10, 10, 10, 28, 2, 28], dtype=np.float64)
    full = polygons_to_bitmask([u], 30, 30).numpy()
    t = CropTransform(x0=3, y0=15, w=24, h=10, orig_h=30, orig_w=30)
    polys = t.apply_polygons([u])
    assert len(polys) == 1
    cropped = polygons_to_bitmask(polys, 10, 24).numpy()
    expected = t.apply_bitmasks(full[None])[0]
    np.testing.assert_array_equal(cropped, expected)
    tight = BitMasks(torch.from_numpy(cropped[None])).bounding_boxes()[0].tolist()
    xy = polys[0].reshape(-1, 2)
    assert tight == [*xy.min(0).tolist(), *xy.max(0).tolist()]


def test_pad_exact_and_inverse() -> None:
    t = PadTransform(
        top=1, left=2, bottom=0, right=3, height=2, width=2, pad_value=9, seg_pad_value=255
    )
    img = np.array([[1, 2], [3, 4]], np.uint8)
    out = t.apply_image(img)
    expected = np.full((3, 7), 9, np.uint8)
    expected[1:, 2:4] = img
    np.testing.assert_array_equal(out, expected)
    rgb = t.apply_image(np.zeros((2, 2, 3), np.float32))
    assert rgb.shape == (3, 7, 3) and rgb.dtype == np.float32 and rgb[0, 0, 0] == 9
    np.testing.assert_array_equal(t.apply_coords(np.array([[0.5, 0.5]])), [[2.5, 1.5]])
    masks = t.apply_bitmasks(np.ones((2, 2, 2), bool))
    assert masks.shape == (2, 3, 7) and masks.sum() == 8 and masks[:, 1:, 2:4].all()
    seg = t.apply_segmentation(np.zeros((2, 2), np.int64))
    assert seg.dtype == np.int64 and (seg == 255).sum() == 21 - 4
    inv = t.inverse()
    assert isinstance(inv, CropTransform)
    np.testing.assert_array_equal(inv.apply_image(out), img)
    np.testing.assert_array_equal(
        inv.apply_coords(t.apply_coords(np.array([[1.0, 1.5]]))), [[1.0, 1.5]]
    )


def test_transform_list_inverse_round_trip() -> None:
    tl = TransformList(
        [
            ResizeTransform(h=40, w=60, new_h=50, new_w=90),
            HFlipTransform(90),
            BrightnessTransform(1.2),
            CropTransform(x0=5, y0=3, w=80, h=45, orig_h=50, orig_w=90),
            TransformList(
                [
                    PadTransform(top=2, left=1, bottom=3, right=0, height=45, width=80),
                    VFlipTransform(50),
                ]
            ),
        ]
    )
    assert len(tl) == 6 and tl.is_geometric
    img = np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    assert tl.apply_image(img).shape == (50, 81, 3)
    boxes = np.array([[10.0, 8.0, 40.0, 30.0], [5.5, 4.0, 50.0, 33.0]])  # inside the crop
    inv = tl.inverse()
    assert len(inv) == 5 and not any(isinstance(t, BrightnessTransform) for t in inv)
    np.testing.assert_allclose(inv.apply_boxes(tl.apply_boxes(boxes)), boxes, atol=1e-9)
    kps = np.array([[[20.0, 10.0, 2.0], [30.0, 20.0, 1.0]]])
    np.testing.assert_allclose(inv.apply_keypoints(tl.apply_keypoints(kps)), kps, atol=1e-9)
    assert inv.apply_image(tl.apply_image(img)).shape == img.shape
    with pytest.raises(ValueError, match="orig_h"):
        CropTransform(x0=0, y0=0, w=2, h=2).inverse()
    with pytest.raises(TypeError, match="item 0"):
        TransformList(["flip"])  # type: ignore[list-item]


# ----------------------------------------------------------------------------- photometric


def test_photometric_hand_computed() -> None:
    img = np.array([[[10, 200, 255]]], np.uint8)
    np.testing.assert_array_equal(BrightnessTransform(0.5).apply_image(img), [[[5, 100, 128]]])
    np.testing.assert_array_equal(BrightnessTransform(1.5).apply_image(img), [[[15, 255, 255]]])
    np.testing.assert_array_equal(
        ContrastTransform(0.5, mean=100.0).apply_image(img), [[[55, 150, 178]]]
    )
    red = np.array([[[255, 0, 0]]], np.uint8)  # luma 0.299 * 255 = 76.245
    np.testing.assert_array_equal(SaturationTransform(0.0).apply_image(red), [[[76, 76, 76]]])
    np.testing.assert_array_equal(SaturationTransform(1.0).apply_image(red), red)
    f = np.zeros((2, 2, 3), np.float32)
    out = LightingTransform([1.0, 0.0, 0.0], value_scale=1.0).apply_image(f)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[1, 1], IMAGENET_EIGENVECTORS[:, 0] * 0.2175, rtol=1e-6)
    assert IMAGENET_EIGENVALUES[0] == 0.2175
    # floating images are not clipped
    assert BrightnessTransform(3.0).apply_image(np.full((1, 1), 200.0))[0, 0] == 600.0


def test_photometric_geometry_untouched_and_errors() -> None:
    t = ContrastTransform(0.3, mean=5.0)
    assert not t.is_geometric
    boxes = np.array([[1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_array_equal(t.apply_boxes(boxes), boxes)
    masks = np.eye(3, dtype=bool)[None]
    np.testing.assert_array_equal(t.apply_bitmasks(masks), masks)
    kps = np.array([[[1.0, 2.0, 2.0]]])
    np.testing.assert_array_equal(t.apply_keypoints(kps, [(0, 0)]), kps)
    with pytest.raises(NotImplementedError):
        t.inverse()
    with pytest.raises(ValueError, match=r"SaturationTransform.apply_image.*RGB"):
        SaturationTransform(0.5).apply_image(np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="alphas"):
        LightingTransform([1.0, 2.0])
    with pytest.raises(ValueError, match="factor"):
        BrightnessTransform(float("nan"))


def test_bad_annotation_inputs_name_the_function() -> None:
    t = HFlipTransform(4)
    with pytest.raises(ValueError, match=r"HFlipTransform.apply_boxes.*\[N, 4\]"):
        t.apply_boxes(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"HFlipTransform.apply_polygons.*even"):
        t.apply_polygons([np.zeros(5)])
    with pytest.raises(ValueError, match=r"HFlipTransform.apply_bitmasks.*bool"):
        t.apply_bitmasks(np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"HFlipTransform.apply_keypoints.*\[N, P, 3\]"):
        t.apply_keypoints(np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"HFlipTransform.apply_segmentation"):
        t.apply_segmentation(np.zeros((4, 4), np.float32))
