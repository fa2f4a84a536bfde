import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from detforge.data.datasets.synthetic import (
    SYNTHETIC_CLASSES,
    SyntheticSpec,
    generate_synthetic_coco,
)

SPEC = SyntheticSpec(num_train=12, num_val=4, seed=7)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_synthetic_coco(tmp_path_factory.mktemp("syn"), SPEC)


def test_layout_and_counts(synthetic):
    train = json.loads(synthetic["train_json"].read_text())
    val = json.loads(synthetic["val_json"].read_text())
    assert len(train["images"]) == 12 and len(val["images"]) == 4
    assert [c["name"] for c in train["categories"]] == list(SYNTHETIC_CLASSES)
    for img in train["images"]:
        assert (synthetic["train_images"] / img["file_name"]).is_file()
        assert SPEC.min_size <= img["height"] <= SPEC.max_size
    assert len(train["annotations"]) >= 12


def test_reproducible_from_seed(synthetic, tmp_path):
    again = generate_synthetic_coco(tmp_path, SPEC)
    assert again["train_json"].read_bytes() == synthetic["train_json"].read_bytes()
    name = "000003.jpg"
    assert (again["train_images"] / name).read_bytes() == (
        synthetic["train_images"] / name
    ).read_bytes()
    other = generate_synthetic_coco(tmp_path / "b", SyntheticSpec(num_train=2, num_val=1, seed=8))
    assert other["train_json"].read_bytes() != again["train_json"].read_bytes()


def test_annotations_agree_with_pycocotools(synthetic):
    coco = COCO(str(synthetic["train_json"]))
    kinds = {"polygon": 0, "rle": 0}
    for ann in coco.anns.values():
        mask = coco.annToMask(ann)
        assert mask.sum() == pytest.approx(ann["area"])
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert xs.min() == pytest.approx(x, abs=1) and xs.max() + 1 == pytest.approx(x + w, abs=1)
        assert ys.min() == pytest.approx(y, abs=1) and ys.max() + 1 == pytest.approx(y + h, abs=1)
        kinds["rle" if isinstance(ann["segmentation"], dict) else "polygon"] += 1
        kp = np.array(ann["keypoints"]).reshape(4, 3)
        assert set(kp[:, 2].tolist()) <= {1, 2} and ann["num_keypoints"] == 4
    assert kinds["rle"] > 0 and kinds["polygon"] > 0  # overlaps exercise both encodings


def test_invalid_spec(tmp_path):
    with pytest.raises(ValueError, match="min_size"):
        generate_synthetic_coco(tmp_path, SyntheticSpec(min_size=4))
