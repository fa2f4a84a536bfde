"""The training loop on a tiny detector and the synthetic dataset: checkpoints, exact resume,
NaN handling, metrics files, gradient accumulation, EMA."""

import json
import math

import pytest
import torch

from detforge.data.augmentation import RandomFlip, ResizeShortestEdge
from detforge.data.datasets.coco import load_coco_json
from detforge.data.datasets.synthetic import SyntheticSpec, generate_synthetic_coco
from detforge.data.loader import build_train_loader
from detforge.data.mapper import DatasetMapper
from detforge.engine.checkpointer import Checkpointer
from detforge.engine.hooks import (
    EMAHook,
    EvalHook,
    MetricsWriter,
    ModelEMA,
    PeriodicCheckpointer,
    ProgressLogger,
)
from detforge.engine.train_loop import Trainer
from detforge.modeling.zoo import faster_rcnn_r18_fpn_tiny
from detforge.solver.lr_schedule import MultiStepSchedule, WarmupSchedule
from detforge.solver.param_groups import param_groups


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    spec = SyntheticSpec(num_train=8, num_val=0, min_size=64, max_size=80, max_objects=3)
    paths = generate_synthetic_coco(tmp_path_factory.mktemp("syn"), spec)
    return load_coco_json(paths["train_json"], paths["train_images"])


def _setup(records, out, *, max_iter, start_batch=0, iter_size=1, lr=0.01, period=2, extra=()):
    torch.manual_seed(0)
    model = faster_rcnn_r18_fpn_tiny(num_classes=4)
    opt = torch.optim.SGD(param_groups(model, base_lr=lr, weight_decay=1e-4), lr=lr, momentum=0.9)
    mapper = DatasetMapper(
        [ResizeShortestEdge((64, 72), max_size=100), RandomFlip()],
        is_train=True,
        image_format="RGB",
    )
    loader = build_train_loader(records, mapper, batch_size=2, seed=1, start_batch=start_batch)
    trainer = Trainer(
        model=model,
        optimizer=opt,
        data_loader=loader,
        max_iter=max_iter,
        lr_schedule=WarmupSchedule(MultiStepSchedule([4]), warmup_iters=2),
        iter_size=iter_size,
    )
    ckpt = Checkpointer(model, out, trainer=trainer, keep_last=2, metadata={"classes": 4})
    trainer.register_hooks([PeriodicCheckpointer(ckpt, period), *extra])
    return model, trainer, ckpt


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(records, tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        model, trainer, _ = _setup(records, tmp_path / "full", max_iter=6)
        trainer.train()
        full = _weights(model)

        # A run "killed" after iteration 3 (4 done; checkpoint model_0000003 written) ...
        model, trainer, _ = _setup(records, tmp_path / "cut", max_iter=4, period=4)
        trainer.train()
        # ... continued by a new process: resume, then build the loader from that point.
        found = Checkpointer(model, tmp_path / "cut").find_resumable()
        assert found is not None
        start = found[1]["extra"]["trainer"]["iteration"] + 1
        assert start == 4
        model, trainer, ckpt = _setup(records, tmp_path / "cut", max_iter=6, start_batch=start)
        assert ckpt.resume() == 4
        trainer.train()
        resumed = _weights(model)
    finally:
        torch.use_deterministic_algorithms(False)
    assert full.keys() == resumed.keys()
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=0, atol=0, msg=k)


def test_checkpoints_are_pruned_and_final_written(records, tmp_path):
    _, trainer, ckpt = _setup(records, tmp_path, max_iter=7, period=1)
    trainer.train()
    names = sorted(p.name for p in tmp_path.glob("model_*.pth"))
    assert names == ["model_0000004.pth", "model_0000005.pth", "model_final.pth"]
    assert ckpt.last_checkpoint().name == "model_final.pth"
    data = Checkpointer.load(tmp_path / "model_final.pth")
    assert data["extra"]["trainer"]["iteration"] == 6 and data["metadata"]["classes"] == 4
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(records, tmp_path):
    model, trainer, _ = _setup(records, tmp_path, max_iter=10, period=2)
    calls = {"n": 0}
    forward = model.forward

    def poisoned(*args, **kwargs):
        out = forward(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:  # iteration 3
            out["loss_cls"] = out["loss_cls"] * math.nan
        return out

    model.forward = poisoned
    with pytest.raises(FloatingPointError, match=r"iteration 3 .*loss_cls=nan"):
        trainer.train()
    assert trainer.failed
    names = sorted(p.name for p in tmp_path.glob("model_*.pth"))
    assert names == ["model_0000001.pth"]  # nothing written at or after the bad iteration


def test_metrics_json_tensorboard_progress_and_eval(records, tmp_path, caplog):
    writer = MetricsWriter(tmp_path, period=2)
    evals = []

    def fake_eval():
        evals.append(1)
        return {"bbox": {"AP": 10.0 * len(evals)}}

    _, trainer, ckpt = _setup(records, tmp_path, max_iter=4, period=100)
    hook = EvalHook(2, fake_eval, checkpointer=ckpt, writer=writer)
    trainer.register_hooks([writer, ProgressLogger(period=2), hook])
    with caplog.at_level("INFO", logger="detforge.engine.hooks"):
        trainer.train()
    lines = [json.loads(x) for x in (tmp_path / "metrics.json").read_text().splitlines()]
    train_lines = [x for x in lines if "total_loss" in x]
    assert [x["iteration"] for x in train_lines] == [1, 3]
    assert all(math.isfinite(x["total_loss"]) and "loss_rpn_cls" in x for x in train_lines)
    assert [x["bbox/AP"] for x in lines if "bbox/AP" in x] == [10.0, 20.0]
    assert (tmp_path / "model_best.pth").is_file() and hook.best == 20.0
    assert any("eta" in r.message and "4/4" in r.message for r in caplog.records)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert "total_loss" in acc.Tags()["scalars"]
    assert [e.step for e in acc.Scalars("total_loss")] == [1, 3]


def test_gradient_accumulation_counts_updates(records, tmp_path):
    _, trainer, _ = _setup(records, tmp_path, max_iter=3, iter_size=2, period=100)
    steps = {"n": 0}
    step = trainer.optimizer.step

    def counting_step(*a, **k):
        steps["n"] += 1
        return step(*a, **k)

    trainer.optimizer.step = counting_step
    batches = {"n": 0}
    next_batch = trainer._next_batch

    def counting_batch():
        batches["n"] += 1
        return next_batch()

    trainer._next_batch = counting_batch
    trainer.train()
    assert steps["n"] == 3 and batches["n"] == 6 and trainer.iter == 3


def test_ema_tracks_weights(records, tmp_path):
    model, trainer, ckpt = _setup(records, tmp_path, max_iter=2, period=100)
    ema = ModelEMA(model, decay=0.5)
    start = {k: v.clone() for k, v in ema.state.items()}
    trainer.register_hooks([EMAHook(ema, ckpt)])
    trainer.train()
    k = "roi_heads.box_predictor.cls_score.weight"
    assert not torch.equal(ema.state[k], start[k])
    assert not torch.equal(ema.state[k], model.state_dict()[k])
    with ema.apply_to(model):
        assert torch.equal(model.state_dict()[k], ema.state[k])
    assert "ema" in Checkpointer.load(tmp_path / "model_final.pth")["extra"]
