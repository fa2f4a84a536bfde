"""Runs and checkpoints: loading never runs code, resume never loses work, seeds repeat, one
checkpoint format, and the library stands without the command line."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from detforge.checkpoint.io import load_checkpoint, save_checkpoint
from detforge.cli import main
from detforge.data.datasets.synthetic import SyntheticSpec, generate_synthetic_coco
from detforge.engine.run_spec import RunSpec, resolve_run
from detforge.inference import load_model
from detforge.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
FAST = ["num_workers=0", "batch_size=2", "warmup_iters=1", "log_period=1", "checkpoint_period=2"]
RESIZE = ["--min-size", "64", "--max-size", "100"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    spec = SyntheticSpec(num_train=4, num_val=2, min_size=64, max_size=80, max_objects=2, seed=1)
    return generate_synthetic_coco(tmp_path_factory.mktemp("synthetic"), spec)


def _train(data: dict[str, Path], out: Path, *extra: str) -> int:
    args = ["--coco-json", str(data["train_json"]), "--image-root", str(data["train_images"])]
    flags = [e for e in extra if "=" not in e]  # argparse wants the key=value items together
    items = [e for e in extra if "=" in e]
    return main(["train", *args, "--output", str(out), *RESIZE, *flags, *FAST, *items])


@pytest.fixture(scope="module")
def run_dir(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "r"
    assert _train(data, out, "max_iter=4") == 0
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


# --- loading never runs code --------------------------------------------------------------


def _payload(marker: Path) -> dict:
    return {"_target_": "subprocess.run", "args": ["touch", str(marker)]}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("layout", ["spec_config", "legacy_config", "nested_locate"])
def test_poisoned_checkpoints_never_run_their_payload(
    run_dir: Path, data: dict[str, Path], tmp_path: Path, suffix: str, layout: str
) -> None:
    pytest.importorskip("safetensors") if suffix == ".safetensors" else None
    marker = tmp_path / "pwned"
    good = load_checkpoint(run_dir / "model_final.pth")
    spec = dict(good["metadata"]["model_spec"])
    metadata: dict = {"class_names": spec["class_names"]}
    config = None
    if layout == "spec_config":
        metadata["model_spec"] = {**spec, "builder": None, "config": _payload(marker)}
    elif layout == "legacy_config":
        metadata["model_from_config"] = True
        config = {"model": _payload(marker)}
    else:
        inner = {"_target_": "detforge.config.lazy.locate", "path": "os.system"}
        tree = {"_target_": "detforge.modeling.zoo.faster_rcnn_r18_fpn_tiny", "mask": inner}
        metadata["model_spec"] = {**spec, "builder": None, "config": tree}
    bad = tmp_path / f"bad{suffix}"
    save_checkpoint(bad, good["model"], config=config, metadata=metadata)
    image = str(data["val_images"] / "000000.jpg")
    with pytest.raises(ValueError, match="refusing _target_|no metadata naming"):
        load_model(bad)
    with pytest.raises(ValueError, match="refusing _target_|no metadata naming"):
        Predictor.from_checkpoint(bad)
    assert (
        main(["predict", "--weights", str(bad), "--input", image, "--output", str(tmp_path)]) == 2
    )
    coco = ["--coco-json", str(data["val_json"]), "--image-root", str(data["val_images"])]
    assert main(["eval", "--weights", str(bad), *coco]) == 2
    # Fine-tuning reads only the weights of --weights, never its config.
    assert _train(data, tmp_path / "ft", "--weights", str(bad), "max_iter=1") == 0
    assert not marker.exists()


def test_a_poisoned_run_folder_is_refused_on_resume(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    for key in ("model", "train"):
        out = tmp_path / f"run_{key}"
        shutil.copytree(run_dir, out)
        saved = yaml.safe_load((out / "config.yaml").read_text())
        saved = {"model": {"_target_": "detforge.modeling.zoo.faster_rcnn_r18_fpn_tiny"}}
        saved[key] = _payload(marker)
        run = yaml.safe_load((run_dir / "config.yaml").read_text())
        saved["run"] = {**run, "model": None, "config_file": "gone.py"}
        (out / "config.yaml").write_text(yaml.safe_dump(saved))
        assert main(["train", "--output", str(out), "--resume", "max_iter=5"]) == 2
        assert "refusing _target_ 'subprocess.run'" in capsys.readouterr().err
    assert not marker.exists()


# --- the library stands alone ---------------------------------------------------------------


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "detforge").rglob("*.py")
        if p.name != "__main__.py"
    )
    modules = [m.removesuffix(".__init__") for m in modules]
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    for module in modules:  # one interpreter each: an import cycle cannot hide behind another
        done = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True)
        assert done.returncode == 0, f"{module}: {done.stderr.strip().splitlines()[-1:]}"


def test_only_the_command_line_imports_the_command_line() -> None:
    offenders = []
    for path in (ROOT / "detforge").rglob("*.py"):
        if "cli" in path.relative_to(ROOT / "detforge").parts:
            continue
        text = path.read_text()
        if "detforge.cli" in text.replace("``detforge.cli``", ""):
            lines = [ln for ln in text.splitlines() if "import" in ln and "detforge.cli" in ln]
            if lines:
                offenders.append(f"{path.relative_to(ROOT)}: {lines[0].strip()}")
    assert offenders == []


# --- one run spec -----------------------------------------------------------------------------


def test_resolve_run_applies_the_documented_order() -> None:
    config = {"config_file": "c.py", "data": {"voc": "A"}, "settings": {"max_iter": 10}}
    saved = {"data": {"voc": "B"}, "settings": {"max_iter": 20, "base_lr": 0.5}}
    cli = {"settings": {"max_iter": 30}, "resize": {"max_size": 500}}
    spec = resolve_run(config, saved, cli)
    assert spec.config_file == "c.py" and spec.model is None
    assert spec.data == {"voc": "B"}  # saved run over config
    assert spec.settings.max_iter == 30 and spec.settings.base_lr == 0.5  # cli over saved
    assert spec.max_size == 500
    assert (
        resolve_run(config, {"model": "retinanet_r18_fpn_tiny"}).model == "retinanet_r18_fpn_tiny"
    )
    # a pure function: round trip through its own plain form, and no argument is changed
    assert resolve_run(spec.to_dict()) == spec
    assert saved == {"data": {"voc": "B"}, "settings": {"max_iter": 20, "base_lr": 0.5}}
    with pytest.raises(ValueError, match="checkpoint_period"):
        resolve_run({"settings": {"checkpoint_period": 0}})
    with pytest.raises(ValueError, match="did you mean max_iter"):
        resolve_run({"settings": {"max_iters": 3}})
    assert isinstance(resolve_run(), RunSpec)


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ("checkpoint_period=0", "checkpoint_period"),
        ("batch_size=0", "batch_size"),
        ("num_workers=-1", "num_workers"),
        ("keep_last=0", "keep_last"),
        ("device=gpu", "device"),
        ("max_iter=-5", "max_iter"),
    ],
)
def test_settings_are_range_checked_before_any_data_is_read(
    item: str, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nothing.json")
    code = main(["train", "--coco-json", missing, "--output", str(tmp_path / "o"), item])
    err = capsys.readouterr().err
    assert code == 2 and field in err and "nothing.json" not in err


# --- seeds repeat -----------------------------------------------------------------------------


def test_two_seeded_command_line_runs_give_identical_weights(
    data: dict[str, Path], tmp_path: Path
) -> None:
    for name in ("a", "b"):
        assert _train(data, tmp_path / name, "max_iter=2", "seed=3") == 0
    a, b = (
        _weights(tmp_path / "a" / "model_final.pth"),
        _weights(tmp_path / "b" / "model_final.pth"),
    )
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _train(data, tmp_path / "c", "max_iter=2", "seed=4") == 0
    c = _weights(tmp_path / "c" / "model_final.pth")
    assert any(not torch.equal(a[k], c[k]) for k in a)


# --- resume never loses work ---------------------------------------------------------------


def _iteration(path: Path) -> int:
    return int(load_checkpoint(path)["extra"]["trainer"]["iteration"])


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_resume_falls_back_when_the_named_checkpoint_is_gone(
    data: dict[str, Path], tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    assert _train(data, out, "max_iter=6", "checkpoint_period=2", "keep_last=3") == 0
    # Pretend the run was killed after iteration 5's checkpoint: final removed, the newest
    # periodic checkpoint (iteration 3) named in last_checkpoint but damaged.
    (out / "model_final.pth").unlink()
    newest = out / "model_0000003.pth"
    (out / "last_checkpoint").write_text(newest.name)
    if damage == "missing":
        newest.unlink()
    else:
        newest.write_bytes(newest.read_bytes()[:1000])
    (out / ".model_0000005.pth.abc.tmp").write_bytes(b"half")  # an interrupted write
    older = _weights(out / "model_0000001.pth")
    assert _train(data, out, "--resume", "max_iter=6") == 0
    assert "trying an older one" in caplog.text or "does not exist" in caplog.text
    assert "training from iteration 2 to 6" in caplog.text  # from model_0000001, not from 0
    assert _iteration(out / "model_final.pth") == 5
    assert not (out / ".model_0000005.pth.abc.tmp").exists()
    assert any(not torch.equal(v, older[k]) for k, v in _weights(out / "model_final.pth").items())


def test_resume_with_no_readable_checkpoint_is_an_error_not_a_restart(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert _train(data, out, "max_iter=2") == 0
    for p in out.glob("model_*.pth"):
        p.write_bytes(b"garbage")
    before = {p.name: p.read_bytes() for p in out.glob("model_*.pth")}
    assert _train(data, out, "--resume", "max_iter=4") == 2
    assert "no readable checkpoint" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.glob("model_*.pth")} == before


def test_a_finetune_killed_before_its_first_checkpoint_resumes_from_its_weights(
    run_dir: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    source = run_dir / "model_final.pth"
    out = tmp_path / "ft"
    # A fine-tune killed before its first checkpoint leaves only config.yaml and metrics.
    assert _train(data, tmp_path / "probe", "--weights", str(source), "max_iter=1") == 0
    out.mkdir()
    shutil.copy(tmp_path / "probe" / "config.yaml", out / "config.yaml")
    (out / "metrics.json").write_text('{"iteration": 0, "total_loss": 1.0}\n')
    assert _train(data, out, "--resume", "max_iter=1") == 0
    # The resumed run started from the fine-tuning weights, as the uninterrupted one did.
    a, b = _weights(tmp_path / "probe" / "model_final.pth"), _weights(out / "model_final.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (out / "metrics.json").read_text().splitlines()
    assert sum('"total_loss"' in ln and json.loads(ln)["iteration"] == 0 for ln in lines) == 1


def test_resume_at_max_iter_finishes_the_run(
    run_dir: Path, data: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    (out / "model_final.pth").unlink()
    (out / "last_checkpoint").write_text("model_0000003.pth")
    shutil.copy(run_dir / "model_final.pth", out / "model_0000003.pth")  # all 4 iterations done
    val = ["--val-coco-json", str(data["val_json"]), "--val-image-root", str(data["val_images"])]
    assert _train(data, out, "--resume", *val, "max_iter=4") == 0
    assert "finishing it" in caplog.text and (out / "model_final.pth").is_file()
    assert '"bbox/AP"' in (out / "metrics.json").read_text()  # the final evaluation ran
    assert _train(data, out, "--resume", "max_iter=2") == 2  # fewer than done: says why


def test_metrics_lines_are_not_duplicated_by_a_resume(run_dir: Path, data: dict[str, Path],
                                                      tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    (out / "model_final.pth").unlink()
    (out / "last_checkpoint").write_text("model_0000001.pth")  # killed after iteration 3
    assert _train(data, out, "--resume", "max_iter=4") == 0
    lines = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    iterations = [m["iteration"] for m in lines if "total_loss" in m]
    assert iterations == sorted(set(iterations)) == [0, 1, 2, 3]


def test_a_new_run_into_a_run_folder_is_refused(
    run_dir: Path, data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    before = (out / "model_final.pth").read_bytes()
    assert _train(data, out, "max_iter=1") == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--output" in err and "--overwrite" in err
    assert (out / "model_final.pth").read_bytes() == before
    assert _train(data, out, "--overwrite", "max_iter=1") == 0
    assert _iteration(out / "model_final.pth") == 0


# --- one checkpoint format ------------------------------------------------------------------


def test_trainer_checkpoints_and_safetensors_load_everywhere(
    run_dir: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("safetensors")
    ckpt = load_checkpoint(run_dir / "model_final.pth")  # the trainer writes checkpoint.io's format
    st = tmp_path / "model.safetensors"
    save_checkpoint(st, ckpt["model"], metadata=ckpt["metadata"])
    image = str(data["val_images"] / "000000.jpg")
    a = Predictor.from_checkpoint(run_dir / "model_final.pth", device="cpu")(image)
    b = Predictor.from_checkpoint(st, device="cpu")(image)
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
    coco = ["--coco-json", str(data["val_json"]), "--image-root", str(data["val_images"])]
    assert main(["eval", "--weights", str(st), *coco]) == 0
    assert main(["predict", "--weights", str(st), "--input", image, "--output", str(tmp_path)]) == 0


def test_resume_keeps_model_best_and_the_ema(data: dict[str, Path], tmp_path: Path) -> None:
    import dataclasses

    from detforge.data.augmentation import ResizeShortestEdge
    from detforge.data.datasets.coco import load_coco_json
    from detforge.data.mapper import DatasetMapper
    from detforge.engine.recipe import TrainSettings, seed_everything, train_detector
    from detforge.modeling.zoo import faster_rcnn_r18_fpn_tiny

    records = load_coco_json(data["train_json"], data["train_images"])
    resize = ResizeShortestEdge((64,), max_size=100, sample_style="choice")
    mapper = DatasetMapper([resize], is_train=True, image_format="RGB")
    settings = TrainSettings(
        output_dir=str(tmp_path / "run"), max_iter=2, batch_size=2, num_workers=0,
        warmup_iters=1, checkpoint_period=1, log_period=1, ema_decay=0.5,
    )  # fmt: skip
    scores = iter([5.0, 3.0])  # the resumed run's evaluation is worse than the first one's

    def evaluate(model: torch.nn.Module) -> dict[str, dict[str, float]]:
        return {"bbox": {"AP": next(scores)}}

    seed_everything(0)
    train_detector(faster_rcnn_r18_fpn_tiny(4), records, mapper, settings, evaluate=evaluate)
    best = _weights(tmp_path / "run" / "model_best.pth")
    ema = load_checkpoint(tmp_path / "run" / "model_final.pth")["extra"]["ema"]
    seed_everything(0)
    resumed = dataclasses.replace(settings, max_iter=3, resume=True)
    trainer = train_detector(
        faster_rcnn_r18_fpn_tiny(4), records, mapper, resumed, evaluate=evaluate
    )
    after = _weights(tmp_path / "run" / "model_best.pth")
    assert all(torch.equal(best[k], after[k]) for k in best)  # 3.0 < 5.0: model_best kept
    ema_hook = next(h for h in trainer.hooks if type(h).__name__ == "EMAHook")
    # One more update of the saved average (decay 0.5), not a fresh average of the weights.
    final = _weights(tmp_path / "run" / "model_final.pth")
    for k, v in ema.items():
        if v.is_floating_point():
            torch.testing.assert_close(ema_hook.ema.state[k], 0.5 * v + 0.5 * final[k])


# --- faults: one line, nothing lost -----------------------------------------------------------


def test_resume_with_another_model_is_one_line(
    run_dir: Path, data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    before = {p.name: p.read_bytes() for p in out.glob("*.pth")}
    code = _train(data, out, "--resume", "--model", "retinanet_r18_fpn_tiny", "max_iter=6")
    err = capsys.readouterr().err
    assert code == 2 and "holds another model" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.glob("*.pth")} == before


def test_a_diverged_run_ends_with_one_line(
    data: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from detforge.modeling.detectors.generalized_rcnn import GeneralizedRCNN

    real = GeneralizedRCNN.forward

    def diverging(self, images, targets=None, **kwargs):  # type: ignore[no-untyped-def]
        out = real(self, images, targets, **kwargs)
        if self.training:
            out["loss_cls"] = out["loss_cls"] * float("nan")
        return out

    monkeypatch.setattr(GeneralizedRCNN, "forward", diverging)
    assert _train(data, tmp_path / "run", "max_iter=3") == 2
    err = capsys.readouterr().err
    assert "diverged" in err and len(err.strip().splitlines()) == 1


def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_old_file(tmp_path: Path) -> None:
    # A file-size limit (as a full disk would) while overwriting a checkpoint.
    path = tmp_path / "model.pth"
    save_checkpoint(path, {"w": torch.zeros(10)}, metadata={"v": "old"})
    script = f"""
import resource, signal, sys, torch
from detforge.checkpoint.io import CheckpointWriteError, save_checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
try:
    save_checkpoint({str(path)!r}, {{"w": torch.zeros(1_000_000)}}, metadata={{"v": "new"}})
except CheckpointWriteError as e:
    print(e)
    sys.exit(3)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    message = done.stdout.strip()
    assert str(path) in message and "File too large" in message and len(message.splitlines()) == 1
    assert load_checkpoint(path)["metadata"]["v"] == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux")
def test_workers_exit_when_their_launcher_is_killed(data: dict[str, Path], tmp_path: Path) -> None:
    import os
    import signal
    import time

    args = ["--coco-json", str(data["train_json"]), "--image-root", str(data["train_images"])]
    command = [sys.executable, "-m", "detforge.cli", "train", *args, "--output",
               str(tmp_path / "run"), *RESIZE, "--num-processes", "2", "max_iter=100000",
               *FAST[1:], "num_workers=0", "batch_size=2"]  # fmt: skip
    launcher = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (tmp_path / "run" / "config.yaml").exists():
            time.sleep(0.5)  # the workers are training once the run folder is written
        workers = [p for p in _children(launcher.pid) if _alive(p)]
        assert len(workers) >= 2, "the workers did not start"
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert not any(_alive(p) for p in workers)
    finally:
        launcher.kill()
        for p in _children(launcher.pid):
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)


def test_sigterm_stops_a_run_with_a_checkpoint_and_it_resumes(
    data: dict[str, Path], tmp_path: Path
) -> None:
    import signal
    import time

    out = tmp_path / "run"
    args = ["--coco-json", str(data["train_json"]), "--image-root", str(data["train_images"])]
    command = [sys.executable, "-m", "detforge.cli", "train", *args, "--output", str(out),
               *RESIZE, "max_iter=100000", *FAST[:-1], "checkpoint_period=100000"]  # fmt: skip
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        metrics = out / "metrics.json"
        while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text()):
            time.sleep(0.2)  # a first iteration is done
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 143, err
    line = err.strip().splitlines()[-1]
    assert "stopped by SIGTERM" in line and "--resume" in line
    saved = sorted(out.glob("model_*.pth"))
    assert len(saved) == 1 and str(saved[0]) in line
    done = _iteration(saved[0])
    assert _train(data, out, "--resume", f"max_iter={done + 2}") == 0
    assert _iteration(out / "model_final.pth") == done + 1


def test_predict_and_eval_skip_unreadable_images_and_go_on(
    run_dir: Path, data: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = tmp_path / "images"
    shutil.copytree(data["val_images"], images)
    names = sorted(p.name for p in images.iterdir())
    (images / names[0]).write_bytes(b"not a jpeg")  # one corrupt image
    weights = str(run_dir / "model_final.pth")
    out = tmp_path / "pred"
    args = ["--input", str(images), "--output", str(out), "--score-threshold", "0"]
    assert main(["predict", "--weights", weights, *args]) == 0
    preds = json.loads((out / "predictions.json").read_text())
    assert [Path(p["file"]).name for p in preds] == names[1:]
    assert "1 inputs could not be read" in caplog.text and names[0] in caplog.text
    coco = ["--coco-json", str(data["val_json"]), "--image-root", str(images)]
    assert main(["eval", "--weights", weights, *coco]) == 0
    assert "1 images could not be read" in caplog.text
    for name in names[1:]:
        (images / name).write_bytes(b"broken too")
    assert main(["predict", "--weights", weights, *args]) == 2  # nothing could be processed
    assert main(["eval", "--weights", weights, *coco]) == 2
    browse = ["browse", *coco, "--output", str(tmp_path / "browse")]
    assert main(browse) == 2


def test_two_seeded_python_api_runs_give_identical_weights(
    data: dict[str, Path], tmp_path: Path
) -> None:
    from detforge.data.augmentation import RandomFlip, ResizeShortestEdge
    from detforge.data.datasets.coco import load_coco_json
    from detforge.data.mapper import DatasetMapper
    from detforge.engine.recipe import TrainSettings, seed_everything, train_detector
    from detforge.modeling.zoo import retinanet_r18_fpn_tiny

    records = load_coco_json(data["train_json"], data["train_images"])
    augment = [ResizeShortestEdge((64, 80), max_size=100, sample_style="choice"), RandomFlip()]
    mapper = DatasetMapper(augment, is_train=True, image_format="RGB")
    weights = []
    for name in ("a", "b"):
        settings = TrainSettings(
            output_dir=str(tmp_path / name), max_iter=2, batch_size=2, num_workers=0,
            warmup_iters=1, seed=7,
        )  # fmt: skip
        seed_everything(settings.seed)  # before building: the initial weights are drawn here
        model = retinanet_r18_fpn_tiny(4)
        train_detector(model, records, mapper, settings)
        weights.append(_weights(tmp_path / name / "model_final.pth"))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
