"""Predictor: a checkpoint as a function from an image (path, array or PIL) to detections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detforge.checkpoint.io import save_checkpoint
from detforge.modeling.zoo import build_model
from detforge.predictor import Predictor


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("mask_rcnn_r18_fpn_tiny", num_classes=2)
    path = tmp_path / "model.pth"
    metadata = {
        "model": "mask_rcnn_r18_fpn_tiny",
        "class_names": ["cat", "dog"],
        "input_format": "RGB",
        "min_size": 64,
        "max_size": 100,
    }
    save_checkpoint(path, model, metadata=metadata)
    return path


def test_predictor_on_every_kind_of_image(checkpoint: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    assert predictor.class_names == ("cat", "dog")
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "photo.png")
    results = [
        predictor(array),
        predictor(Image.fromarray(array)),
        predictor(tmp_path / "photo.png"),
    ]
    for det in results:
        assert det.image_size == (90, 120) and len(det) > 0
        assert det.masks is not None and det.masks.shape == (len(det), 90, 120)
        assert det.boxes.device.type == "cpu"
        assert (det.scores[:-1] >= det.scores[1:]).all()
    torch.testing.assert_close(results[0].boxes, results[2].boxes)  # PNG is lossless
    # The threshold drops detections below it.
    strict = Predictor.from_checkpoint(checkpoint, device="cpu", score_threshold=0.5)
    kept = strict(array)
    assert (kept.scores >= 0.5).all() and len(kept) == int((results[0].scores >= 0.5).sum())


def test_predictor_errors(checkpoint: Path, tmp_path: Path) -> None:
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(ValueError, match=r"RGB uint8 \[H, W, 3\]"):
        predictor(np.zeros((10, 10), np.uint8))
    with pytest.raises(TypeError, match="unsupported image type"):
        predictor(42)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="no such file"):
        Predictor.from_checkpoint(tmp_path / "missing.pth")  # a library error, not the CLI's
    with pytest.raises(ValueError, match="score_threshold"):
        Predictor.from_checkpoint(checkpoint, score_threshold=2.0)
