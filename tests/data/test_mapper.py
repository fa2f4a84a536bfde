"""DatasetMapper on tiny images written to tmp_path, and on a few real fruits_nuts records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from detforge.data.augmentation import Augmentation, RandomCrop, RandomFlip, ResizeShortestEdge
from detforge.data.errors import DataError
from detforge.data.mapper import DatasetMapper, read_image
from detforge.data.transforms import Transform
from detforge.data.transforms_crop import CropTransform
from detforge.structures.masks import BitMasks, PolygonMasks, polygons_to_bitmask, rle_encode

H, W = 20, 30


def _rgb_image() -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 2] = 50
    img[2:8, 4:12] = (200, 10, 20)  # a red block at x in [4, 12), y in [2, 8)
    return img


def _record(path: Path, annotations: list[dict] | None = None) -> dict:
    Image.fromarray(_rgb_image()).save(path)
    rec = {"file_name": str(path), "height": H, "width": W, "image_id": 7}
    if annotations is not None:
        rec["annotations"] = annotations
    return rec


def _ann(box: list[float], label: int = 0, crowd: int = 0, **extra: object) -> dict:
    return {"bbox": box, "category_id": label, "iscrowd": crowd, **extra}


def _square(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    return [x1, y1, x2, y1, x2, y2, x1, y2]


def test_train_drops_crowd_and_empty_boxes_rgb_bgr(tmp_path: Path) -> None:
    anns = [
        _ann([4, 2, 12, 8], 1),
        _ann([0, 0, 10, 10], 2, crowd=1),
        _ann([5, 5, 5, 9], 0),  # zero width
    ]
    rec = _record(tmp_path / "a.png", anns)
    rgb = DatasetMapper([], is_train=True, image_format="RGB")(rec, np.random.default_rng(0))
    assert rgb["image"].dtype == torch.uint8 and rgb["image"].shape == (3, H, W)
    assert rgb["image"][:, 3, 5].tolist() == [200, 10, 20]
    assert (rgb["height"], rgb["width"], rgb["image_id"]) == (H, W, 7)
    inst = rgb["instances"]
    assert inst.image_size == (H, W) and len(inst) == 1
    assert inst.boxes.dtype == torch.float32 and inst.boxes.tolist() == [[4, 2, 12, 8]]
    assert inst.labels.dtype == torch.int64 and inst.labels.tolist() == [1]
    assert inst.masks is None and inst.keypoints is None
    bgr = DatasetMapper([], is_train=True)(rec, np.random.default_rng(0))
    assert bgr["image"][:, 3, 5].tolist() == [20, 10, 200]
    torch.testing.assert_close(bgr["image"], rgb["image"].flip(0))
    assert rec["annotations"][2]["bbox"] == [5, 5, 5, 9]  # the record is not modified


def test_eval_keeps_everything_and_flags_crowd(tmp_path: Path) -> None:
    anns = [_ann([4, 2, 12, 8], 1), _ann([0, 0, 10, 10], 2, crowd=1), _ann([5, 5, 5, 9])]
    rec = _record(tmp_path / "a.png", anns)
    out = DatasetMapper([], is_train=False)(rec, np.random.default_rng(0))
    assert len(out["instances"]) == 3
    assert out["instances"].extras["iscrowd"].tolist() == [0, 1, 0]
    no_anns = _record(tmp_path / "b.png")
    assert "instances" not in DatasetMapper([], is_train=False)(no_anns, np.random.default_rng(0))


def test_flip_and_resize_move_boxes_and_image(tmp_path: Path) -> None:
    rec = _record(tmp_path / "a.png", [_ann([4, 2, 12, 8], 1)])
    mapper = DatasetMapper(
        [ResizeShortestEdge(40, interp="nearest"), RandomFlip(1.0)],
        is_train=True,
        image_format="RGB",
    )
    out = mapper(rec, np.random.default_rng(0))
    assert out["image"].shape == (3, 40, 60)
    assert out["instances"].boxes.tolist() == [[36, 4, 52, 16]]  # x: 60 - 2 * 12, 60 - 2 * 4
    red = (out["image"][0] > 150) & (out["image"][1] < 60)
    ys, xs = torch.nonzero(red, as_tuple=True)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (36, 52, 4, 16)
    back = out["transforms"].inverse().apply_boxes(out["instances"].boxes.numpy())
    np.testing.assert_allclose(back, [[4, 2, 12, 8]])


def test_mask_formats_polygon_bitmask_rle(tmp_path: Path) -> None:
    rle_mask = torch.zeros((1, H, W), dtype=torch.bool)
    rle_mask[0, 10:15, 20:28] = True
    anns = [
        _ann([4, 2, 12, 8], 1, segmentation=[_square(4, 2, 12, 8)]),
        _ann([20, 10, 28, 15], 2, crowd=1, segmentation=rle_encode(rle_mask)[0]),
    ]
    rec = _record(tmp_path / "a.png", anns)
    rng = np.random.default_rng(0)
    flip = [RandomFlip(1.0)]
    poly = DatasetMapper(flip, is_train=True, use_masks=True)(rec, rng)["instances"]
    assert isinstance(poly.masks, PolygonMasks) and len(poly) == 1
    np.testing.assert_array_equal(poly.masks.polygons[0][0], _square(26, 2, 18, 8))
    bit = DatasetMapper(flip, is_train=False, use_masks=True, mask_format="bitmask")(rec, rng)
    masks = bit["instances"].masks
    assert isinstance(masks, BitMasks) and masks.tensor.shape == (2, H, W)
    expected = torch.zeros((2, H, W), dtype=torch.bool)
    expected[0, 2:8, 18:26] = True
    expected[1, 10:15, 2:10] = True  # the RLE, flipped: columns 30 - 28 .. 30 - 20
    torch.testing.assert_close(masks.tensor, expected)
    with pytest.raises(DataError, match=r"a.png: image 7: annotation 1: field `segmentation`"):
        DatasetMapper([], is_train=False, use_masks=True)(rec, rng)


def test_crop_drops_instances_outside_and_recomputes_boxes(tmp_path: Path) -> None:
    tri = [4.0, 2.0, 12.0, 2.0, 4.0, 10.0]  # box (4, 2, 12, 10); the lower right is empty
    anns = [
        _ann([4, 2, 12, 10], 0, segmentation=[tri]),
        _ann([24, 14, 29, 19], 1, segmentation=[_square(24, 14, 29, 19)]),
    ]
    rec = _record(tmp_path / "a.png", anns)
    crop = RandomCrop("absolute", (20, 20))  # height 20: only x0 in [0, 10] is random
    for mask_format in ("polygon", "bitmask"):
        mapper = DatasetMapper(
            [crop], is_train=True, use_masks=True, mask_format=mask_format, recompute_boxes=True
        )
        for seed in range(6):
            out = mapper(rec, np.random.default_rng(seed))
            x0 = out["transforms"].transforms[0].x0
            inst = out["instances"]
            assert len(inst) == (2 if x0 > 4 else 1)  # the square survives only when in view
            if x0 <= 4:  # the triangle is whole: its recomputed box is its own
                assert inst.boxes[0].tolist() == [4 - x0, 2, 12 - x0, 10]


class _FixedCrop(Augmentation):
    def __init__(self, x0: int, y0: int, size: int) -> None:
        self.x0, self.y0, self.size = x0, y0, size

    def get_transform(self, image: np.ndarray, rng: np.random.Generator) -> Transform:
        return CropTransform(x0=self.x0, y0=self.y0, w=self.size, h=self.size)


def test_box_kept_but_mask_cropped_away_is_dropped(tmp_path: Path) -> None:
    tri = [4.0, 2.0, 12.0, 2.0, 4.0, 10.0]  # hypotenuse x + y = 14
    rec = _record(tmp_path / "a.png", [_ann([4, 2, 12, 10], 0, segmentation=[tri])])
    rng = np.random.default_rng(0)
    for fmt in ("polygon", "bitmask"):
        corner = [_FixedCrop(9, 7, 4)]  # overlaps the box, not the triangle
        train = DatasetMapper(corner, is_train=True, use_masks=True, mask_format=fmt)(rec, rng)
        assert len(train["instances"]) == 0
        test = DatasetMapper(corner, is_train=False, use_masks=True, mask_format=fmt)(rec, rng)
        assert test["instances"].boxes.tolist() == [[0, 0, 3, 3]]
        inside = [_FixedCrop(4, 2, 4)]
        out = DatasetMapper(inside, is_train=True, use_masks=True, mask_format=fmt)(rec, rng)
        assert len(out["instances"]) == 1


def test_keypoints_flip_swap_and_unlabelled(tmp_path: Path) -> None:
    kps = [3.5, 4.5, 2, 10.5, 4.5, 1, 0, 0, 0]  # left, right, an unlabelled point
    anns = [_ann([2, 2, 12, 8], 0, keypoints=kps), _ann([14, 2, 20, 8], 0)]
    rec = _record(tmp_path / "a.png", anns)
    mapper = DatasetMapper(
        [RandomFlip(1.0)], is_train=True, use_keypoints=True, keypoint_flip_pairs=[(0, 1)]
    )
    out = mapper(rec, np.random.default_rng(0))["instances"].keypoints
    assert out.dtype == torch.float32 and out.shape == (2, 3, 3)
    assert out[0].tolist() == [[19.5, 4.5, 1.0], [26.5, 4.5, 2.0], [0.0, 0.0, 0.0]]
    assert out[1].abs().sum() == 0  # no keypoints in the annotation: all unlabelled
    crop = DatasetMapper([RandomCrop("absolute", (20, 8))], is_train=True, use_keypoints=True)
    for seed in range(5):
        res = crop(rec, np.random.default_rng(seed))
        x0 = res["transforms"].transforms[0].x0
        got = res["instances"].keypoints[0, 1].tolist()
        assert got == ([10.5 - x0, 4.5, 1.0] if 0 <= 10.5 - x0 <= 8 else [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="keypoint_flip_pairs"):
        DatasetMapper([], is_train=True, use_keypoints=True, keypoint_flip_pairs=[(0, 5)])(
            rec, np.random.default_rng(0)
        )


def test_image_errors_name_the_file(tmp_path: Path) -> None:
    rec = _record(tmp_path / "a.png", [])
    mapper = DatasetMapper([], is_train=True)
    bad_size = {**rec, "height": W, "width": H}
    with pytest.raises(DataError, match=r"a.png: image 7: .*30x20.*swapped") as e:
        mapper(bad_size, np.random.default_rng(0))
    assert e.value.kind == "image_size_mismatch"
    Image.fromarray(_rgb_image()).save(tmp_path / "t.jpg", quality=95)
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t.jpg: cannot decode") as e:
        mapper({**rec, "file_name": str(tmp_path / "t.jpg")}, np.random.default_rng(0))
    assert e.value.kind == "unreadable_image"
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="junk.png"):
        read_image(str(tmp_path / "junk.png"))
    with pytest.raises(DataError, match="missing.png") as e:
        read_image(str(tmp_path / "missing.png"))
    assert e.value.kind == "missing_image"


def test_bad_annotations_name_record_annotation_field(tmp_path: Path) -> None:
    mapper = DatasetMapper([], is_train=True, use_masks=True)
    cases = [
        (_ann([1, 2, 3]), "field `bbox`: must be 4"),
        (_ann([5, 2, 3, 4]), "field `bbox`: xyxy"),
        (_ann([1, 2, 3, 4], label=-1), "field `category_id`"),
        (_ann([1, 2, 3, 4], segmentation=[[1, 2, 3]]), "field `segmentation`.*even"),
        (_ann([1, 2, 3, 4]), "field `segmentation`: must be polygons"),
    ]
    for ann, message in cases:
        rec = _record(tmp_path / "a.png", [ann])
        with pytest.raises(DataError, match=r"a.png: image 7: annotation 0: .*" + message):
            mapper(rec, np.random.default_rng(0))
    with pytest.raises(DataError, match="field `height`"):
        mapper({**_record(tmp_path / "a.png"), "height": 0}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="mask_format"):
        DatasetMapper([], is_train=True, mask_format="rle")  # type: ignore[arg-type]


def test_exif_grayscale_and_rgba(tmp_path: Path) -> None:
    img = Image.fromarray(_rgb_image())
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: displayed rotated by 90 degrees clockwise
    img.save(tmp_path / "e.jpg", exif=exif, quality=100)
    with Image.open(tmp_path / "e.jpg") as f:
        upright = np.asarray(ImageOps.exif_transpose(f).convert("RGB"))
    assert upright.shape == (W, H, 3)
    rec = {"file_name": str(tmp_path / "e.jpg"), "height": W, "width": H, "image_id": 1}
    out = DatasetMapper([], is_train=False, image_format="RGB")(rec, np.random.default_rng(0))
    torch.testing.assert_close(out["image"], torch.from_numpy(upright.transpose(2, 0, 1).copy()))
    Image.fromarray(np.full((H, W), 77, np.uint8)).save(tmp_path / "g.png")
    assert (read_image(str(tmp_path / "g.png")) == 77).all()
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 99, 0
    Image.fromarray(rgba).save(tmp_path / "r.png")
    np.testing.assert_array_equal(read_image(str(tmp_path / "r.png"))[0, 0], [99, 0, 0])
    Image.fromarray(np.zeros((H, W), np.uint16)).save(tmp_path / "d.png")
    with pytest.raises(DataError, match="16-bit"):
        read_image(str(tmp_path / "d.png"))


def test_mapper_is_deterministic_per_seed(tmp_path: Path) -> None:
    rec = _record(tmp_path / "a.png", [_ann([4, 2, 12, 8], 1, segmentation=[_square(4, 2, 12, 8)])])
    mapper = DatasetMapper(
        [ResizeShortestEdge((10, 50)), RandomFlip()],
        is_train=True,
        use_masks=True,
        mask_format="bitmask",
    )
    a, b = (mapper(rec, np.random.default_rng(3)) for _ in range(2))
    torch.testing.assert_close(a["image"], b["image"])
    torch.testing.assert_close(a["instances"].boxes, b["instances"].boxes)


def test_fruits_nuts_masks_and_boxes_agree(shared_datasets: Path) -> None:
    root = shared_datasets / "fruits_nuts" / "data"
    coco = json.loads((root / "trainval.json").read_text())
    contiguous = {
        c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))
    }
    records = []
    for img in coco["images"][:3]:
        anns = [
            {
                "bbox": [
                    a["bbox"][0],
                    a["bbox"][1],
                    a["bbox"][0] + a["bbox"][2],
                    a["bbox"][1] + a["bbox"][3],
                ],
                "category_id": contiguous[a["category_id"]],
                "iscrowd": a["iscrowd"],
                "segmentation": a["segmentation"],
            }
            for a in coco["annotations"]
            if a["image_id"] == img["id"]
        ]
        records.append(
            {
                "file_name": str(root / "images" / img["file_name"]),
                "height": img["height"],
                "width": img["width"],
                "image_id": img["id"],
                "annotations": anns,
            }
        )
    mapper = DatasetMapper(
        [ResizeShortestEdge((200, 300), max_size=500), RandomFlip()],
        is_train=True,
        use_masks=True,
        mask_format="bitmask",
    )
    for seed, rec in enumerate(records):
        out = mapper(rec, np.random.default_rng(seed))
        inst = out["instances"]
        assert len(inst) == len(rec["annotations"]) > 0
        assert inst.masks.tensor.shape[1:] == out["image"].shape[1:]
        scale = out["image"].shape[1] / rec["height"]
        tight = inst.masks.bounding_boxes()
        assert (tight - inst.boxes).abs().max() <= 1.0 + 1.5 * scale
        polys = PolygonMasks(
            [[np.asarray(p) for p in a["segmentation"]] for a in rec["annotations"]]
        )
        # the transformed bitmasks agree with the polygons transformed and then rasterised
        tl = out["transforms"]
        for k, inst_polys in enumerate(polys.polygons):
            raster = polygons_to_bitmask(tl.apply_polygons(inst_polys), *inst.image_size)
            inter = (raster & inst.masks.tensor[k]).sum()
            union = (raster | inst.masks.tensor[k]).sum()
            assert inter / union > 0.97
