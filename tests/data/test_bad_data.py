"""Bad data that once escaped the loaders as a bare Python error, or vanished without a count.

Each test reproduces one such case (the old behaviour is in its docstring) and checks that it is
now a ``DataError`` naming the file (and image, annotation and field), or a counted problem.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from detforge.data.datasets.coco import _rle_string_counts, load_coco_json, load_coco_metadata
from detforge.data.datasets.voc import load_voc
from detforge.data.errors import DataError, DataReport
from detforge.data.mapper import DatasetMapper

H, W = 20, 30


def _coco(anns: list[Any] | None, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "images": [{"id": 5, "file_name": "5.png", "height": H, "width": W}],
        "categories": [{"id": 3, "name": "cat"}],
        **extra,
    }
    if anns is not None:
        data["annotations"] = anns
    return data


def _ann(aid: int = 1, **kw: Any) -> dict[str, Any]:
    return {"id": aid, "image_id": 5, "category_id": 3, "bbox": [2, 3, 10, 5], **kw}


def _write(path: Path, data: dict[str, Any] | str) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> None:
    """A valid PNG header claiming ``width x height`` pixels, with no pixel data to speak of."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def test_empty_categories_is_a_data_error(tmp_path: Path) -> None:
    """Was: loaded with 0 classes, then `num_classes must be a positive int, got 0` in the model."""
    path = _write(tmp_path / "nocats.json", _coco([_ann()], categories=[]))
    for strict in (False, True):
        with pytest.raises(DataError, match=r"nocats\.json: field `categories`: is empty") as e:
            load_coco_json(path, tmp_path, strict=strict)
        assert e.value.kind == "invalid_category" and e.value.path == str(path)
    with pytest.raises(DataError, match=r"nocats\.json: field `categories`: is empty"):
        load_coco_metadata(path)


@pytest.mark.parametrize(
    ("cat", "field"),
    [
        ({"keypoints": 5}, "keypoints"),  # was: TypeError: 'int' object is not iterable
        ({"keypoints": [["a"], ["b"]]}, "keypoints"),  # was: TypeError: unhashable type
        ({"keypoints": ["a", "b"], "skeleton": [[1]]}, "skeleton"),  # was: ValueError unpack
        ({"keypoints": ["a", "b"], "skeleton": [["x", "y"]]}, "skeleton"),  # was: int("x")
    ],
)
def test_bad_keypoint_metadata_is_a_data_error(tmp_path: Path, cat: dict, field: str) -> None:
    data = _coco([_ann()], categories=[{"id": 3, "name": "cat", **cat}])
    path = _write(tmp_path / "kp.json", data)
    with pytest.raises(DataError, match=rf"kp\.json: field `{field}`: category 0: must be") as e:
        load_coco_json(path, tmp_path)
    assert e.value.kind == "invalid_category"


def test_annotation_that_is_not_an_object(tmp_path: Path) -> None:
    """Was: counted as `unknown_image` with the image id None."""
    path = _write(tmp_path / "a.json", _coco([_ann(), [1, 2], "x"]))
    report = DataReport()
    (rec,) = load_coco_json(path, tmp_path, report=report)
    assert len(rec["annotations"]) == 1 and report.counts == {"invalid_annotation": 2}
    with pytest.raises(DataError, match=r"a\.json: annotation 1: must be a JSON object, got list"):
        load_coco_json(path, tmp_path, strict=True)


def test_invalid_id_message_names_file_image_annotation_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "ids.json", _coco([_ann(), _ann(2, category_id=[3, 4])]))
    with pytest.raises(DataError) as e:
        load_coco_json(path, tmp_path, strict=True)
    assert str(e.value) == (
        f"{path}: image 5: annotation 1: field `category_id`: "
        "must be an int category id, got list [3, 4]"
    )


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"images": [], "categories": [], "x": 1' + "0" * 5000 + "}", "4300 digits"),
        ('{"images": [], "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ],
    ids=["int_over_4300_digits", "nested_100k_deep"],
)
def test_json_beyond_python_limits(tmp_path: Path, text: str, match: str) -> None:
    """Was: a bare ValueError / RecursionError from the json module."""
    path = _write(tmp_path / "big.json", text)
    with pytest.raises(DataError, match=rf"big\.json: malformed JSON: .*{match}") as e:
        load_coco_json(path, tmp_path)
    assert e.value.kind == "json_syntax"


@pytest.mark.parametrize(
    ("anns", "why"),
    [
        (None, "the file has no `annotations` key"),
        ([], "its `annotations` list is empty"),
        ([_ann(bbox=[2, 3, -1, 5]), _ann(2, image_id=99)], "all 2 of its annotations were dropped"),
    ],
    ids=["no_key", "empty_list", "all_dropped"],
)
def test_no_annotations_at_all_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, anns: list | None, why: str
) -> None:
    """Was: one info line (`loaded 1 images, 0 annotations`) and nothing else."""
    path = _write(tmp_path / "empty.json", _coco(anns))
    with caplog.at_level(logging.WARNING, logger="detforge.data.datasets.coco"):
        records = load_coco_json(path, tmp_path)
    assert len(records) == 1 and records[0]["annotations"] == []
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"{path}: no annotations in 1 image(s): {why}" in m for m in warned), warned
    if anns is None or not anns:  # not a data problem: a test-set image list loads strictly
        assert len(load_coco_json(path, tmp_path, strict=True)) == 1


def test_decompression_bomb_with_check_image_sizes(tmp_path: Path) -> None:
    """Was: `PIL.Image.DecompressionBombError` out of `load_coco_json(check_image_sizes=True)`."""
    _bomb_png(tmp_path / "5.png")
    path = _write(tmp_path / "bomb.json", _coco([_ann()]))
    report = DataReport()
    assert load_coco_json(path, tmp_path, check_image_sizes=True, report=report) == []
    assert report.counts == {"unreadable_image": 1}
    with pytest.raises(DataError) as e:
        load_coco_json(path, tmp_path, check_image_sizes=True, strict=True)
    assert e.value.kind == "unreadable_image" and e.value.field == "file_name"
    msg = str(e.value)
    assert msg.startswith(f"{path}: image 5: field `file_name`: cannot read image file ")
    assert str(tmp_path / "5.png") in msg and "DecompressionBombError" in msg


def test_decompression_bomb_by_lowered_pixel_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.new("RGB", (W, H)).save(tmp_path / "5.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 600 pixels > 2 x the limit
    path = _write(tmp_path / "a.json", _coco([_ann()]))
    with pytest.raises(DataError, match=r"5\.png: DecompressionBombError"):
        load_coco_json(path, tmp_path, check_image_sizes=True, strict=True)


def _voc_xml(size: str = "", filename: str = "a.png") -> str:
    obj = "<object><name>cell</name><bndbox><xmin>3</xmin><ymin>4</ymin>"
    obj += "<xmax>12</xmax><ymax>9</ymax></bndbox></object>"
    return f"<annotation><filename>{filename}</filename>{size}{obj}</annotation>"


def test_voc_decompression_bomb_when_size_is_read_from_the_image(tmp_path: Path) -> None:
    """Was: `DecompressionBombError` from `load_voc` when `<size>` is missing."""
    _bomb_png(tmp_path / "a.png")
    (tmp_path / "a.xml").write_text(_voc_xml())
    report = DataReport()
    assert load_voc(tmp_path, report=report) == []
    assert report.counts == {"missing_size": 1, "unreadable_image": 1}
    assert "DecompressionBombError" in str(report.examples("unreadable_image")[0])


def test_voc_infinite_size_is_read_from_the_image(tmp_path: Path) -> None:
    """Was: `OverflowError: cannot convert float infinity to integer`."""
    Image.new("RGB", (W, H)).save(tmp_path / "a.png")
    size = "<size><width>inf</width><height>1e400</height></size>"
    (tmp_path / "a.xml").write_text(_voc_xml(size))
    report = DataReport()
    (rec,) = load_voc(tmp_path, report=report)
    assert (rec["height"], rec["width"]) == (H, W) and report.counts == {"missing_size": 1}


def test_file_names_too_long_for_the_file_system(tmp_path: Path) -> None:
    """Was: `OSError: [Errno 36] File name too long` from `is_file()`."""
    long_name = "x" * 300 + ".png"
    data = _coco([_ann()])
    data["images"][0]["file_name"] = long_name
    report = DataReport()
    path = _write(tmp_path / "long.json", data)
    assert load_coco_json(path, tmp_path, check_images=True, report=report) == []
    assert report.counts == {"missing_image": 1}
    (tmp_path / "a.xml").write_text(_voc_xml(filename=long_name))
    Image.new("RGB", (W, H)).save(tmp_path / "a.png")  # found by the XML's stem instead
    (rec,) = load_voc(tmp_path)
    assert rec["file_name"] == str(tmp_path / "a.png")


def test_empty_masks_are_counted_by_the_loader_not_lost_in_the_mapper(tmp_path: Path) -> None:
    """Was: kept by the loader, then dropped by the training mapper (bitmask) without a count."""
    Image.new("RGB", (W, H)).save(tmp_path / "5.png")
    anns = [
        _ann(1, segmentation=[[2, 3, 12, 3, 12, 8]]),
        _ann(2, segmentation=[[-9, 3, -1, 3, -1, 8]]),  # wholly left of the image
        _ann(3, segmentation={"size": [H, W], "counts": [H * W]}),  # no foreground pixel
        _ann(4, iscrowd=1, segmentation=mask_utils.frPyObjects([[40, 3, 50, 3, 50, 8]], H, W)[0]),
    ]
    anns[3]["segmentation"]["counts"] = anns[3]["segmentation"]["counts"].decode()
    report = DataReport()
    (rec,) = load_coco_json(_write(tmp_path / "m.json", _coco(anns)), tmp_path, report=report)
    assert [a["id"] for a in rec["annotations"]] == [1]
    assert report.counts == {"empty_segmentation": 3, "polygon_outside_image": 1}
    examples = [str(e) for e in report.examples("empty_segmentation")]
    assert "image 5: annotation 2: field `segmentation`: the RLE has no foreground" in examples[1]
    assert "annotation 3: field `segmentation`: the RLE has no foreground" in examples[2]
    for fmt in ("polygon", "bitmask"):
        mapper = DatasetMapper([], is_train=True, use_masks=True, mask_format=fmt)
        assert len(mapper(rec, np.random.default_rng(0))["instances"]) == 1


def _runs(flat: list[int]) -> list[int]:
    """Column-major run lengths, zeros first (COCO's uncompressed ``counts``)."""
    runs, value, n = [], 0, 0
    for v in flat:
        if v != value:
            runs.append(n)
            value, n = v, 0
        n += 1
    return runs + [n]


def test_compressed_rle_runs_match_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for t in range(200):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        if t % 5 == 0:
            mask[:] = t % 2
        counts = mask_utils.encode(np.asfortranarray(mask))["counts"].decode()
        runs = _rle_string_counts(counts)
        assert runs is not None and sum(runs) == h * w
        assert runs == _runs(mask.flatten(order="F").tolist())
    assert _rle_string_counts("") == [] and _rle_string_counts("hb0") == [600]
    for bad in ("h", "~", "é", "/", "hhhhhhhh0"):
        assert _rle_string_counts(bad) is None, bad
