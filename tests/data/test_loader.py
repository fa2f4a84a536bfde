from itertools import islice

import numpy as np
import pytest

from detforge.data.errors import DataError
from detforge.data.loader import MapDataset, build_test_loader, build_train_loader


def _records(n: int = 12) -> list[dict]:
    return [
        {"file_name": f"img{i}.jpg", "height": 10 + i, "width": 20 if i % 3 else 5, "image_id": i}
        for i in range(n)
    ]


def _mapper(record: dict, rng: np.random.Generator) -> dict:
    if record["image_id"] == 4:
        raise DataError("truncated image", path=record["file_name"])
    return {"image_id": record["image_id"], "noise": float(rng.random()), "w": record["width"]}


def test_map_dataset_replaces_bad_samples_and_reports_them():
    ds = MapDataset(_records(), _mapper, seed=0, rank=0)
    sample = ds[(0, 4)]
    assert sample["image_id"] != 4
    assert sample["skipped"][0]["file_name"] == "img4.jpg"
    assert "truncated image" in sample["skipped"][0]["error"]
    assert "skipped" not in ds[(0, 3)]
    with pytest.raises(DataError, match="truncated"):
        MapDataset(_records(), _mapper, strict=True, rank=0)[(0, 4)]


def test_map_dataset_randomness_depends_on_position_only():
    ds = MapDataset(_records(), _mapper, seed=5, rank=0)
    assert ds[(7, 1)]["noise"] == ds[(7, 1)]["noise"]
    assert ds[(7, 1)]["noise"] != ds[(8, 1)]["noise"]


def test_map_dataset_gives_up_on_a_broken_dataset():
    def broken(record, rng):
        raise DataError("unreadable", path=record["file_name"])

    with pytest.raises(RuntimeError, match="bad samples in a row"):
        MapDataset(_records(), broken, rank=0)[(0, 0)]


def test_train_loader_same_batches_with_and_without_workers():
    recs = _records()
    a = list(islice(iter(build_train_loader(recs, _mapper, batch_size=2, num_workers=0)), 6))
    b = list(islice(iter(build_train_loader(recs, _mapper, batch_size=2, num_workers=2)), 6))
    assert a == b
    for batch in a:
        assert len(batch) == 2
        assert len({s["w"] >= 10 + s["image_id"] for s in batch}) == 1  # aspect-ratio groups


@pytest.mark.parametrize("grouping", [False, True])
def test_train_loader_resume(grouping):
    def batches(start_batch, n):
        loader = build_train_loader(
            _records(), _mapper, batch_size=2, seed=3, aspect_ratio_grouping=grouping,
            start_batch=start_batch,
        )  # fmt: skip
        return list(islice(iter(loader), n))

    full = batches(0, 10)
    assert batches(6, 4) == full[6:]


def test_test_loader_in_order():
    recs = [r for r in _records() if r["image_id"] != 4]
    batches = list(build_test_loader(recs, _mapper, batch_size=3))
    assert [s["image_id"] for b in batches for s in b] == [r["image_id"] for r in recs]
