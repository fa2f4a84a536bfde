"""VOC AP: hand-computed 11-point and area values, difficult boxes, and the devkit's "+1"."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detforge.data.datasets.voc import load_voc
from detforge.evaluation.voc_eval import VOCEvaluator, voc_ap, voc_precision_recall
from detforge.structures.boxes import box_iou
from detforge.structures.instances import Instances

# Image "a": two boxes and a difficult one; image "b": one box. npos = 3.
GT_A = [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]
GT_B = [[0, 0, 10, 10]]
# (image, score, box): TP, duplicate (FP), on the difficult box (ignored), TP, miss (FP),
# TP with IoU 0.9.
DETS = [
    ("a", 0.9, [0, 0, 10, 10]),
    ("a", 0.8, [0, 0, 10, 10]),
    ("a", 0.7, [40, 40, 50, 50]),
    ("b", 0.6, [0, 0, 10, 10]),
    ("b", 0.5, [50, 50, 60, 60]),
    ("a", 0.4, [21, 20, 30, 30]),
]
# Cumulative (tp, fp): (1,0) (1,1) (1,1) (2,1) (2,2) (3,2).
REC = [1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1]
PREC = [1, 1 / 2, 1 / 2, 2 / 3, 1 / 2, 3 / 5]
# Area: 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5 = 34/45. 11-point: t = 0..0.3 -> 1 (4 points),
# t = 0.4..0.6 -> 2/3 (3 points), t = 0.7..1 -> 3/5 (4 points): (4 + 2 + 2.4) / 11.
AP_AUC = 34 / 45
AP_07 = 8.4 / 11


def _ground_truth(difficult: bool = True) -> dict:
    return {
        "a": (np.array(GT_A, float), np.array([False, False, difficult])),
        "b": (np.array(GT_B, float), np.array([False])),
    }


def _dets() -> tuple[list[str], np.ndarray, np.ndarray]:
    ids = [d[0] for d in DETS]
    return ids, np.array([d[1] for d in DETS]), np.array([d[2] for d in DETS], float)


def test_precision_recall_by_hand() -> None:
    rec, prec, npos = voc_precision_recall(*_dets(), _ground_truth())
    assert npos == 3
    np.testing.assert_allclose(rec, REC)
    np.testing.assert_allclose(prec, PREC)
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(AP_AUC)
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(AP_07)


def test_difficult_boxes_are_ignored() -> None:
    # Not difficult: the detection on it becomes a true positive and the box counts in npos.
    rec, prec, npos = voc_precision_recall(*_dets(), _ground_truth(difficult=False))
    assert npos == 4
    np.testing.assert_allclose(rec, [1 / 4, 1 / 4, 2 / 4, 3 / 4, 3 / 4, 1])
    np.testing.assert_allclose(prec, [1, 1 / 2, 2 / 3, 3 / 4, 3 / 5, 4 / 6])
    # Difficult and never detected: no penalty at all.
    ids, scores, boxes = _dets()
    keep = [i for i in range(len(ids)) if i != 2]
    rec2, prec2, _ = voc_precision_recall(
        [ids[i] for i in keep], scores[keep], boxes[keep], _ground_truth()
    )
    np.testing.assert_allclose(rec2, [REC[i] for i in keep])
    np.testing.assert_allclose(prec2, [PREC[i] for i in keep])


def test_iou_threshold_is_inclusive_and_empty_curves() -> None:
    gt = {"a": (np.array([[0.0, 0.0, 10.0, 10.0]]), np.array([False]))}
    # IoU exactly 0.5: 50 / 100 (the devkit's ">=")
    rec, _, _ = voc_precision_recall(["a"], np.array([1.0]), np.array([[0.0, 0.0, 5.0, 10.0]]), gt)
    assert rec.tolist() == [1.0]
    rec, prec, npos = voc_precision_recall([], np.zeros(0), np.zeros((0, 4)), gt)
    assert npos == 1 and voc_ap(rec, prec, use_07_metric=False) == 0.0
    assert voc_ap(rec, prec, use_07_metric=True) == 0.0
    with pytest.raises(ValueError, match="voc_ap"):
        voc_ap(np.zeros(2), np.zeros(3), use_07_metric=True)


def _devkit_iou(det: list[float], gt: list[float]) -> float:
    """VOCevaldet's overlap on 1-based inclusive corners: widths are x2 - x1 + 1."""
    bi = [max(det[0], gt[0]), max(det[1], gt[1]), min(det[2], gt[2]), min(det[3], gt[3])]
    iw, ih = bi[2] - bi[0] + 1, bi[3] - bi[1] + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    ua = (det[2] - det[0] + 1) * (det[3] - det[1] + 1) + (gt[2] - gt[0] + 1) * (gt[3] - gt[1] + 1)
    return iw * ih / (ua - iw * ih)


def _write_voc(root: Path, boxes: list[list[int]]) -> None:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    Image.new("RGB", (64, 48)).save(root / "JPEGImages" / "im.jpg")
    objs = "".join(
        f"<object><name>cell</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for b in boxes
    )
    size = "<size><width>64</width><height>48</height></size>"
    xml = f"<annotation><filename>im.jpg</filename>{size}{objs}</annotation>"
    (root / "Annotations" / "im.xml").write_text(xml)


def test_plus_one_algebra_matches_the_devkit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 30
    x1, y1 = rng.integers(1, 30, n), rng.integers(1, 22, n)
    w, h = rng.integers(1, 30, n), rng.integers(1, 22, n)
    file_boxes = [
        [int(a), int(b), int(min(a + c, 64)), int(min(b + d, 48))]
        for a, b, c, d in zip(x1, y1, w, h, strict=True)
    ]
    _write_voc(tmp_path, file_boxes)
    (record,) = load_voc(tmp_path)
    ours = torch.tensor([a["bbox"] for a in record["annotations"]], dtype=torch.float64)
    # The loader's boxes are (xmin - 1, ymin - 1, xmax, ymax): widths include the devkit's +1.
    assert ours[:, 2:].sub(ours[:, :2]).tolist() == [
        [b[2] - b[0] + 1, b[3] - b[1] + 1] for b in file_boxes
    ]
    # Continuous IoU between ground-truth boxes equals the devkit's on the file's corners ...
    iou = box_iou(ours, ours)
    for i in range(n):
        for j in range(n):
            assert iou[i, j].item() == pytest.approx(_devkit_iou(file_boxes[i], file_boxes[j]))
    # ... and a float prediction (x1, y1, x2, y2) is the devkit detection (x1 + 1, y1 + 1, x2, y2).
    preds = torch.rand(n, 4, dtype=torch.float64) * 40
    preds[:, 2:] = preds[:, :2] + torch.rand(n, 2, dtype=torch.float64) * 20 + 0.5
    iou = box_iou(preds, ours)
    for i in range(n):
        p = preds[i].tolist()
        devkit_det = [p[0] + 1, p[1] + 1, p[2], p[3]]
        for j in range(n):
            assert iou[i, j].item() == pytest.approx(_devkit_iou(devkit_det, file_boxes[j]))


def _records() -> list[dict]:
    def ann(box: list[int], label: int, difficult: bool = False) -> dict:
        return {"bbox": [float(v) for v in box], "category_id": label, "difficult": difficult}

    a = [ann(GT_A[0], 0), ann(GT_A[1], 0), ann(GT_A[2], 0, True), ann([5, 5, 25, 25], 1)]
    return [
        {"image_id": "a", "height": 64, "width": 64, "annotations": a},
        {"image_id": "b", "height": 64, "width": 64, "annotations": [ann(GT_B[0], 0)]},
    ]


def _outputs() -> dict[str, Instances]:
    out = {}
    for iid in ("a", "b"):
        dets = [d for d in DETS if d[0] == iid]
        boxes = [d[2] for d in dets] + ([[5, 5, 25, 25]] if iid == "a" else [])
        scores = [d[1] for d in dets] + ([0.3] if iid == "a" else [])
        labels = [0] * len(dets) + ([1] if iid == "a" else [])
        out[iid] = Instances(
            (64, 64),
            boxes=torch.tensor(boxes, dtype=torch.float32),
            scores=torch.tensor(scores),
            labels=torch.tensor(labels),
        )
    return out


@pytest.mark.parametrize("use_07", [False, True])
def test_voc_evaluator_hand_case(use_07: bool) -> None:
    ev = VOCEvaluator(_records(), ("cell", "blob", "absent"), use_07_metric=use_07)
    outputs = _outputs()
    for iid in ("b", "a"):
        ev.process([{"image_id": iid, "height": 64, "width": 64}], [outputs[iid]])
    m = ev.evaluate()["bbox"]
    expected = (AP_07 if use_07 else AP_AUC) * 100
    assert m["AP50-cell"] == pytest.approx(expected)
    assert m["AP50-blob"] == pytest.approx(100.0)
    assert math.isnan(m["AP50-absent"])  # no ground truth: NaN, left out of the mean
    assert m["AP50"] == pytest.approx((expected + 100.0) / 2)
    # At IoU 0.95 the 0.9-IoU detection turns into a false positive; AP only falls from 0.5 on.
    assert m["AP"] < m["AP50"] and m["AP75"] == pytest.approx(m["AP50"])
    ev.reset()
    ev.process([{"image_id": "a"}], [outputs["a"]])  # only image "a" counts now
    assert ev.evaluate()["bbox"]["AP50-blob"] == pytest.approx(100.0)


def test_voc_evaluator_bad_inputs() -> None:
    ev = VOCEvaluator(_records(), ("cell", "blob"), use_07_metric=False)
    out = _outputs()["a"]
    with pytest.raises(ValueError, match="not in records"):
        ev.process([{"image_id": "zzz"}], [out])
    with pytest.raises(ValueError, match="original_sizes"):
        ev.process([{"image_id": "a", "height": 32, "width": 64}], [out])
    with pytest.raises(ValueError, match=r"record 'a' .*annotation 3 field `category_id`"):
        VOCEvaluator(_records(), ("cell",), use_07_metric=True)


def test_bccd_perfect_predictions(shared_datasets: Path) -> None:
    names = ("Platelets", "RBC", "WBC")
    records = load_voc(shared_datasets / "bccd" / "BCCD", "test", class_names=names)
    ev = VOCEvaluator(records, names, use_07_metric=True)
    for r in records:
        anns = r["annotations"]
        out = Instances(
            (r["height"], r["width"]),
            boxes=torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4),
            scores=torch.ones(len(anns)),
            labels=torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
        )
        ev.process([{"image_id": r["image_id"], "height": r["height"], "width": r["width"]}], [out])
    m = ev.evaluate()["bbox"]
    assert m["AP"] == pytest.approx(100.0) and m["AP50"] == pytest.approx(100.0)
    assert all(m[f"AP50-{n}"] == pytest.approx(100.0) for n in names)
