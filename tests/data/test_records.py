"""Record storage (SerializedList), proposal files attached to records, and the bad-data report."""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from detforge.data.datasets.proposals import (
    load_proposals,
    load_proposals_into_records,
    save_proposals,
)
from detforge.data.datasets.voc import load_voc
from detforge.data.errors import DataError, DataReport, check_xyxy_box
from detforge.data.records import SerializedList


def _records() -> list[dict[str, Any]]:
    return [
        {"image_id": 0, "file_name": "a.jpg", "annotations": []},
        {"image_id": "x", "annotations": [{"bbox": [1.0, 2.0, 3.0, 4.0], "category_id": 2}]},
        {"image_id": 2, "proposals": {"boxes": np.arange(8, dtype=np.float32).reshape(2, 4)}},
    ]


# ---------------------------------------------------------------------------------------------
# SerializedList


def test_round_trip_and_fresh_copies() -> None:
    records = _records()
    stored = SerializedList(records)
    assert len(stored) == 3
    assert stored[0] == records[0] and stored[1] == records[1] and stored[-3] == records[0]
    np.testing.assert_array_equal(stored[2]["proposals"]["boxes"], records[2]["proposals"]["boxes"])
    got = stored[1]
    got["annotations"].clear()
    assert stored[1] == records[1]  # each access is a new copy
    assert stored[1] is not stored[1]
    assert [r["image_id"] for r in stored] == [0, "x", 2]
    assert stored.nbytes == stored.buffer.nbytes + stored.offsets.nbytes


def test_holds_no_python_records() -> None:
    stored = SerializedList(_records())
    assert set(vars(stored)) == {"buffer", "offsets"}
    assert stored.buffer.dtype == np.uint8 and stored.buffer.ndim == 1
    assert stored.offsets.dtype == np.int64 and stored.offsets.tolist()[0] == 0
    assert stored.offsets[-1] == stored.buffer.size
    # No list or dict is reachable from the object apart from its own attribute dict.
    referents = gc.get_referents(stored.buffer, stored.offsets, vars(stored))
    assert not any(isinstance(r, (list, dict)) for r in referents)


def test_serialized_list_errors_and_empty() -> None:
    stored = SerializedList(_records())
    with pytest.raises(IndexError, match="index 3 out of range for 3"):
        stored[3]
    with pytest.raises(IndexError):
        stored[-4]
    with pytest.raises(TypeError, match="index must be an int"):
        stored[0:2]  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="records"):
        SerializedList({"a": 1})  # type: ignore[arg-type]
    assert len(SerializedList([])) == 0


def test_serialized_bccd(shared_datasets: Path) -> None:
    records = load_voc(shared_datasets / "bccd" / "BCCD", "val")
    stored = SerializedList(records)
    assert len(stored) == len(records) == 87
    assert all(stored[i] == records[i] for i in range(len(records)))


# ---------------------------------------------------------------------------------------------
# Proposals

BOXES = [np.array([[0, 0, 5, 5], [1, 2, 3, 4]], np.float32), np.zeros((0, 4), np.float32)]
SCORES = [np.array([0.9, 0.1], np.float32), np.zeros((0,), np.float32)]


@pytest.mark.parametrize("ext", [".npz", ".json", ".pt"])
def test_proposal_formats_round_trip(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"props{ext}"
    save_proposals(path, [7, 0], BOXES, SCORES)
    loaded = load_proposals(path)
    assert list(loaded) == [7, 0]
    for (boxes, scores), want_b, want_s in zip(loaded.values(), BOXES, SCORES, strict=True):
        assert boxes.dtype == np.float32 and boxes.shape == want_b.shape
        np.testing.assert_array_equal(boxes, want_b)
        np.testing.assert_array_equal(scores, want_s)


def test_string_ids_npz(tmp_path: Path) -> None:
    path = tmp_path / "props.npz"
    save_proposals(path, ["img_a", "img_b"], BOXES, SCORES)
    assert list(load_proposals(path)) == ["img_a", "img_b"]
    with np.load(path, allow_pickle=False) as data:  # readable without pickle
        assert data["lengths"].tolist() == [2, 0]


def test_attach_to_records(tmp_path: Path) -> None:
    path = tmp_path / "props.json"
    save_proposals(path, [7, 0], BOXES, SCORES)
    records = [{"image_id": 0}, {"image_id": 7}, {"image_id": 9}]
    report = DataReport()
    out = load_proposals_into_records(records, path, report=report)
    assert "proposals" not in records[0]  # inputs untouched
    np.testing.assert_array_equal(out[1]["proposals"]["boxes"], BOXES[0])
    np.testing.assert_array_equal(out[1]["proposals"]["scores"], SCORES[0])
    assert out[0]["proposals"]["boxes"].shape == (0, 4)
    assert out[2]["proposals"]["boxes"].shape == (0, 4)
    assert report.counts == {"missing_proposals": 1}
    with pytest.raises(DataError, match=r"props\.json: image 9: no proposals"):
        load_proposals_into_records(records, path, strict=True)


def test_bad_proposal_files(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    bad = {"ids": [1], "boxes": [[[0, 0, 1]]], "scores": [[0.5]]}
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"p\.json: image 1: field `boxes`: .* must be \[P, 4\]"):
        load_proposals(path)
    path.write_text(json.dumps({"ids": [1, 1], "boxes": [[], []], "scores": [[], []]}))
    with pytest.raises(DataError, match="appears twice"):
        load_proposals(path)
    path.write_text(json.dumps({"ids": [1], "boxes": [[[3, 0, 1, 1]]], "scores": [[0.5]]}))
    with pytest.raises(DataError, match="x2 >= x1"):
        load_proposals(path)
    path.write_text(json.dumps({"ids": [1], "boxes": [[]]}))
    with pytest.raises(DataError, match="field `scores`: missing key"):
        load_proposals(path)
    with pytest.raises(ValueError, match="must end with one of"):
        load_proposals(tmp_path / "p.pkl")


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    ids = np.array([object()], dtype=object)
    np.savez(path, ids=ids, boxes=np.zeros((0, 4)), scores=np.zeros(0), lengths=np.zeros(1))
    with pytest.raises(DataError, match=r"evil\.npz: arrays must not need pickle.*allow_pickle"):
        load_proposals(path)
    pt = tmp_path / "evil.pt"
    torch.save({"ids": [1], "boxes": [Path("x")], "scores": [[0.0]]}, pt)
    with pytest.raises(DataError, match=r"evil\.pt: not loadable with torch.load\(weights_only"):
        load_proposals(pt)


# ---------------------------------------------------------------------------------------------
# DataError / DataReport / box check


def test_data_error_format() -> None:
    err = DataError("width -4 is negative", kind="invalid_bbox", path="a.json", record=17,
                    annotation=3, field="bbox")  # fmt: skip
    assert str(err) == "a.json: image 17: annotation 3: field `bbox`: width -4 is negative"
    assert isinstance(err, ValueError) and err.kind == "invalid_bbox" and err.record == 17
    assert str(DataError("bad", path="f.xml", line=3, column=9)) == "f.xml: line 3, column 9: bad"


def test_report_counts_examples_summary(caplog: pytest.LogCaptureFixture) -> None:
    report = DataReport(max_examples=2)
    for i in range(5):
        report.add(DataError(f"problem {i}", kind="empty_bbox", path="f"))
    report.add(DataError("x", kind="unknown_class"))
    assert report.counts == {"empty_bbox": 5, "unknown_class": 1} and len(report) == 6
    assert [e.message for e in report.examples("empty_bbox")] == ["problem 0", "problem 1"]
    summary = report.summary()
    assert (
        "empty_bbox: 5" in summary and "... and 3 more" in summary and "unknown_class: 1" in summary
    )
    other = DataReport()
    other.add(DataError("y", kind="unknown_class"))
    report.merge(other)
    assert report.counts["unknown_class"] == 2
    with caplog.at_level(logging.WARNING):
        report.log("mydata")
    assert "mydata: 7 data problem(s) found" in caplog.text
    with pytest.raises(DataError):
        report.handle(DataError("z"), strict=True)
    assert not DataReport() and DataReport().summary() == "no data problems found"
    with pytest.raises(TypeError):
        report.add(ValueError("no"))  # type: ignore[arg-type]


def test_check_xyxy_box() -> None:
    assert check_xyxy_box([1, 2, 3, 4], 10, 10) == ([1.0, 2.0, 3.0, 4.0], None)
    assert check_xyxy_box([-0.5, 0, 10.5, 10], 10, 10) == ([0.0, 0.0, 10.0, 10.0], None)
    box, problem = check_xyxy_box([-3, 0, 5, 5], 10, 10)
    assert (
        box == [0.0, 0.0, 5.0, 5.0] and problem is not None and problem[0] == "bbox_outside_image"
    )
    assert check_xyxy_box([12, 0, 15, 5], 10, 10)[1][0] == "empty_bbox"  # type: ignore[index]
    assert check_xyxy_box([3, 0, 3, 5], 10, 10)[1][0] == "empty_bbox"  # type: ignore[index]
    assert check_xyxy_box([4, 0, 3, 5], 10, 10)[1][0] == "invalid_bbox"  # type: ignore[index]
    assert check_xyxy_box([float("inf"), 0, 3, 5], 10, 10)[0] is None
