"""DatasetCatalog, DatasetMetadata, builtin registrations and the COCO constants."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from detforge.data.catalog import (
    COCO_CATEGORIES,
    COCO_PERSON_KEYPOINT_FLIP_PAIRS,
    COCO_PERSON_KEYPOINT_NAMES,
    COCO_PERSON_SKELETON,
    DatasetCatalog,
    DatasetMetadata,
    class_palette,
    infer_flip_pairs,
    register_builtin,
    register_coco_instances,
)

BUILTIN = {
    "coco_2014_train",
    "coco_2014_val",
    "coco_2014_minival",
    "coco_2017_train",
    "coco_2017_val",
    "coco_2017_test",
    "keypoints_coco_2017_train",
    "keypoints_coco_2017_val",
    "voc_2007_trainval",
    "voc_2007_test",
    "voc_2012_trainval",
}


def test_register_get_metadata() -> None:
    catalog = DatasetCatalog()
    calls: list[int] = []

    def records() -> list[dict[str, Any]]:
        calls.append(1)
        return [{"image_id": len(calls)}]

    meta = DatasetMetadata(class_names=("a", "b"))
    catalog.register("toy", records, meta)
    assert catalog.names() == ["toy"] and "toy" in catalog and len(catalog) == 1
    assert catalog.get("toy") == [{"image_id": 1}]
    assert catalog.get("toy") == [{"image_id": 2}]  # called again: nothing cached
    assert catalog.metadata("toy") is meta
    catalog.remove("toy")
    assert "toy" not in catalog


def test_unknown_name_suggests_close_matches() -> None:
    catalog = DatasetCatalog()
    register_builtin(catalog, root="/nonexistent")
    with pytest.raises(
        KeyError, match="unknown dataset 'coco_2017_vall'; did you mean 'coco_2017_val'"
    ):
        catalog.get("coco_2017_vall")
    with pytest.raises(KeyError, match="unknown dataset 'zzz'"):
        catalog.metadata("zzz")


def test_register_errors() -> None:
    catalog = DatasetCatalog()
    meta = DatasetMetadata(class_names=("a",))
    catalog.register("x", list, meta)
    with pytest.raises(ValueError, match="already registered"):
        catalog.register("x", list, meta)
    with pytest.raises(ValueError, match="non-empty"):
        catalog.register("", list, meta)
    with pytest.raises(TypeError, match="`fn`"):
        catalog.register("y", [], meta)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`metadata`"):
        catalog.register("y", list, ("a",))  # type: ignore[arg-type]
    catalog.register("z", dict, meta)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must return a list"):
        catalog.get("z")


def test_lazy_metadata_is_computed_once() -> None:
    catalog = DatasetCatalog()
    calls: list[int] = []

    def meta() -> DatasetMetadata:
        calls.append(1)
        return DatasetMetadata(class_names=("a",))

    catalog.register("x", list, meta)
    assert calls == []
    assert catalog.metadata("x").class_names == ("a",)
    assert catalog.metadata("x") is catalog.metadata("x") and calls == [1]


def test_register_builtin_reads_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETFORGE_DATASETS", str(tmp_path))
    catalog = DatasetCatalog()
    register_builtin(catalog)  # the folder is empty: registering must not touch it
    assert set(catalog.names()) == BUILTIN
    meta = catalog.metadata("coco_2017_val")
    assert len(meta.class_names) == 80 and meta.evaluator_type == "coco"
    assert meta.json_file == str(tmp_path / "coco/annotations/instances_val2017.json")
    assert meta.dataset_id_to_contiguous is not None and meta.dataset_id_to_contiguous[90] == 79
    kp = catalog.metadata("keypoints_coco_2017_train")
    assert kp.class_names == ("person",) and kp.keypoint_names == COCO_PERSON_KEYPOINT_NAMES
    assert kp.json_file == str(tmp_path / "coco/annotations/person_keypoints_train2017.json")
    voc = catalog.metadata("voc_2007_test")
    assert (
        voc.evaluator_type == "pascal_voc" and voc.voc_year == 2007 and len(voc.class_names) == 20
    )
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        catalog.get("coco_2017_val")
    with pytest.raises(FileNotFoundError, match="VOC2012"):
        catalog.get("voc_2012_trainval")


def test_builtin_coco_and_voc_layouts(tmp_path: Path, shared_datasets: Path) -> None:
    ann_dir = tmp_path / "coco" / "annotations"
    ann_dir.mkdir(parents=True)
    data = {
        "images": [{"id": 3, "file_name": "3.jpg", "height": 10, "width": 10}],
        "categories": [{"id": cid, "name": name} for cid, name in COCO_CATEGORIES],
        "annotations": [{"id": 1, "image_id": 3, "category_id": 90, "bbox": [1, 1, 2, 2]}],
    }
    (ann_dir / "instances_val2017.json").write_text(json.dumps(data))
    (tmp_path / "VOC2007").symlink_to(shared_datasets / "bccd" / "BCCD")
    catalog = DatasetCatalog()
    register_builtin(catalog, root=tmp_path)
    (record,) = catalog.get("coco_2017_val")
    assert record["file_name"] == str(tmp_path / "coco" / "val2017" / "3.jpg")
    label = record["annotations"][0]["category_id"]
    assert catalog.metadata("coco_2017_val").class_names[label] == "toothbrush"
    records = catalog.get("voc_2007_test")  # BCCD's classes are not VOC's: all dropped
    assert len(records) == 72 and all(r["annotations"] == [] for r in records)


def test_register_coco_instances_reads_metadata_lazily(shared_datasets: Path) -> None:
    root = shared_datasets / "fruits_nuts" / "data"
    catalog = DatasetCatalog()
    register_coco_instances(
        catalog, "fruits", json_file=root / "trainval.json", image_root=root / "images"
    )
    meta = catalog.metadata("fruits")
    assert meta.class_names == ("date", "fig", "hazelnut") and meta.evaluator_type == "coco"
    assert meta.json_file == str(root / "trainval.json")
    assert len(catalog.get("fruits")) == 18


def test_coco_constants_match_the_keypoint_file(shared_datasets: Path) -> None:
    path = shared_datasets / "coco_kpts_mmpose_sample/tests/data/coco/test_coco.json"
    cat = json.loads(path.read_text())["categories"][0]
    assert tuple(cat["keypoints"]) == COCO_PERSON_KEYPOINT_NAMES
    assert tuple((a - 1, b - 1) for a, b in cat["skeleton"]) == COCO_PERSON_SKELETON


def test_coco_constants() -> None:
    ids = [cid for cid, _ in COCO_CATEGORIES]
    assert len(ids) == 80 and ids == sorted(set(ids)) and ids[0] == 1 and ids[-1] == 90
    assert len(COCO_PERSON_KEYPOINT_FLIP_PAIRS) == 8
    assert infer_flip_pairs(COCO_PERSON_KEYPOINT_NAMES) == COCO_PERSON_KEYPOINT_FLIP_PAIRS
    meta = DatasetMetadata(
        class_names=("person",),
        keypoint_names=COCO_PERSON_KEYPOINT_NAMES,
        keypoint_flip_pairs=COCO_PERSON_KEYPOINT_FLIP_PAIRS,
    )
    # nose stays; each left/right pair swaps.
    assert meta.flip_indices() == [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


def test_palette_and_metadata_checks() -> None:
    colours = class_palette(30)
    assert colours == class_palette(30) and len(set(colours)) == 30
    assert all(0 <= c <= 255 for rgb in colours for c in rgb)
    assert DatasetMetadata(class_names=("a", "b")).class_colors == class_palette(2)
    with pytest.raises(ValueError, match="class_colors"):
        DatasetMetadata(class_names=("a", "b"), class_colors=((0, 0, 0),))
    with pytest.raises(ValueError, match="keypoint_flip_pairs"):
        DatasetMetadata(
            class_names=("a",), keypoint_names=("x",), keypoint_flip_pairs=(("x", "y"),)
        )
    with pytest.raises(ValueError, match="skeleton"):
        DatasetMetadata(class_names=("a",), keypoint_names=("x",), skeleton=((0, 1),))
    with pytest.raises(TypeError, match="class_names"):
        DatasetMetadata(class_names="ab")  # type: ignore[arg-type]
