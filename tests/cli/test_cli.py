"""The `detforge` command line end to end, on tiny synthetic COCO data and a tiny VOC folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from detforge.checkpoint.io import save_checkpoint
from detforge.cli import main
from detforge.cli.datasets import CLIError
from detforge.cli.train import parse_settings
from detforge.data.datasets.synthetic import (
    SYNTHETIC_CLASSES,
    SyntheticSpec,
    generate_synthetic_coco,
)
from detforge.engine.recipe import TrainSettings
from detforge.modeling.zoo import build_model

FAST = ["num_workers=0", "batch_size=2", "warmup_iters=1", "log_period=1", "checkpoint_period=2"]
RESIZE = ["--min-size", "64", "--max-size", "100"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    spec = SyntheticSpec(num_train=6, num_val=3, min_size=64, max_size=80, max_objects=2, seed=0)
    return generate_synthetic_coco(tmp_path_factory.mktemp("synthetic"), spec)


def _coco_args(data: dict[str, Path], *, val: bool = True) -> list[str]:
    args = ["--coco-json", str(data["train_json"]), "--image-root", str(data["train_images"])]
    if val:
        args += [
            "--val-coco-json",
            str(data["val_json"]),
            "--val-image-root",
            str(data["val_images"]),
        ]
    return args


@pytest.fixture(scope="module")
def run_dir(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "coco"
    code = main(["train", *_coco_args(data), "--output", str(out), *RESIZE, "max_iter=4", *FAST])
    assert code == 0
    return out


def test_train_coco_writes_config_checkpoints_and_metrics(run_dir: Path) -> None:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"] == "faster_rcnn_r18_fpn_tiny"
    assert config["class_names"] == list(SYNTHETIC_CLASSES)
    assert config["settings"]["max_iter"] == 4 and config["settings"]["batch_size"] == 2
    assert config["resize"] == {"train_min_sizes": [64], "max_size": 100}
    assert Path(config["data"]["coco_json"]).is_absolute()
    ckpt = torch.load(run_dir / "model_final.pth", weights_only=True)
    assert ckpt["format"] == "detforge"  # the one checkpoint format (checkpoint.io)
    assert ckpt["metadata"]["model_spec"] == {
        "class_names": list(SYNTHETIC_CLASSES),
        "builder": "faster_rcnn_r18_fpn_tiny",
        "config": None,
        "model_kwargs": {},
        "input_format": "RGB",
        "pixel_mean": pytest.approx([123.675, 116.28, 103.53]),
        "pixel_std": pytest.approx([58.395, 57.12, 57.375]),
        "min_size": 64,
        "max_size": 100,
    }
    assert ckpt["extra"]["trainer"]["iteration"] == 3  # the last of iterations 0..3
    assert (run_dir / "model_0000001.pth").is_file()  # checkpoint_period=2
    lines = [json.loads(x) for x in (run_dir / "metrics.json").read_text().splitlines()]
    assert any("total_loss" in m for m in lines)
    assert any("bbox/AP" in m for m in lines)  # COCO evaluation on the validation json


def test_resume_continues_from_the_checkpoint(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "resumed"
    shutil.copytree(run_dir, out)
    # No data flags: the saved run's dataset, model, resize and settings are the defaults.
    assert main(["train", "--output", str(out), "--resume", "max_iter=6"]) == 0
    assert "training from iteration 4 to 6" in capsys.readouterr().out
    ckpt = torch.load(out / "model_final.pth", weights_only=True)
    assert ckpt["extra"]["trainer"]["iteration"] == 5
    assert yaml.safe_load((out / "config.yaml").read_text())["settings"]["max_iter"] == 6


def test_eval_from_checkpoint_prints_and_writes_ap(
    run_dir: Path, data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "metrics.json"
    args = ["--val-coco-json", str(data["val_json"]), "--val-image-root", str(data["val_images"])]
    code = main(
        ["eval", "--weights", str(run_dir / "model_final.pth"), *args, "--output", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "AP50" in printed and "bbox" in printed
    results = json.loads(out.read_text())
    assert 0.0 <= results["bbox"]["AP"] <= 100.0
    assert results["timing"]["num_images"] == 3
    # Sharded over 2 processes and gathered: the same metrics.
    out2 = tmp_path / "metrics2.json"
    weights = ["--weights", str(run_dir / "model_final.pth")]
    assert main(["eval", *weights, *args, "--output", str(out2), "--num-processes", "2"]) == 0
    sharded = json.loads(out2.read_text())
    assert sharded["bbox"] == results["bbox"]
    assert sharded["timing"]["num_images"] == 3


def test_predict_folder_writes_images_and_json(
    run_dir: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "pred"
    weights = str(run_dir / "model_final.pth")
    args = ["--input", str(data["val_images"]), "--output", str(out), "--score-threshold", "0"]
    assert main(["predict", "--weights", weights, *args]) == 0
    names = sorted(p.name for p in data["val_images"].iterdir())
    assert sorted(p.name for p in out.glob("*.jpg")) == names
    preds = json.loads((out / "predictions.json").read_text())
    assert [Path(p["file"]).name for p in preds] == names  # sorted order
    for p in preds:
        h, w = p["image_size"]
        with Image.open(p["file"]) as im:
            assert (w, h) == im.size
        assert len(p["boxes"]) == len(p["scores"]) == len(p["labels"]) == len(p["class_names"])
        assert [SYNTHETIC_CLASSES[k] for k in p["labels"]] == p["class_names"]
        boxes = np.array(p["boxes"]).reshape(-1, 4)
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w + 1e-3).all()
        assert all(0.0 <= s <= 1.0 for s in p["scores"])
    # A high threshold keeps only confident detections, on a single image input.
    single = tmp_path / "single"
    image = str(data["val_images"] / names[0])
    args = ["--input", image, "--output", str(single), "--score-threshold", "1"]
    assert main(["predict", "--weights", weights, *args]) == 0
    (entry,) = json.loads((single / "predictions.json").read_text())
    assert all(s >= 1.0 for s in entry["scores"])


def test_browse_writes_drawings(data: dict[str, Path], tmp_path: Path) -> None:
    args = ["--coco-json", str(data["val_json"]), "--image-root", str(data["val_images"])]
    assert main(["browse", *args, "--output", str(tmp_path / "b"), "--limit", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["000000.jpg", "000001.jpg"]


@pytest.mark.parametrize("command", ["train", "eval", "predict", "browse", "benchmark", "convert"])
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_top_level_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(c in text for c in ("train", "eval", "predict", "browse", "convert", "benchmark"))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["max_iters=5"], "did you mean max_iter"),
        (["max_iter=five"], "max_iter=five: expected int"),
        (["optimizer=Adam"], "must be one of SGD, AdamW"),
        (["model.fc_dim=3"], "need --config"),
        (["output_dir=x"], "--output"),
        (["--model", "faster_rcnn_r18_fpn_tiyn"], "did you mean faster_rcnn_r18_fpn_tiny"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    data: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    expected: str,
) -> None:
    code = main(["train", *_coco_args(data, val=False), "--output", str(tmp_path), *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_files_and_bare_checkpoints_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", "--weights", str(tmp_path / "nope.pth"), "--voc", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    bare = tmp_path / "bare.pth"
    save_checkpoint(bare, build_model("faster_rcnn_r18_fpn_tiny", num_classes=2))
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    assert main(["predict", "--weights", str(bare), "--input", str(image)]) == 2
    assert "no metadata 'class_names'" in capsys.readouterr().err
    assert main(["train", "--coco-json", str(tmp_path / "a.json"), "--image-root", "."]) == 2
    assert "a.json" in capsys.readouterr().err


def test_video_without_decoder_names_the_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("detforge.cli.predict._DECODERS", ("no_such_decoder_module",))
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 64)
    assert main(["predict", "--weights", "w.pth", "--input", str(video)]) == 2
    err = capsys.readouterr().err
    assert "needs a decoder" in err and "pip install av" in err


def _write_video(path: Path, frames: int) -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 96, 80, "yuv420p"
        for i in range(frames):
            image = np.full((80, 96, 3), 40, np.uint8)
            image[10 + 5 * i : 40 + 5 * i, 20:60] = (230, 200, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_predict_video_writes_frames_and_json(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = tmp_path / "clip.mp4"
    _write_video(video, frames=5)
    out = tmp_path / "pred"
    weights = str(run_dir / "model_final.pth")
    args = ["--weights", weights, "--input", str(video), "--output", str(out)]
    assert main(["predict", *args, "--frame-step", "2", "--score-threshold", "0"]) == 0
    entries = json.loads((out / "predictions.json").read_text())
    assert [e["frame"] for e in entries] == [0, 2, 4]
    assert all(e["image_size"] == [80, 96] and e["file"] == str(video) for e in entries)
    assert sorted(p.name for p in out.glob("*.jpg")) == [
        "clip_000000.jpg",
        "clip_000002.jpg",
        "clip_000004.jpg",
    ]
    with Image.open(out / "clip_000002.jpg") as drawn:
        assert drawn.size == (96, 80)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 10)
    to = ["--output", str(tmp_path / "broken_out")]  # the outputs are written even then
    assert main(["predict", "--weights", weights, "--input", str(broken), *to]) == 2
    err = capsys.readouterr().err
    assert "broken.mp4" in err and "cannot decode" in err and "Traceback" not in err


def _write_labelimg(root: Path) -> None:
    """Six 72x64 images with one or two coloured boxes each, and labelImg-style XML."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        image = np.full((64, 72, 3), 90, np.uint8)
        objects = []
        for name, colour in [("cat", (220, 40, 40)), ("dog", (40, 40, 220))][: 1 + i % 2]:
            x1, y1 = (int(v) for v in rng.integers(2, 30, size=2))
            x2, y2 = x1 + 30, y1 + 25
            image[y1:y2, x1:x2] = colour
            objects.append(
                f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1}"
                f"</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            )
        Image.fromarray(image).save(root / f"img{i}.png")
        (root / f"img{i}.xml").write_text(
            f"<annotation><filename>img{i}.png</filename><size><width>72</width>"
            f"<height>64</height><depth>3</depth></size>{''.join(objects)}</annotation>"
        )


def test_voc_folder_training_with_val_fraction_and_finetuning(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    voc = tmp_path / "labelimg"
    _write_labelimg(voc)
    out = tmp_path / "voc_run"
    weights = str(run_dir / "model_final.pth")  # 4 classes -> 2: class layers re-initialised
    args = ["--voc", str(voc), "--val-fraction", "0.34", "--weights", weights, *RESIZE]
    assert main(["train", *args, "--output", str(out), "max_iter=2", *FAST]) == 0
    assert "re-initialised for a new number of classes 4" in capsys.readouterr().out
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["class_names"] == ["cat", "dog"]
    metrics = (out / "metrics.json").read_text()
    assert '"bbox/AP50"' in metrics and '"bbox/AP50-cat"' in metrics  # VOC evaluation ran
    # eval on the same folder with the checkpoint's class order
    assert main(["eval", "--weights", str(out / "model_final.pth"), "--voc", str(voc)]) == 0
    assert "AP50" in capsys.readouterr().out


def test_config_run_rebuilds_the_model_from_the_checkpoint(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = Path(__file__).resolve().parents[2] / "configs" / "faster_rcnn_r18_fpn_tiny.py"
    out = tmp_path / "cfg_run"
    args = ["--config", str(config), "--output", str(out), *RESIZE, "model.fc_dim=128"]
    assert main(["train", *_coco_args(data, val=False), *args, "max_iter=1", *FAST]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["fc_dim"] == 128 and saved["model"]["num_classes"] == 4
    assert saved["run"]["config_file"] == str(config) and saved["run"]["model"] is None
    pred = tmp_path / "pred"
    image = str(data["val_images"] / "000000.jpg")
    weights = str(out / "model_final.pth")
    assert main(["predict", "--weights", weights, "--input", image, "--output", str(pred)]) == 0
    assert (pred / "000000.jpg").is_file()
    bad = ["--config", str(config), "--output", str(tmp_path / "x"), "model.fc_dimm=1"]
    code = main(["train", *_coco_args(data, val=False), *bad])
    assert code == 2 and "'fc_dimm'; did you mean fc_dim" in capsys.readouterr().err


def _write_run_config(path: Path, data: dict[str, Path], out: Path) -> Path:
    """A config file describing a whole run: model, data, sizes, settings and output folder."""
    path.write_text(
        f"""
from detforge.config import LazyCall as L
from detforge.engine.recipe import TrainSettings
from detforge.modeling.zoo import faster_rcnn_r18_fpn_tiny

model = L(faster_rcnn_r18_fpn_tiny)(num_classes=1)
dataloader = dict(
    coco_json={str(data["train_json"])!r},
    image_root={str(data["train_images"])!r},
    min_size=64,
    max_size=100,
)
train = L(TrainSettings)(
    output_dir={str(out)!r}, max_iter=3, batch_size=2, num_workers=0, warmup_iters=1,
    checkpoint_period=2, log_period=1,
)
"""
    )
    return path


def test_a_config_file_alone_describes_the_run(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "from_config"
    config = _write_run_config(tmp_path / "run.py", data, out)
    assert main(["train", "--config", str(config)]) == 0  # no data flags, no --output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    run = saved["run"]
    assert run["settings"]["max_iter"] == 3 and run["settings"]["batch_size"] == 2
    assert run["resize"] == {"train_min_sizes": [64], "max_size": 100}
    assert run["data"]["coco_json"] == str(data["train_json"])
    assert saved["model"]["num_classes"] == len(SYNTHETIC_CLASSES)  # from the data
    assert (out / "model_final.pth").is_file()
    # Command-line items and flags win over the config: extend the finished run by resuming.
    args = ["--config", str(config), "--output", str(out), "--resume", "train.max_iter=4"]
    assert main(["train", *args]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["run"]["settings"]["max_iter"] == 4
    rows = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]  # 0-based: iteration 3 is the 4th


def test_config_dataloader_keys_are_checked(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_run_config(tmp_path / "run.py", data, tmp_path / "out")
    config.write_text(config.read_text().replace("image_root=", "image_roots="))
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "dataloader.image_roots" in err and "did you mean image_root" in err
    assert main(["train", "--config", str(tmp_path / "missing.py")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_config_mapper_replaces_the_training_mapper(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "mapper_run"
    config = _write_run_config(tmp_path / "run.py", data, out)
    text = config.read_text().replace(
        "    max_size=100,\n",
        "    max_size=100,\n    mapper=L(DatasetMapper)(\n"
        "        augmentations=[L(ResizeShortestEdge)(short_edge_length=48, max_size=60),"
        " L(RandomBrightness)(intensity_min=0.8, intensity_max=1.2)],\n"
        "        is_train=True, image_format='RGB'),\n",
    )
    text = (
        "from detforge.data.augmentation import RandomBrightness, ResizeShortestEdge\n"
        "from detforge.data.mapper import DatasetMapper\n" + text
    )
    config.write_text(text)
    assert main(["train", "--config", str(config), "train.max_iter=1"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["dataloader"]["mapper"]["_target_"] == "detforge.data.mapper.DatasetMapper"
    assert (out / "model_final.pth").is_file()


def test_shipped_tiny_config_gives_sizes_and_schedule(
    data: dict[str, Path], tmp_path: Path
) -> None:
    config = Path(__file__).resolve().parents[2] / "configs" / "retinanet_r18_fpn_tiny.py"
    out = tmp_path / "tiny"
    args = ["--config", str(config), "--output", str(out), "train.max_iter=1", *FAST]
    assert main(["train", *_coco_args(data, val=False), *args]) == 0
    run = yaml.safe_load((out / "config.yaml").read_text())["run"]
    assert run["resize"] == {"train_min_sizes": [288, 320, 352], "max_size": 480}
    assert run["settings"]["max_iter"] == 1 and run["settings"]["grad_clip"] == 10.0


def test_train_on_two_processes(data: dict[str, Path], tmp_path: Path) -> None:
    # Two CPU processes (gloo) through DDP: batch_size is global, so each loads one image.
    out = tmp_path / "ddp"
    args = [*_coco_args(data), "--output", str(out), *RESIZE, "--num-processes", "2"]
    assert main(["train", *args, "max_iter=3", *FAST]) == 0
    run = yaml.safe_load((out / "config.yaml").read_text())
    assert run["world_size"] == 2 and run["settings"]["batch_size"] == 2
    assert (out / "model_final.pth").is_file() and (out / "model_0000001.pth").is_file()
    rows = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "total_loss" in r] == [0, 1, 2]  # one writer
    assert any(k.startswith("bbox/") for r in rows for k in r)  # sharded evaluation gathered
    # A batch that does not split over the processes is a one-line error from the workers.
    bad = [*_coco_args(data, val=False), "--output", str(tmp_path / "bad"), *RESIZE]
    assert (
        main(["train", *bad, "--num-processes", "2", "max_iter=1", *FAST[:1], "batch_size=3"]) == 2
    )


def test_parse_settings_checks_types() -> None:
    base = TrainSettings()
    s = parse_settings(["steps=[0.5, 0.8]", "grad_clip=None", "base_lr=1", "amp=bf16"], base)
    assert s.steps == (0.5, 0.8) and s.grad_clip is None
    assert s.base_lr == 1.0 and isinstance(s.base_lr, float) and s.amp == "bf16"
    assert parse_settings(["ema_decay=0.999", "nesterov=true"], base).nesterov is True
    assert base.steps == (0.75, 0.9)  # the base is not modified
    for bad in ["batch_size=2.5", "nesterov=1", "noequals", "weight_decai=0"]:
        with pytest.raises(CLIError):
            parse_settings([bad], base)


def test_benchmark_reports_rates_and_memory(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--model", "faster_rcnn_r18_fpn_tiny", "--size", "64", "--iters", "1"]
    assert main(["benchmark", *args, "--num-classes", "3", "--train"]) == 0
    out = capsys.readouterr().out
    assert out.count("images/s") == 2 and "peak memory" in out
    assert main(["benchmark", "--model", "nope"]) == 2
