"""COCOEvaluator and records_to_coco: perfect predictions, hand cases, id round trips, empties."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from detforge.data.catalog import DatasetMetadata
from detforge.data.datasets.coco import load_coco_json, load_coco_metadata
from detforge.data.datasets.synthetic import SyntheticSpec, generate_synthetic_coco
from detforge.evaluation.coco_eval import RESULTS_FILE, COCOEvaluator, records_to_coco
from detforge.evaluation.coco_format import instances_to_coco_results
from detforge.structures.instances import Instances
from detforge.structures.masks import polygons_to_bitmask, rle_decode

FRUITS = Path("fruits_nuts/data")
KPTS = Path("coco_kpts_mmpose_sample/tests/data/coco")
SYN_SIGMAS = (0.05, 0.05, 0.05, 0.05)


def perfect(record: dict[str, Any], with_masks: bool = True) -> Instances:
    """The record's ground truth as detections with score 1 (keypoint score 1 too)."""
    anns = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
    h, w = record["height"], record["width"]
    boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
    masks = None
    if with_masks:
        masks = torch.zeros((len(anns), h, w), dtype=torch.bool)
        for i, a in enumerate(anns):
            segm = a["segmentation"]
            masks[i] = (
                rle_decode([segm])[0] if isinstance(segm, dict) else polygons_to_bitmask(segm, h, w)
            )
    kps = None
    if anns and "keypoints" in anns[0]:
        kps = torch.tensor([a["keypoints"] for a in anns], dtype=torch.float32).view(
            len(anns), -1, 3
        )
        # A person without labelled keypoints is ignored by COCOeval when the prediction lies
        # within its box: put its predicted keypoints at the box centre.
        unlabelled = kps[:, :, 2].amax(dim=1) == 0
        kps[unlabelled, :, :2] = ((boxes[unlabelled, :2] + boxes[unlabelled, 2:]) / 2)[:, None]
        kps[:, :, 2] = 1.0
    return Instances(
        (h, w),
        boxes=boxes,
        labels=torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
        scores=torch.ones(len(anns)),
        masks=masks,
        keypoints=kps,
    )


def run(evaluator: COCOEvaluator, records: list[dict[str, Any]], **kw: Any) -> dict:
    evaluator.reset()
    for r in records:
        x = {"image_id": r["image_id"], "height": r["height"], "width": r["width"]}
        evaluator.process([x], [perfect(r, **kw)])
    return evaluator.evaluate()


def assert_perfect(results: dict, tasks: tuple[str, ...]) -> None:
    assert set(results) == set(tasks)
    for task in tasks:
        m = results[task]
        assert m["AP"] == pytest.approx(100.0) and m["AP50"] == pytest.approx(100.0)
        per_class = [v for k, v in m.items() if k.startswith("AP-") and not math.isnan(v)]
        assert per_class and all(v == pytest.approx(100.0) for v in per_class)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    spec = SyntheticSpec(num_train=0, num_val=5, min_size=64, max_size=96, seed=3)
    return generate_synthetic_coco(tmp_path_factory.mktemp("syn"), spec)


def test_synthetic_perfect_from_json_and_from_records(synthetic: dict[str, Path]) -> None:
    records = load_coco_json(synthetic["val_json"], synthetic["val_images"])
    tasks = ("bbox", "segm", "keypoints")
    ev = COCOEvaluator(json_file=synthetic["val_json"], kpt_oks_sigmas=SYN_SIGMAS)
    assert_perfect(run(ev, records), tasks)
    meta = DatasetMetadata.from_coco(load_coco_metadata(synthetic["val_json"]))
    ev = COCOEvaluator(records=records, metadata=meta, kpt_oks_sigmas=SYN_SIGMAS)
    assert_perfect(run(ev, records), tasks)


def test_fruits_nuts_perfect_and_category_round_trip(shared_datasets: Path, tmp_path: Path) -> None:
    root = shared_datasets / FRUITS
    records = load_coco_json(root / "trainval.json", root / "images")
    ev = COCOEvaluator(json_file=root / "trainval.json", output_dir=tmp_path)
    assert_perfect(run(ev, records), ("bbox", "segm"))
    # The written results carry the file's category ids (1..3) and image ids (from 0).
    written = json.loads((tmp_path / RESULTS_FILE).read_text())
    gt = json.loads((root / "trainval.json").read_text())
    assert {r["category_id"] for r in written} == {1, 2, 3}
    assert min(r["image_id"] for r in written) == 0

    def key(a: dict) -> tuple:
        return (a["image_id"], a["category_id"], *(round(v, 1) for v in a["bbox"]))

    assert sorted(map(key, written)) == sorted(map(key, gt["annotations"]))


def test_fruits_nuts_records_to_coco_matches_file(shared_datasets: Path) -> None:
    root = shared_datasets / FRUITS
    records = load_coco_json(root / "trainval.json", root / "images")
    meta = DatasetMetadata.from_coco(load_coco_metadata(root / "trainval.json"))
    built = records_to_coco(records, meta)
    gt = json.loads((root / "trainval.json").read_text())
    assert [c["id"] for c in built["categories"]] == [1, 2, 3]
    assert [c["name"] for c in built["categories"]] == ["date", "fig", "hazelnut"]
    assert [i["id"] for i in built["images"]] == [i["id"] for i in gt["images"]]
    assert sorted(a["area"] for a in built["annotations"]) == sorted(
        a["area"] for a in gt["annotations"]
    )
    ev = COCOEvaluator(records=records, metadata=meta)
    assert_perfect(run(ev, records[:6]), ("bbox", "segm"))  # only processed images count


def test_coco_keypoints_sample_perfect(shared_datasets: Path, tmp_path: Path) -> None:
    root = shared_datasets / KPTS
    records = load_coco_json(root / "test_coco.json", root)
    ev = COCOEvaluator(json_file=root / "test_coco.json", output_dir=tmp_path)
    assert_perfect(run(ev, records), ("bbox", "segm", "keypoints"))
    # Keypoints go back to the file's integer pixel indices (the loader's +0.5 is undone).
    written = json.loads((tmp_path / RESULTS_FILE).read_text())
    gt = json.loads((root / "test_coco.json").read_text())
    checked = 0
    for ann in gt["annotations"]:
        if ann["num_keypoints"] == 0:
            continue
        same_image = [r for r in written if r["image_id"] == ann["image_id"]]
        res = min(
            same_image,
            key=lambda r: sum(abs(u - v) for u, v in zip(r["bbox"], ann["bbox"], strict=True)),
        )
        for i in range(0, len(ann["keypoints"]), 3):
            if ann["keypoints"][i + 2] > 0:
                assert res["keypoints"][i : i + 2] == pytest.approx(ann["keypoints"][i : i + 2])
                checked += 1
    assert checked == sum(a["num_keypoints"] for a in gt["annotations"])


def _hand_records(crowd: bool = False) -> tuple[list[dict], DatasetMetadata]:
    anns = [
        {"bbox": [0.0, 0.0, 40.0, 40.0], "category_id": 0, "iscrowd": 0},
        {"bbox": [50.0, 50.0, 90.0, 90.0], "category_id": 0, "iscrowd": 0},
    ]
    if crowd:
        anns.append({"bbox": [0.0, 60.0, 40.0, 100.0], "category_id": 0, "iscrowd": 1})
    record = {"image_id": "img_a", "height": 100, "width": 100, "annotations": anns}
    return [record], DatasetMetadata(class_names=("thing", "other"))


def _dets(boxes: list[list[float]], scores: list[float]) -> Instances:
    return Instances(
        (100, 100),
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.zeros(len(boxes), dtype=torch.int64),
        scores=torch.tensor(scores),
    )


@pytest.mark.parametrize("shifted_first", [False, True])
def test_shifted_box_lowers_ap_by_hand(shifted_first: bool) -> None:
    # The second box is shifted by 8 px: IoU = 32*40 / (2*1600 - 1280) = 2/3, a true positive at
    # IoU 0.50..0.65 (4 thresholds) and a false positive at 0.70..0.95 (6 thresholds). There,
    # recall stops at 1/2: COCO's 101 recall points 0, 0.01, .., 0.50 (51 of them) get the
    # precision of the exact box, 1 when it ranks first, 1/2 when the shifted box outranks it.
    records, meta = _hand_records()
    ev = COCOEvaluator(records=records, metadata=meta, tasks=("bbox",))
    scores = [0.8, 0.9] if shifted_first else [0.9, 0.8]
    ev.process(
        [{"image_id": "img_a", "height": 100, "width": 100}],
        [_dets([[0, 0, 40, 40], [58, 50, 98, 90]], scores)],
    )
    m = ev.evaluate()["bbox"]
    p = 0.5 if shifted_first else 1.0
    tail = p * 51 / 101
    assert m["AP50"] == pytest.approx(100.0)
    assert m["AP75"] == pytest.approx(100 * tail)
    assert m["AP"] == pytest.approx(100 * (4 * 1.0 + 6 * tail) / 10)
    assert m["APm"] == pytest.approx(m["AP"]) and math.isnan(m["APs"]) and math.isnan(m["APl"])
    assert m["AP-thing"] == pytest.approx(m["AP"]) and math.isnan(m["AP-other"])


def test_crowd_regions_are_not_false_positives() -> None:
    dets = [[0, 0, 40, 40], [50, 50, 90, 90], [5, 65, 35, 95]]  # the last lies in the crowd box
    scores = [0.8, 0.7, 0.9]
    x = [{"image_id": "img_a", "height": 100, "width": 100}]
    results = {}
    for crowd in (True, False):
        records, meta = _hand_records(crowd=crowd)
        if not crowd:  # the same box as a normal (non-crowd) object would be missed
            records[0]["annotations"].append(
                {"bbox": [90.0, 0.0, 100.0, 10.0], "category_id": 0, "iscrowd": 0}
            )
        built = records_to_coco(records, meta)
        assert [a["iscrowd"] for a in built["annotations"]] == [0, 0, int(crowd)]
        assert built["annotations"][0]["area"] == 1600.0  # the box area without a segmentation
        ev = COCOEvaluator(records=records, metadata=meta, tasks=("bbox",))
        ev.process(x, [_dets(dets, scores)])
        results[crowd] = ev.evaluate()["bbox"]["AP50"]
    assert results[True] == pytest.approx(100.0)
    assert results[False] < 90.0


def test_empty_predictions_give_zero_or_nan(caplog: pytest.LogCaptureFixture) -> None:
    records, meta = _hand_records()
    ev = COCOEvaluator(records=records, metadata=meta, tasks=("bbox",))
    with caplog.at_level(logging.WARNING):
        nothing = ev.evaluate()
    assert all(math.isnan(v) for v in nothing["bbox"].values())
    assert "no image was processed" in caplog.text
    ev.process([{"image_id": "img_a", "height": 100, "width": 100}], [_dets([], [])])
    m = ev.evaluate()["bbox"]
    assert m["AP"] == 0.0 and m["AP50"] == 0.0 and m["AP-thing"] == 0.0
    assert math.isnan(m["AP-other"])


def test_tasks_follow_the_predictions(synthetic: dict[str, Path]) -> None:
    records = load_coco_json(synthetic["val_json"], synthetic["val_images"])
    ev = COCOEvaluator(json_file=synthetic["val_json"], tasks=("bbox", "segm"))
    out = run(ev, records[:2], with_masks=False)  # boxes (and keypoints) but no masks
    assert set(out) == {"bbox"}
    # synthetic data has 4 keypoints: COCO's 17 person sigmas do not fit
    ev = COCOEvaluator(json_file=synthetic["val_json"], tasks=("keypoints",))
    with pytest.raises(ValueError, match="kpt_oks_sigmas"):
        run(ev, records[:2])


def test_bad_inputs_are_reported(synthetic: dict[str, Path]) -> None:
    records = load_coco_json(synthetic["val_json"], synthetic["val_images"])
    meta = DatasetMetadata.from_coco(load_coco_metadata(synthetic["val_json"]))
    with pytest.raises(ValueError, match="exactly one of"):
        COCOEvaluator(json_file=synthetic["val_json"], records=records, metadata=meta)
    with pytest.raises(ValueError, match="need `metadata`"):
        COCOEvaluator(records=records)
    with pytest.raises(ValueError, match="tasks"):
        COCOEvaluator(json_file=synthetic["val_json"], tasks=("boxes",))
    with pytest.raises(FileNotFoundError, match="json_file"):
        COCOEvaluator(json_file=synthetic["val_json"].with_name("missing.json"))
    ev = COCOEvaluator(json_file=synthetic["val_json"])
    r = records[0]
    with pytest.raises(ValueError, match="not in the ground truth"):
        ev.process([{"image_id": 12345}], [perfect(r)])
    with pytest.raises(ValueError, match="original_sizes"):
        ev.process([{"image_id": r["image_id"], "height": 1, "width": 1}], [perfect(r)])
    bad = [{**r, "annotations": [{"bbox": [0, 0, 1, 1], "category_id": 9}]}]
    with pytest.raises(ValueError, match=r"record 0 .*annotation 0 field `category_id`"):
        records_to_coco(bad, meta)
    with pytest.raises(ValueError, match="one-to-one"):
        records_to_coco(
            records, DatasetMetadata(class_names=("a", "b"), dataset_id_to_contiguous={1: 0, 2: 0})
        )


def test_instances_to_coco_results_by_hand() -> None:
    masks = torch.zeros((1, 4, 5), dtype=torch.bool)
    masks[0, 1:3, 2:4] = True
    inst = Instances(
        (4, 5),
        boxes=torch.tensor([[1.0, 2.0, 4.0, 3.5]]),
        labels=torch.tensor([1]),
        scores=torch.tensor([0.25]),
        masks=masks,
        keypoints=torch.tensor([[[2.5, 3.5, 0.7]]]),
    )
    (res,) = instances_to_coco_results(inst, 7, {0: 3, 1: 5})
    assert res["image_id"] == 7 and res["category_id"] == 5 and res["score"] == 0.25
    assert res["bbox"] == [1.0, 2.0, 3.0, 1.5]
    assert res["keypoints"] == pytest.approx([2.0, 3.0, 0.7])
    assert rle_decode([res["segmentation"]])[0].equal(masks[0])
    with pytest.raises(ValueError, match="label 1 has no category id"):
        instances_to_coco_results(inst, 7, {0: 3})


def test_records_to_coco_areas_keypoints_and_string_ids() -> None:
    square = [[0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0]]  # rasterises to rows/cols 0..3
    rle = {"size": [6, 6], "counts": [6, 3, 27]}  # uncompressed: 3 pixels after the first 6
    anns = [
        {"bbox": [0.0, 0.0, 4.0, 4.0], "category_id": 1, "segmentation": square},
        {"bbox": [1.0, 0.0, 2.0, 3.0], "category_id": 0, "segmentation": rle, "iscrowd": 1},
        {
            "bbox": [0.0, 0.0, 6.0, 6.0],
            "category_id": 0,
            "area": 7.5,
            "keypoints": [2.5, 3.5, 2, 0, 0, 0],
        },
    ]
    record = {"image_id": "000005", "height": 6, "width": 6, "annotations": anns}
    meta = DatasetMetadata(class_names=("a", "b"), keypoint_names=("p", "q"), skeleton=((0, 1),))
    built = records_to_coco([record], meta)
    assert [a["area"] for a in built["annotations"]] == [16.0, 3.0, 7.5]
    assert [a["id"] for a in built["annotations"]] == [1, 2, 3]
    assert [a["category_id"] for a in built["annotations"]] == [1, 0, 0]  # identity mapping
    assert built["annotations"][0]["bbox"] == [0.0, 0.0, 4.0, 4.0]
    assert built["annotations"][2]["keypoints"] == [2.0, 3.0, 2, 0.0, 0.0, 0]
    assert built["annotations"][2]["num_keypoints"] == 1
    assert built["categories"][0] == {
        "id": 0,
        "name": "a",
        "keypoints": ["p", "q"],
        "skeleton": [[1, 2]],
    }
    assert built["images"] == [{"id": "000005", "file_name": "", "height": 6, "width": 6}]
    with pytest.raises(ValueError, match="appears in more than one record"):
        records_to_coco([record, record], meta)
