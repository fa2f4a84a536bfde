"""COCO JSON loading: agreement with pycocotools on real data, and every bad-data case."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image
from pycocotools.coco import COCO

from detforge.data.datasets.coco import coco_categories, load_coco_json, load_coco_metadata
from detforge.data.errors import DataError, DataReport
from detforge.structures.masks import polygons_to_bitmask, rle_decode

FRUITS = ("fruits_nuts/data/trainval.json", "fruits_nuts/data/images")
KPTS = (
    "coco_kpts_mmpose_sample/tests/data/coco/test_coco.json",
    "coco_kpts_mmpose_sample/tests/data/coco",
)


def _decode(segm: Any, h: int, w: int) -> np.ndarray:
    """Our record's segmentation rasterised through detforge.structures.masks."""
    if isinstance(segm, list):
        return polygons_to_bitmask(segm, h, w).numpy()
    return rle_decode([segm], (h, w))[0].numpy()


def _compare_with_pycocotools(json_file: Path, image_root: Path) -> list[dict[str, Any]]:
    report = DataReport()
    records = load_coco_json(json_file, image_root, report=report, check_image_sizes=True)
    assert len(report) == 0, report.summary()
    coco = COCO(str(json_file))
    assert len(records) == len(coco.getImgIds())
    assert sum(len(r["annotations"]) for r in records) == len(coco.getAnnIds())
    cat_ids = sorted(coco.getCatIds())
    for rec in records:
        info = coco.loadImgs(rec["image_id"])[0]
        assert (rec["height"], rec["width"]) == (info["height"], info["width"])
        assert rec["file_name"] == str(image_root / info["file_name"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[rec["image_id"]]))
        assert [a["id"] for a in anns] == [a["id"] for a in rec["annotations"]]
        for ours, ref in zip(rec["annotations"], anns, strict=True):
            x, y, w, h = ref["bbox"]
            assert ours["bbox"] == [x, y, x + w, y + h]
            assert ours["area"] == ref["area"]
            assert ours["category_id"] == cat_ids.index(ref["category_id"])
            assert ours["iscrowd"] == ref["iscrowd"]
            mask = _decode(ours["segmentation"], rec["height"], rec["width"])
            np.testing.assert_array_equal(mask, coco.annToMask(ref).astype(bool))
    return records


def test_fruits_nuts_matches_pycocotools(shared_datasets: Path) -> None:
    records = _compare_with_pycocotools(*(shared_datasets / p for p in FRUITS))
    assert records[0]["image_id"] == 0  # ids start at 0
    assert len(records) == 18 and sum(len(r["annotations"]) for r in records) == 165
    meta = load_coco_metadata(shared_datasets / FRUITS[0])
    assert meta.class_names == ("date", "fig", "hazelnut")
    assert meta.dataset_id_to_contiguous == {1: 0, 2: 1, 3: 2}
    assert meta.keypoint_names == () and meta.skeleton == ()


def test_coco_keypoints_match_pycocotools(shared_datasets: Path) -> None:
    json_file = shared_datasets / KPTS[0]
    records = _compare_with_pycocotools(json_file, shared_datasets / KPTS[1])
    coco = COCO(str(json_file))
    n_labelled = 0
    for rec in records:
        for ours in rec["annotations"]:
            ref = np.asarray(coco.loadAnns(ours["id"])[0]["keypoints"], dtype=float).reshape(-1, 3)
            got = np.asarray(ours["keypoints"]).reshape(-1, 3)
            labelled = ref[:, 2] > 0
            n_labelled += int(labelled.any())
            np.testing.assert_array_equal(got[labelled, :2], ref[labelled, :2] + 0.5)
            np.testing.assert_array_equal(got[~labelled, :2], 0.0)
            np.testing.assert_array_equal(got[:, 2], ref[:, 2])
    assert n_labelled == 12  # README: 12 of the 14 persons have labelled keypoints
    meta = load_coco_metadata(json_file)
    cat = coco.loadCats(1)[0]
    assert meta.keypoint_names == tuple(cat["keypoints"]) and len(meta.keypoint_names) == 17
    assert meta.skeleton == tuple((a - 1, b - 1) for a, b in cat["skeleton"])


# ---------------------------------------------------------------------------------------------
# Synthetic files


def _image(iid: int = 5, h: int = 20, w: int = 30) -> dict[str, Any]:
    return {"id": iid, "file_name": f"{iid}.jpg", "height": h, "width": w}


def _ann(aid: int = 1, **kw: Any) -> dict[str, Any]:
    ann = {"id": aid, "image_id": 5, "category_id": 3, "bbox": [2, 3, 10, 5], "iscrowd": 0}
    ann.update(kw)
    return ann


def _write(tmp_path: Path, data: dict[str, Any] | str, name: str = "ann.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _dataset(anns: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    cats = [{"id": 3, "name": "cat"}, {"id": 1, "name": "ant"}]
    return {"images": [_image(), _image(0)], "categories": cats, "annotations": anns, **extra}


def test_conversion_and_contiguous_ids(tmp_path: Path) -> None:
    anns = [_ann(1), _ann(2, category_id=1, bbox=[0.5, 1.5, 2.0, 3.0], area=6.0)]
    path = _write(tmp_path, _dataset(anns))
    records = load_coco_json(path, tmp_path / "imgs")
    assert [r["image_id"] for r in records] == [5, 0]  # file order, id 0 kept
    assert records[1]["annotations"] == []  # image without annotations kept
    a, b = records[0]["annotations"]
    assert a == {"bbox": [2.0, 3.0, 12.0, 8.0], "category_id": 1, "iscrowd": 0, "id": 1}
    assert b["bbox"] == [0.5, 1.5, 2.5, 4.5] and b["category_id"] == 0 and b["area"] == 6.0
    assert records[0]["file_name"] == str(tmp_path / "imgs" / "5.jpg")
    meta = coco_categories(json.loads(path.read_text()))
    assert meta.class_names == ("ant", "cat") and meta.dataset_id_to_contiguous == {1: 0, 3: 1}


def test_keypoints_and_extra_keys(tmp_path: Path) -> None:
    data = _dataset([_ann(keypoints=[3, 4, 2, 0, 0, 0, 7, 1, 1], note="x", other=1)])
    data["categories"][0]["keypoints"] = ["a", "b", "c"]
    path = _write(tmp_path, data)
    (rec, _) = load_coco_json(path, tmp_path, extra_annotation_keys=("note",))
    ann = rec["annotations"][0]
    assert ann["keypoints"] == [3.5, 4.5, 2.0, 0.0, 0.0, 0.0, 7.5, 1.5, 1.0]
    assert ann["note"] == "x" and "other" not in ann


def test_rle_compressed_uncompressed_and_crowd(tmp_path: Path) -> None:
    h, w = 4, 5
    expected = np.zeros((h, w), dtype=np.uint8)
    expected[1:3, 1:4] = 1
    # Column-major runs, by hand: 5 zeros, then (2 ones, 2 zeros) x 2, 2 ones, 5 zeros.
    uncompressed = {"size": [h, w], "counts": [5, 2, 2, 2, 2, 2, 5]}
    compressed = mask_utils.encode(np.asfortranarray(expected))
    compressed = {"size": [h, w], "counts": compressed["counts"].decode()}
    anns = [
        _ann(1, bbox=[1, 1, 3, 2], iscrowd=1, segmentation=uncompressed),
        _ann(2, bbox=[1, 1, 3, 2], iscrowd=0, segmentation=compressed),
    ]
    data = _dataset(anns)
    data["images"][0].update(height=h, width=w)
    records = load_coco_json(_write(tmp_path, data), tmp_path, strict=True)
    crowd, plain = records[0]["annotations"]
    assert crowd["iscrowd"] == 1 and plain["iscrowd"] == 0
    assert crowd["segmentation"]["counts"] == [5, 2, 2, 2, 2, 2, 5]
    assert isinstance(plain["segmentation"]["counts"], str)
    for ann in (crowd, plain):
        np.testing.assert_array_equal(_decode(ann["segmentation"], h, w), expected.astype(bool))


def test_missing_annotations_key_gives_empty_records(tmp_path: Path) -> None:
    data = _dataset([])
    del data["annotations"]
    records = load_coco_json(_write(tmp_path, data), tmp_path, strict=True)
    assert [r["annotations"] for r in records] == [[], []]


# Each case: annotations, the problem kind, the field, how many annotations remain.
BAD_ANNOTATIONS = {
    "unknown_image": ([_ann(image_id=99)], "unknown_image", "image_id", 0),
    "unknown_category": ([_ann(category_id=2)], "unknown_category", "category_id", 0),
    "negative_width": ([_ann(bbox=[2, 3, -4, 5])], "invalid_bbox", "bbox", 0),
    "nan_bbox": ([_ann(bbox=[2, math.nan, 4, 5])], "invalid_bbox", "bbox", 0),
    "short_bbox": ([_ann(bbox=[2, 3, 4])], "invalid_bbox", "bbox", 0),
    "zero_area": ([_ann(bbox=[2, 3, 0, 5])], "empty_bbox", "bbox", 0),
    "outside": ([_ann(bbox=[-5, 3, 10, 50])], "bbox_outside_image", "bbox", 1),
    "duplicate_id": ([_ann(7), _ann(7)], "duplicate_annotation_id", "id", 2),
    "keypoints_length": ([_ann(keypoints=[1, 2, 2, 3])], "keypoints_length", "keypoints", 0),
    "short_polygon": (
        [_ann(segmentation=[[1, 1, 5, 1], [1, 1, 5, 1, 5, 5]])],
        "short_polygon",
        "segmentation",
        1,
    ),
    "rle_size": (
        [_ann(segmentation={"size": [2, 2], "counts": [4]})],
        "invalid_segmentation",
        "segmentation",
        0,
    ),
    "rle_sum": (
        [_ann(segmentation={"size": [20, 30], "counts": [5, 2]})],
        "invalid_segmentation",
        "segmentation",
        0,
    ),
    # Ids that are containers (once `TypeError: unhashable type`), bools or missing.
    "category_id_list": ([_ann(category_id=[3])], "invalid_id", "category_id", 0),
    "category_id_dict": ([_ann(category_id={"id": 3})], "invalid_id", "category_id", 0),
    "category_id_bool": ([_ann(category_id=True)], "invalid_id", "category_id", 0),
    "category_id_missing": ([_ann(category_id=None)], "invalid_id", "category_id", 0),
    "image_id_list": ([_ann(image_id=[5])], "invalid_id", "image_id", 0),
    "image_id_dict": ([_ann(image_id={"id": 5})], "invalid_id", "image_id", 0),
    "id_list": ([_ann([1])], "invalid_id", "id", 1),  # kept, without its id
    "id_dict": ([_ann({"a": 1})], "invalid_id", "id", 1),
    # Numbers Python reads but no float holds (once `OverflowError`).
    "huge_int_bbox": ([_ann(bbox=[10**400, 3, 10, 5])], "invalid_bbox", "bbox", 0),
    "huge_int_polygon": (
        [_ann(segmentation=[[1, 1, 5, 1, 5, 10**400], [1, 1, 5, 1, 5, 5]])],
        "invalid_polygon",
        "segmentation",
        1,
    ),
    # A vertex at 1e8 once crashed the mapper: pycocotools' rasteriser segfaults.
    "polygon_far_outside": (
        [_ann(segmentation=[[1, 1, 1e8, 1, 5, 5], [1, 1, 5, 1, 5, 5]])],
        "invalid_polygon",
        "segmentation",
        1,
    ),
    # Segmentations that give an empty mask (once dropped silently by the mapper).
    "polygon_outside": (
        [_ann(segmentation=[[31, 1, 40, 1, 40, 9], [1, 1, 5, 1, 5, 5]])],  # x >= width 30
        "polygon_outside_image",
        "segmentation",
        1,
    ),
    "rle_empty": (
        [_ann(segmentation={"size": [20, 30], "counts": [600]})],
        "empty_segmentation",
        "segmentation",
        0,
    ),
    "rle_empty_compressed": (
        [_ann(segmentation={"size": [20, 30], "counts": "hb0"})],  # 600 zeros
        "empty_segmentation",
        "segmentation",
        0,
    ),
    # Compressed counts pycocotools would decode to uninitialised or out-of-bounds memory.
    "rle_short_compressed": (
        [_ann(segmentation={"size": [20, 30], "counts": "0"})],
        "invalid_segmentation",
        "segmentation",
        0,
    ),
    "rle_truncated_compressed": (
        [_ann(segmentation={"size": [20, 30], "counts": "h"})],  # a run cut short
        "invalid_segmentation",
        "segmentation",
        0,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ANNOTATIONS))
def test_bad_annotation_lenient_and_strict(tmp_path: Path, case: str) -> None:
    anns, kind, field, remaining = BAD_ANNOTATIONS[case]
    path = _write(tmp_path, _dataset(anns), name=f"{case}.json")
    report = DataReport()
    records = load_coco_json(path, tmp_path, report=report)
    assert report.counts == {kind: 1}
    assert sum(len(r["annotations"]) for r in records) == remaining
    with pytest.raises(DataError) as info:
        load_coco_json(path, tmp_path, strict=True)
    err = info.value
    assert err.kind == kind and err.field == field and err.path == str(path)
    assert str(err).startswith(f"{path}: ") and f"field `{field}`" in str(err)
    assert f"annotation {len(anns) - 1}" in str(err)


def test_outside_box_is_clipped(tmp_path: Path) -> None:
    path = _write(
        tmp_path, _dataset([_ann(bbox=[-5, 3, 10, 50]), _ann(2, bbox=[-0.5, 0, 30.5, 20])])
    )
    report = DataReport()
    (rec, _) = load_coco_json(path, tmp_path, report=report)
    assert [a["bbox"] for a in rec["annotations"]] == [
        [0.0, 3.0, 5.0, 20.0],
        [0.0, 0.0, 30.0, 20.0],
    ]
    assert report.counts == {"bbox_outside_image": 1}  # the second is within the tolerance
    assert "image 5: annotation 0: field `bbox`" in str(report.examples("bbox_outside_image")[0])


def test_malformed_json_reports_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"images": [],\n  "categories": [,]}', name="bad.json")
    for strict in (False, True):  # a syntax error is fatal in both modes
        with pytest.raises(
            DataError, match=r"bad\.json: line 2, column 18: malformed JSON"
        ) as info:
            load_coco_json(path, tmp_path, strict=strict)
        assert info.value.kind == "json_syntax" and info.value.line == 2


@pytest.mark.parametrize("missing", ["images", "categories"])
def test_missing_top_level_key(tmp_path: Path, missing: str) -> None:
    data = _dataset([])
    del data[missing]
    path = _write(tmp_path, data)
    with pytest.raises(DataError, match=rf"ann\.json: field `{missing}`: top-level key is missing"):
        load_coco_json(path, tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco_json(tmp_path / "nope.json", tmp_path)


def test_check_images(tmp_path: Path) -> None:
    data = _dataset([_ann()])
    Image.new("RGB", (30, 20)).save(tmp_path / "5.jpg")  # matches height 20, width 30
    Image.new("RGB", (30, 21)).save(tmp_path / "0.jpg")  # wrong height
    path = _write(tmp_path, data)
    assert len(load_coco_json(path, tmp_path)) == 2  # no checks by default
    report = DataReport()
    assert len(load_coco_json(path, tmp_path, check_images=True, report=report)) == 2
    assert len(report) == 0
    records = load_coco_json(path, tmp_path, check_image_sizes=True, report=report)
    assert [r["image_id"] for r in records] == [5]
    assert report.counts == {"image_size_mismatch": 1}
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated by 90 degrees: the decoded image is 20 wide, 30 high
    Image.new("RGB", (20, 30)).save(tmp_path / "5.jpg", exif=exif)
    assert len(load_coco_json(path, tmp_path, check_image_sizes=True, strict=False)) == 1
    Image.new("RGB", (20, 30)).save(tmp_path / "5.jpg")  # no EXIF: 20x30 is the wrong size
    with pytest.raises(DataError, match=r"is 20x30 \(WxH\) but .* 30x20 \(swapped: EXIF"):
        load_coco_json(path, tmp_path, check_image_sizes=True, strict=True)
    (tmp_path / "5.jpg").unlink()
    with pytest.raises(
        DataError, match=r"image 5: field `file_name`: image file .* does not exist"
    ):
        load_coco_json(path, tmp_path, check_images=True, strict=True)


def test_relative_image_root_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, _dataset([]))
    monkeypatch.chdir(tmp_path)
    records = load_coco_json("ann.json", "imgs")
    assert records[0]["file_name"] == str(tmp_path / "imgs" / "5.jpg")
    assert records[0]["file_name"] == str(Path(records[0]["file_name"]).absolute())
    assert path.is_file()


def test_bad_images_are_dropped(tmp_path: Path) -> None:
    data = _dataset([_ann()])
    data["images"] += [_image(5), {"id": 8, "file_name": "8.jpg", "height": 0, "width": 3}, {}]
    path = _write(tmp_path, data)
    report = DataReport()
    records = load_coco_json(path, tmp_path, report=report)
    assert [r["image_id"] for r in records] == [5, 0]
    assert report.counts == {"duplicate_image_id": 1, "invalid_image": 2}
    assert "image 8: field `height`" in str(report.examples("invalid_image")[0])
