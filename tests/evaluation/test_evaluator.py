"""inference_on_dataset with fake models, DatasetEvaluators, and the distributed gather helpers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from detforge.data.datasets.coco import load_coco_json
from detforge.data.datasets.synthetic import SyntheticSpec, generate_synthetic_coco
from detforge.evaluation.coco_eval import COCOEvaluator
from detforge.evaluation.evaluator import DatasetEvaluators, inference_on_dataset
from detforge.evaluation.voc_eval import VOCEvaluator
from detforge.structures.instances import Instances
from detforge.utils import comm


class GroundTruthDetector(nn.Module):
    """Returns each image's ground truth; the image's pixels hold the record's index."""

    def __init__(self, records: list[dict[str, Any]], slow_calls: int = 0, delay: float = 0.0):
        super().__init__()
        self.records = records
        self.slow_calls, self.delay = slow_calls, delay
        self.calls: list[tuple[bool, bool, Any]] = []
        self.layer = nn.Linear(1, 1)

    def forward(self, images: list[torch.Tensor], *, original_sizes: Any = None) -> list[Instances]:
        self.calls.append((self.training, torch.is_grad_enabled(), original_sizes))
        if len(self.calls) <= self.slow_calls:
            time.sleep(self.delay)
        outputs = []
        for image, size in zip(images, original_sizes, strict=True):
            anns = self.records[int(image[0, 0, 0])]["annotations"]
            outputs.append(
                Instances(
                    size,
                    boxes=torch.tensor([a["bbox"] for a in anns]).reshape(-1, 4),
                    labels=torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
                    scores=torch.ones(len(anns)),
                )
            )
        return outputs


def _batches(records: list[dict[str, Any]], batch_size: int) -> list[list[dict[str, Any]]]:
    inputs = [
        {
            # a half-size "resized" image whose pixels hold the record index
            "image": torch.full((3, r["height"] // 2, r["width"] // 2), i, dtype=torch.uint8),
            "height": r["height"],
            "width": r["width"],
            "image_id": r["image_id"],
        }
        for i, r in enumerate(records)
    ]
    return [inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size)]


@pytest.fixture(scope="module")
def synthetic_val(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    spec = SyntheticSpec(num_train=0, num_val=4, min_size=64, max_size=80, seed=5)
    paths = generate_synthetic_coco(tmp_path_factory.mktemp("syn"), spec)
    return paths["val_json"], load_coco_json(paths["val_json"], paths["val_images"])


class Recorder:
    """A minimal evaluator that records what it is given."""

    def __init__(self, group: str = "rec") -> None:
        self.group = group
        self.resets = 0
        self.seen: list[Any] = []

    def reset(self) -> None:
        self.resets += 1
        self.seen = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[Instances]) -> None:
        self.seen += [(x["image_id"], o.image_size) for x, o in zip(inputs, outputs, strict=True)]

    def evaluate(self) -> dict[str, dict[str, float]]:
        return {self.group: {"n": float(len(self.seen))}}


def test_inference_with_coco_evaluator_gives_perfect_ap(synthetic_val: tuple) -> None:
    json_file, records = synthetic_val
    model = GroundTruthDetector(records)
    model.train()
    rec = Recorder()
    ev = COCOEvaluator(json_file=json_file, tasks=("bbox",))
    results = inference_on_dataset(model, _batches(records, 3), [ev, rec])
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["rec"] == {"n": 4.0} and rec.resets == 1
    assert rec.seen == [(r["image_id"], (r["height"], r["width"])) for r in records]
    # eval mode and no autograd inside, original sizes passed, the training mode restored
    assert all(not training and not grad for training, grad, _ in model.calls)
    assert model.calls[0][2] == [(r["height"], r["width"]) for r in records[:3]]
    assert model.training and torch.is_grad_enabled()
    assert results["timing"]["num_images"] == 4.0


def test_timing_excludes_warmup(synthetic_val: tuple) -> None:
    _, records = synthetic_val
    model = GroundTruthDetector(records, slow_calls=2, delay=0.25)
    results = inference_on_dataset(model, _batches(records, 1), None, num_warmup=2)
    timing = results["timing"]
    assert set(results) == {"timing"}
    assert timing["total_s"] >= 0.5  # the warm-up calls are in the total ...
    assert timing["compute_s_per_image"] < 0.1  # ... but not in the per-image times
    assert timing["s_per_image"] < 0.1
    # With fewer batches than the warm-up, every batch is timed.
    model = GroundTruthDetector(records, slow_calls=1, delay=0.25)
    timing = inference_on_dataset(model, _batches(records[:1], 1), None, num_warmup=5)["timing"]
    assert timing["num_images"] == 1.0 and timing["compute_s_per_image"] >= 0.25


def test_inference_errors_and_evaluator_merging(synthetic_val: tuple) -> None:
    _, records = synthetic_val
    batch = _batches(records, 1)[0]
    del batch[0]["height"]
    with pytest.raises(ValueError, match=r"batch input 0 has no \['height'\]"):
        inference_on_dataset(GroundTruthDetector(records), [batch], None)
    with pytest.raises(ValueError, match="num_warmup"):
        inference_on_dataset(GroundTruthDetector(records), [], None, num_warmup=-1)
    bad_model = nn.Identity()
    bad_model.forward = lambda images, original_sizes=None: images[0]  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="must return a list of 1 Instances"):
        inference_on_dataset(bad_model, _batches(records, 1)[:1], None)
    with pytest.raises(ValueError, match="metric group 'rec'"):
        DatasetEvaluators([Recorder(), Recorder()]).evaluate()
    with pytest.raises(TypeError, match="evaluator 1"):
        DatasetEvaluators([Recorder(), object()])  # type: ignore[list-item]


def test_comm_without_distributed() -> None:
    assert comm.all_gather({"a": 1}) == [{"a": 1}]
    assert comm.gather([1, 2]) == [[1, 2]]
    comm.synchronize()
    with pytest.raises(ValueError, match="dst"):
        comm.gather(1, dst=1)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        records = [
            {
                "image_id": f"im{i}",
                "annotations": [{"bbox": [0.0, 0.0, 10.0, 10.0], "category_id": 0}],
            }
            for i in range(world)
        ]
        ev = VOCEvaluator(records, ("thing",), use_07_metric=False)
        # each rank sees one image; rank 1 misses its object, so the AP needs both ranks
        box = [0.0, 0.0, 10.0, 10.0] if rank == 0 else [50.0, 50.0, 60.0, 60.0]
        score = torch.tensor([0.9 if rank == 0 else 0.8])
        out = Instances(
            (64, 64), boxes=torch.tensor([box]), scores=score, labels=torch.zeros(1).long()
        )
        ev.process([{"image_id": f"im{rank}"}], [out])
        result = {
            "all_gather": comm.all_gather(rank),
            "gather": comm.gather(rank * 10),
            "voc": ev.evaluate(),
        }
        comm.synchronize()
        Path(out_dir, f"{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_gather_across_two_processes(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "0.json").read_text())
    r1 = json.loads((tmp_path / "1.json").read_text())
    assert r0["all_gather"] == r1["all_gather"] == [0, 1]
    assert r0["gather"] == [0, 10] and r1["gather"] == []
    assert r1["voc"] == {}
    # rank 0 evaluates both images: a hit (0.9), then a miss (0.8) -> recall 1/2, AP 50
    assert r0["voc"]["bbox"]["AP50"] == pytest.approx(50.0)
