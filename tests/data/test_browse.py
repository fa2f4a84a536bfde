import numpy as np
from PIL import Image

from detforge.data.browse import browse_dataset
from detforge.data.catalog import DatasetMetadata
from detforge.data.datasets.coco import load_coco_json, load_coco_metadata
from detforge.data.datasets.synthetic import SyntheticSpec, generate_synthetic_coco


def test_browse_synthetic_and_broken_image(tmp_path):
    paths = generate_synthetic_coco(tmp_path / "syn", SyntheticSpec(num_train=3, num_val=1))
    records = load_coco_json(paths["train_json"], paths["train_images"])
    meta = DatasetMetadata.from_coco(load_coco_metadata(paths["train_json"]))
    broken = dict(records[0], file_name=str(tmp_path / "missing.jpg"))
    written = browse_dataset([*records, broken], meta, tmp_path / "out")
    assert len(written) == 3
    drawn = np.asarray(Image.open(written[0]))
    original = np.asarray(Image.open(records[0]["file_name"]))
    assert drawn.shape == original.shape
    assert np.abs(drawn.astype(int) - original).mean() > 1  # something was drawn


def test_browse_real_keypoints(shared_datasets, tmp_path):
    root = shared_datasets / "coco_kpts_mmpose_sample" / "tests" / "data" / "coco"
    records = load_coco_json(root / "test_coco.json", root)
    meta = DatasetMetadata.from_coco(load_coco_metadata(root / "test_coco.json"))
    written = browse_dataset(records, meta, tmp_path, limit=2)
    assert len(written) == 2 and all(p.stat().st_size > 0 for p in written)
