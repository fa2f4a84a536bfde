"""Tests for detforge.structures.masks: rasterisation, RLE, BitMasks and PolygonMasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from pycocotools.coco import COCO

from detforge.structures.masks import (
    BitMasks,
    PolygonMasks,
    polygons_to_bitmask,
    rle_area,
    rle_decode,
    rle_encode,
)

FRUITS = Path("fruits_nuts/data/trainval.json")
COCO_KPTS = Path("coco_kpts_mmpose_sample/tests/data/coco/test_coco.json")


def _square(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    return [x1, y1, x2, y1, x2, y2, x1, y2]


def _load_coco(root: Path, rel: Path) -> COCO:
    with open(root / rel) as f:
        dataset = json.load(f)
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


# --------------------------------------------------------------------------- rasterisation


def test_polygons_to_bitmask_square() -> None:
    mask = polygons_to_bitmask([np.array(_square(1, 2, 5, 4))], 8, 10)
    assert mask.dtype == torch.bool and mask.shape == (8, 10)
    expected = torch.zeros(8, 10, dtype=torch.bool)
    expected[2:4, 1:5] = True  # rows y in [2, 4), columns x in [1, 5)
    assert torch.equal(mask, expected)


@pytest.mark.parametrize(("side", "count"), [(4, 6), (8, 28)])
def test_polygons_to_bitmask_triangle(side: int, count: int) -> None:
    # Right triangle x + y < side: pixel centres (j + .5, i + .5) inside iff i + j <= side - 2.
    mask = polygons_to_bitmask([[0, 0, side, 0, 0, side]], side, side)
    assert int(mask.sum()) == count == (side - 1) * side // 2
    i, j = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    assert torch.equal(mask, i + j <= side - 2)


def test_polygons_to_bitmask_union_clip_and_empty() -> None:
    mask = polygons_to_bitmask([_square(0, 0, 2, 2), _square(1, 1, 3, 3)], 4, 4)
    assert int(mask.sum()) == 4 + 4 - 1
    clipped = polygons_to_bitmask([_square(-5, -5, 2, 20)], 4, 4)
    assert int(clipped.sum()) == 2 * 4
    assert not polygons_to_bitmask([], 3, 5).any()
    assert polygons_to_bitmask([], 3, 5).shape == (3, 5)


@pytest.mark.parametrize(
    ("polygon", "match"),
    [
        ([0, 0, 1, 0, 1], "polygon 1 must have an even length >= 6"),
        ([0, 0, 1, 1], "polygon 1 must have an even length >= 6"),
        ([[0, 0], [1, 0], [1, 1]], "polygon 1 must have an even length >= 6"),
        ([0, 0, 1, float("nan"), 1, 1], "polygon 1 has non-finite"),
        ([0, 0, 1, float("inf"), 1, 1], "polygon 1 has non-finite"),
        (["a", 0, 1, 0, 1, 1], "polygon 1 is not a sequence of numbers"),
    ],
)
def test_polygons_to_bitmask_rejects_bad_polygons(polygon: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        polygons_to_bitmask([_square(0, 0, 1, 1), polygon], 4, 4)


def test_polygons_to_bitmask_rejects_bad_size() -> None:
    with pytest.raises(ValueError, match="`height` must be a positive int"):
        polygons_to_bitmask([_square(0, 0, 1, 1)], 0, 4)
    with pytest.raises(ValueError, match="`width` must be a positive int"):
        polygons_to_bitmask([_square(0, 0, 1, 1)], 4, 2.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- RLE


def test_rle_round_trip_random_empty_full() -> None:
    masks = torch.rand(5, 13, 17) > 0.5
    masks[1] = False
    masks[2] = True
    rles = rle_encode(masks)
    assert len(rles) == 5
    assert all(isinstance(r["counts"], str) and r["size"] == [13, 17] for r in rles)
    json.dumps(rles)  # serialisable as in a COCO results file
    assert torch.equal(rle_decode(rles), masks)
    assert torch.equal(rle_area(rles), masks.flatten(1).sum(1))
    # Our encoding is pycocotools' own.
    ref = mask_utils.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in rles])
    assert np.array_equal(ref.transpose(2, 0, 1), masks.numpy())


def test_rle_encode_uint8_and_empty_list() -> None:
    masks = torch.zeros(2, 4, 6, dtype=torch.uint8)
    masks[0, 1:3, 2:5] = 7  # any non-zero value is foreground
    assert torch.equal(rle_decode(rle_encode(masks)), masks != 0)
    assert rle_encode(torch.zeros(0, 4, 6, dtype=torch.bool)) == []
    empty = rle_decode([], image_size=(4, 6))
    assert empty.shape == (0, 4, 6) and empty.dtype == torch.bool
    assert rle_area([]).shape == (0,)


def test_rle_decode_uncompressed() -> None:
    # Column-major runs of a 3 x 4 mask: 2 off, 3 on, 4 off, 3 on.
    rle = {"size": [3, 4], "counts": [2, 3, 4, 3]}
    expected = torch.zeros(12, dtype=torch.bool)
    expected[2:5] = True
    expected[9:12] = True
    expected = expected.reshape(4, 3).T  # Fortran order
    assert torch.equal(rle_decode([rle])[0], expected)
    assert rle_area([rle]).tolist() == [6]
    compressed = rle_encode(expected[None])
    assert torch.equal(rle_decode([rle, compressed[0]]), torch.stack([expected, expected]))
    as_bytes = {"size": [3, 4], "counts": compressed[0]["counts"].encode()}
    assert torch.equal(rle_decode([as_bytes])[0], expected)


def test_rle_errors() -> None:
    with pytest.raises(ValueError, match="one size"):
        rle_decode([])
    with pytest.raises(ValueError, match="one size"):
        rle_decode(rle_encode(torch.zeros(1, 3, 4, dtype=torch.bool)), image_size=(4, 3))
    a = rle_encode(torch.zeros(1, 3, 4, dtype=torch.bool))
    b = rle_encode(torch.zeros(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="one size"):
        rle_decode(a + b)
    with pytest.raises(ValueError, match="uncompressed RLE 0 counts must be >= 0 and sum to 3"):
        rle_decode([{"size": [3, 4], "counts": [2, 3]}])
    with pytest.raises(ValueError, match="RLE 1 must be a dict with 'size' and 'counts'"):
        rle_area([a[0], {"counts": "x"}])
    with pytest.raises(TypeError, match="`masks` must be bool or uint8"):
        rle_encode(torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match=r"`masks` must have shape \[\*, \*, \*\]"):
        rle_encode(torch.zeros(3, 4, dtype=torch.bool))


# --------------------------------------------------------------------------- containers


def _bitmasks() -> BitMasks:
    t = torch.zeros(4, 6, 8, dtype=torch.bool)
    t[0, 2, 3] = True  # a lone pixel: row 2, column 3
    t[1, 1:4, 2:7] = True
    t[3, :, :] = True  # t[2] stays empty
    return BitMasks(t)


def _polygonmasks() -> PolygonMasks:
    return PolygonMasks(
        [
            [_square(1, 1, 3, 4)],
            [np.array([0.0, 0.0, 4.0, 0.0, 0.0, 4.0])],
            [],
            [_square(0, 0, 2, 2), _square(4, 4, 6, 5)],
        ]
    )


@pytest.mark.parametrize("make", [_bitmasks, _polygonmasks])
def test_container_indexing(make: Any) -> None:
    masks = make()
    kind = type(masks)
    assert len(masks) == 4
    selections: list[tuple[Any, list[int]]] = [
        (1, [1]),
        (-1, [3]),
        (slice(1, 3), [1, 2]),
        (torch.tensor([True, False, False, True]), [0, 3]),
        (torch.tensor([3, 0, 0]), [3, 0, 0]),
        (torch.tensor([], dtype=torch.int64), []),
    ]
    full = masks.to_bitmasks(6, 8).tensor
    for item, rows in selections:
        sub = masks[item]
        assert type(sub) is kind and len(sub) == len(rows)
        assert torch.equal(sub.to_bitmasks(6, 8).tensor, full[rows])


@pytest.mark.parametrize("make", [_bitmasks, _polygonmasks])
def test_container_index_errors(make: Any) -> None:
    masks = make()
    fn = type(masks).__name__
    with pytest.raises(IndexError, match=f"{fn}.__getitem__: index 4 out of range"):
        masks[4]
    with pytest.raises(IndexError, match="bool mask has 3 entries, expected 4"):
        masks[torch.tensor([True, False, True])]
    with pytest.raises(IndexError, match="must be bool or integer"):
        masks[torch.tensor([0.0])]
    with pytest.raises(IndexError, match="must be 1-D"):
        masks[torch.tensor([[0]])]
    with pytest.raises(TypeError, match="index must be an int, a slice or a tensor"):
        masks["a"]


@pytest.mark.parametrize("make", [_bitmasks, _polygonmasks])
def test_container_cat_and_to(make: Any) -> None:
    masks = make()
    kind = type(masks)
    both = kind.cat([masks, masks[1:3]])
    assert type(both) is kind and len(both) == 6
    full = masks.to_bitmasks(6, 8).tensor
    assert torch.equal(both.to_bitmasks(6, 8).tensor, torch.cat([full, full[1:3]]))
    moved = masks.to("cpu")
    assert type(moved) is kind and torch.equal(moved.to_bitmasks(6, 8).tensor, full)
    with pytest.raises(ValueError, match=f"{kind.__name__}.cat: need a non-empty list"):
        kind.cat([])


def test_polygonmasks_to_is_a_noop_and_cat_rejects_mixed() -> None:
    masks = _polygonmasks()
    assert masks.to("cpu") is masks
    with pytest.raises(ValueError, match="need a non-empty list of PolygonMasks"):
        PolygonMasks.cat([masks, _bitmasks()])  # type: ignore[list-item]


def test_bitmasks_area_boxes_nonempty() -> None:
    masks = _bitmasks()
    assert masks.area().tolist() == [1.0, 15.0, 0.0, 48.0]
    assert masks.area().dtype == torch.float32
    boxes = masks.bounding_boxes()
    # Pixel (i, j) spans [j, j + 1) x [i, i + 1); an empty mask gets the zero box.
    assert boxes.tolist() == [[3, 2, 4, 3], [2, 1, 7, 4], [0, 0, 0, 0], [0, 0, 8, 6]]
    assert masks.nonempty().tolist() == [True, True, False, True]
    assert masks.image_size == (6, 8)
    assert masks.to_bitmasks(6, 8) is masks
    empty = BitMasks(torch.zeros(0, 6, 8, dtype=torch.bool))
    assert empty.bounding_boxes().shape == (0, 4) and empty.area().shape == (0,)


def test_polygonmasks_area_boxes_nonempty() -> None:
    masks = _polygonmasks()
    # Shoelace areas, summed over the polygons of an instance.
    assert masks.area().tolist() == [6.0, 8.0, 0.0, 4.0 + 2.0]
    boxes = masks.bounding_boxes()
    assert boxes.tolist() == [[1, 1, 3, 4], [0, 0, 4, 4], [0, 0, 0, 0], [0, 0, 6, 5]]
    assert masks.nonempty().tolist() == [True, True, False, True]
    # Rasterising an axis-aligned, integer-cornered polygon gives the same tight box.
    bitmask_boxes = masks.to_bitmasks(6, 8).bounding_boxes()
    assert torch.equal(bitmask_boxes[[0, 2, 3]], boxes[[0, 2, 3]])
    # Overlapping polygons count twice in area() (detectron2), once in the raster.
    overlap = PolygonMasks([[_square(0, 0, 2, 2), _square(0, 0, 2, 2)]])
    assert overlap.area().tolist() == [8.0]
    assert overlap.to_bitmasks(4, 4).area().tolist() == [4.0]
    assert PolygonMasks([]).to_bitmasks(3, 4).tensor.shape == (0, 3, 4)


def test_container_construction_errors() -> None:
    with pytest.raises(ValueError, match="polygon 1 of instance 2 must have an even length"):
        PolygonMasks([[], [_square(0, 0, 1, 1)], [_square(0, 0, 1, 1), [0, 0, 1, 1]]])
    with pytest.raises(ValueError, match="polygon 0 of instance 0 has non-finite"):
        PolygonMasks([[[0, 0, 1, 0, float("nan"), 1]]])
    with pytest.raises(TypeError, match="instance 1 must be a list"):
        PolygonMasks([[], np.zeros(6)])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="PolygonMasks: expected a list"):
        PolygonMasks(np.zeros((1, 1, 6)))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`tensor` must be bool or uint8"):
        BitMasks(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="`tensor` must have shape"):
        BitMasks(torch.zeros(2, 2, dtype=torch.bool))
    assert BitMasks(torch.full((1, 2, 2), 3, dtype=torch.uint8)).tensor.all()
    with pytest.raises(ValueError, match="one image size"):
        BitMasks.cat([_bitmasks(), BitMasks(torch.zeros(1, 5, 5, dtype=torch.bool))])
    with pytest.raises(ValueError, match=r"size is \(6, 8\), not \(6, 9\)"):
        _bitmasks().to_bitmasks(6, 9)


# --------------------------------------------------------------------------- crop_and_resize


def _inside_polygon(px: np.ndarray, py: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon test, vectorised over points (independent of pycocotools)."""
    xs, ys = poly[0::2], poly[1::2]
    inside = np.zeros(px.shape, dtype=bool)
    for k in range(len(xs)):
        xa, ya, xb, yb = xs[k], ys[k], xs[k - 1], ys[k - 1]
        crosses = (ya > py) != (yb > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = xa + (py - ya) * (xb - xa) / (yb - ya)
        inside ^= crosses & (px < x_at)
    return inside


def test_polygon_crop_and_resize_hand_cases() -> None:
    masks = PolygonMasks([[_square(10, 20, 30, 60)], [_square(10, 20, 20, 60)]])
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0], [10.0, 20.0, 30.0, 60.0]])
    out = masks.crop_and_resize(boxes, 8)
    assert out.shape == (2, 8, 8) and out.dtype == torch.float32
    assert torch.equal(out[0], torch.ones(8, 8))  # polygon == box: all ones
    left = torch.zeros(8, 8)
    left[:, :4] = 1.0
    assert torch.equal(out[1], left)  # left half of the box
    # Rows of boxes are matched to instances: swapping both swaps the targets.
    swapped = masks[torch.tensor([1, 0])].crop_and_resize(boxes.flip(0), 8)
    assert torch.equal(swapped, out.flip(0))
    # A box twice the size of the polygon, polygon in the top-left quarter.
    quarter = masks[0].crop_and_resize(torch.tensor([[10.0, 20.0, 50.0, 100.0]]), 6)
    expected = torch.zeros(6, 6)
    expected[:3, :3] = 1.0
    assert torch.equal(quarter[0], expected)
    empty = PolygonMasks([]).crop_and_resize(torch.zeros(0, 4), 7)
    assert empty.shape == (0, 7, 7)
    no_polygon = PolygonMasks([[]]).crop_and_resize(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), 5)
    assert not no_polygon.any()


def test_polygon_crop_and_resize_matches_bin_centre_sampling() -> None:
    poly = np.array([13.3, 7.1, 61.7, 19.4, 40.2, 55.9, 18.5, 33.3])
    box = (10.0, 5.0, 64.5, 60.25)
    m = 28
    out = PolygonMasks([[poly]]).crop_and_resize(torch.tensor([box]), m)[0].numpy()
    x1, y1, x2, y2 = box
    centres = (np.arange(m) + 0.5) / m
    px, py = np.meshgrid(x1 + centres * (x2 - x1), y1 + centres * (y2 - y1))
    expected = _inside_polygon(px, py, poly)
    assert expected.sum() > 100
    assert (out.astype(bool) != expected).mean() < 0.02  # only boundary cells may differ


def test_crop_and_resize_errors() -> None:
    masks = _polygonmasks()
    with pytest.raises(ValueError, match="got 2 boxes for 4 masks"):
        masks.crop_and_resize(torch.zeros(2, 4), 7)
    with pytest.raises(ValueError, match="`mask_size` must be a positive int"):
        masks.crop_and_resize(torch.zeros(4, 4), 0)
    with pytest.raises(ValueError, match="x2 >= x1"):
        masks.crop_and_resize(torch.tensor([[5.0, 0.0, 1.0, 1.0]] * 4), 7)
    with pytest.raises(ValueError, match="got 2 boxes for 4 masks"):
        _bitmasks().crop_and_resize(torch.zeros(2, 4), 7)


def test_bitmask_crop_and_resize() -> None:
    t = torch.zeros(2, 40, 50, dtype=torch.bool)
    t[0, 8:24, 10:42] = True
    t[1, 8:24, 10:26] = True  # left half of the same box
    boxes = torch.tensor([[10.0, 8.0, 42.0, 24.0], [10.0, 8.0, 42.0, 24.0]])
    out = BitMasks(t).crop_and_resize(boxes, 8)
    assert out.shape == (2, 8, 8) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], torch.ones(8, 8))
    torch.testing.assert_close(out[1, :, :4], torch.ones(8, 4))
    torch.testing.assert_close(out[1, :, 4:], torch.zeros(8, 4))
    # A box larger than the mask: only bins inside the mask are ~1, and it stays in [0, 1].
    wide = BitMasks(t[:1]).crop_and_resize(torch.tensor([[2.0, 0.0, 50.0, 32.0]]), 12)[0]
    assert wide.min() >= 0 and wide.max() <= 1 + 1e-6
    assert wide[4, 4] > 0.99 and wide[0, 0] < 0.01
    assert BitMasks(t[:0]).crop_and_resize(torch.zeros(0, 4), 7).shape == (0, 7, 7)


# --------------------------------------------------------------------------- real COCO data


@pytest.mark.parametrize("rel", [FRUITS, COCO_KPTS])
def test_polygons_match_pycocotools_on_real_data(shared_datasets: Path, rel: Path) -> None:
    coco = _load_coco(shared_datasets, rel)
    anns = coco.dataset["annotations"]
    assert len(anns) > 10
    for ann in anns:
        img = coco.imgs[ann["image_id"]]
        h, w = img["height"], img["width"]
        ours = polygons_to_bitmask(ann["segmentation"], h, w)
        assert np.array_equal(ours.numpy(), coco.annToMask(ann).astype(bool)), ann["id"]
        assert int(ours.sum()) == int(mask_utils.area(coco.annToRLE(ann))), ann["id"]
    polys = PolygonMasks([a["segmentation"] for a in anns])
    # The JSON `area` of these files is the polygon (shoelace) area; float32 keeps ~7 digits.
    json_area = torch.tensor([a["area"] for a in anns], dtype=torch.float64)
    torch.testing.assert_close(polys.area().double(), json_area, rtol=1e-6, atol=1e-3)


def test_polygon_and_bitmask_targets_agree_on_fruits_nuts(shared_datasets: Path) -> None:
    coco = _load_coco(shared_datasets, FRUITS)
    for img_id in list(coco.imgs)[:4]:
        img = coco.imgs[img_id]
        anns = coco.imgToAnns[img_id]
        polys = PolygonMasks([a["segmentation"] for a in anns])
        bits = polys.to_bitmasks(img["height"], img["width"])
        # Boxes slightly larger than the tight polygon box, as proposals would be.
        boxes = polys.bounding_boxes() + torch.tensor([-3.0, -2.0, 4.0, 1.5])
        a = polys.crop_and_resize(boxes, 28) >= 0.5
        b = bits.crop_and_resize(boxes, 28) >= 0.5
        iou = (a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1)
        assert bool((iou > 0.9).all()), iou
