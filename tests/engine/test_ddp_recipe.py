"""``train_detector`` under 2 processes: its first iteration ends with the weights of a single
process that trains on the same global batch, and a killed-and-resumed run ends exactly like an
uninterrupted one.

This checks the recipe's distributed path end to end: the model wrapped in DDP, the global
batch split over the processes (each loads ``batch_size / 2`` images), the sampler's shards
forming together the single process's batch, and the averaged gradients applied by the same
optimizer. RetinaNet in float64 (its loss is deterministic and, with the normaliser started at
``INIT / P`` per process, exactly the single-process loss; see ``test_ddp.py``); images of one
size and no random augmentation, so the processes see exactly what the single process sees.
"""

from __future__ import annotations

from pathlib import Path

import torch

from detforge.data.datasets.coco import load_coco_json
from detforge.data.datasets.synthetic import SyntheticSpec, generate_synthetic_coco
from detforge.data.mapper import DatasetMapper
from detforge.engine.launch import launch
from detforge.engine.recipe import TrainSettings, train_detector
from detforge.modeling.zoo import faster_rcnn_r18_fpn_tiny, retinanet_r18_fpn_tiny
from detforge.utils.comm import get_world_size

INIT = 100.0


def _run(files: dict[str, str], output_dir: str) -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    world = get_world_size()
    records = load_coco_json(files["train_json"], files["train_images"])
    mapper = DatasetMapper([], is_train=True, image_format="RGB")
    torch.manual_seed(0)
    model = retinanet_r18_fpn_tiny(num_classes=4).double()
    model.loss_normalizer = INIT / world
    settings = TrainSettings(
        output_dir=output_dir,
        max_iter=1,
        batch_size=2,
        base_lr=0.01,
        warmup_iters=0,
        num_workers=0,
        checkpoint_period=100,
        log_period=1,
        device="cpu",
    )
    train_detector(model, records, mapper, settings)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def test_two_process_recipe_matches_one_process(tmp_path: Path) -> None:
    spec = SyntheticSpec(num_train=4, num_val=1, min_size=64, max_size=64, max_objects=3, seed=1)
    files = {k: str(v) for k, v in generate_synthetic_coco(tmp_path / "data", spec).items()}
    torch.manual_seed(0)  # as in _run: the weights before the step
    start = retinanet_r18_fpn_tiny(num_classes=4).double().state_dict()
    single = _run(files, str(tmp_path / "single"))
    ddp = launch(_run, num_processes=2, args=(files, str(tmp_path / "ddp")))
    assert ddp[0].keys() == single.keys()
    moved = 0
    for name, want in single.items():
        torch.testing.assert_close(ddp[0][name], want, rtol=1e-7, atol=1e-10, msg=name)
        torch.testing.assert_close(ddp[1][name], want, rtol=1e-7, atol=1e-10, msg=name)
        moved += int(not torch.equal(want, start[name].to(want.dtype)))
    assert moved > 50  # the step changed the weights (so equality is not trivially true)
    assert (tmp_path / "ddp" / "model_final.pth").is_file()


def _run_two_stage(files: dict[str, str], output_dir: str, max_iter: int, resume: bool) -> dict:
    torch.set_num_threads(1)
    records = load_coco_json(files["train_json"], files["train_images"])
    mapper = DatasetMapper([], is_train=True, image_format="RGB")
    torch.manual_seed(0)
    model = faster_rcnn_r18_fpn_tiny(num_classes=4)
    settings = TrainSettings(
        output_dir=output_dir,
        max_iter=max_iter,
        batch_size=2,
        base_lr=0.01,
        steps=(100,),
        warmup_iters=0,
        num_workers=0,
        checkpoint_period=100,
        log_period=1,
        device="cpu",
        resume=resume,
    )
    train_detector(model, records, mapper, settings)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def test_two_process_resume_is_exact(tmp_path: Path) -> None:
    # Faster R-CNN samples anchors and proposals at random, differently in each process: a
    # resumed 2-process run matches the uninterrupted one only if every process gets its own
    # RNG state back from the checkpoint.
    spec = SyntheticSpec(num_train=4, num_val=1, min_size=64, max_size=64, max_objects=3, seed=2)
    files = {k: str(v) for k, v in generate_synthetic_coco(tmp_path / "data", spec).items()}
    straight = launch(_run_two_stage, num_processes=2, args=(files, str(tmp_path / "a"), 3, False))
    launch(_run_two_stage, num_processes=2, args=(files, str(tmp_path / "b"), 2, False))
    resumed = launch(_run_two_stage, num_processes=2, args=(files, str(tmp_path / "b"), 3, True))
    for name, want in straight[0].items():
        assert torch.equal(resumed[0][name], want), name
        assert torch.equal(resumed[1][name], want), name
