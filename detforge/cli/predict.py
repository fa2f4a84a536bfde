"""``detforge predict``: run a checkpoint on an image, a folder of images or a video.

Writes one drawn image per input image (or per video frame, ``<video stem>_<frame>.jpg``) and one
``predictions.json``: a list with, per image, ``file`` (and ``frame`` for videos),
``image_size`` ``[H, W]``, ``boxes`` (xyxy, absolute pixels of the original image), ``scores``,
``labels``, ``class_names`` and, for mask models, ``masks`` as COCO compressed RLE. Only
detections scoring at least ``--score-threshold`` are kept.

Videos are decoded with ``av`` (PyAV, the ``video`` extra: ``pip install detforge[video]``),
``imageio`` or ``cv2`` (OpenCV), whichever is installed first in that order; detforge itself
depends on none of them. ``--frame-step N`` runs the model on every N-th frame only.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from detforge.cli.datasets import CLIError
from detforge.cli.evaluate import checkpoint_model
from detforge.data.errors import DataError
from detforge.data.mapper import read_image
from detforge.inference import predict_image
from detforge.structures.instances import Instances
from detforge.structures.masks import rle_encode
from detforge.utils.visualizer import draw_instances

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "add_parser", "run"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
_DECODERS = ("av", "imageio", "cv2")


def _video_frames(path: Path) -> Iterator[np.ndarray]:
    """RGB ``uint8 [H, W, 3]`` frames of a video, with the first decoder that is installed."""
    found = [m for m in _DECODERS if importlib.util.find_spec(m) is not None]
    try:
        yield from _decode(path, found[0])
    except CLIError:
        raise
    except Exception as e:  # each decoder has its own error types
        raise CLIError(f"--input {path}: cannot decode the video ({found[0]}): {e}") from e


def _decode(path: Path, decoder: str) -> Iterator[np.ndarray]:
    if decoder == "imageio":
        iio = importlib.import_module("imageio.v3")
        for frame in iio.imiter(str(path)):
            yield np.asarray(frame)[..., :3]
    elif decoder == "av":
        av = importlib.import_module("av")
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    else:
        cv2 = importlib.import_module("cv2")
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise CLIError(f"--input {path}: OpenCV cannot open this video")
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                yield np.ascontiguousarray(frame[..., ::-1])  # BGR -> RGB
        finally:
            capture.release()


def _input_files(path: Path) -> list[Path]:
    """The images to read (sorted for a folder), or ``[video]``; every input error raised here."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            exts = ", ".join(IMAGE_EXTENSIONS)
            raise CLIError(f"--input {path}: no images ({exts}) in this folder")
        return files
    if not path.exists():
        raise CLIError(f"--input {path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS and not any(importlib.util.find_spec(m) for m in _DECODERS):
        raise CLIError(
            f"--input {path}: reading a video needs a decoder and none of "
            f"{', '.join(_DECODERS)} is installed; install one: pip install av "
            "(or pip install 'detforge[video]')"
        )
    if suffix not in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS:
        known = ", ".join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
        raise CLIError(f"--input {path}: unsupported file type (known: {known})")
    return [path]


def _images(
    files: list[Path], frame_step: int, failed: list[str]
) -> Iterator[tuple[dict[str, Any], str, np.ndarray]]:
    """``(json entry head, output file name, RGB image)`` for every image or kept video frame.

    An image or video that cannot be read is logged, appended to ``failed`` and skipped.
    """
    for file in files:
        if file.suffix.lower() in VIDEO_EXTENSIONS:
            count = 0
            try:
                for i, frame in enumerate(_video_frames(file)):
                    count += 1
                    if i % frame_step == 0:
                        yield {"file": str(file), "frame": i}, f"{file.stem}_{i:06d}.jpg", frame
            except CLIError as e:
                logger.warning("skipping the rest of %s: %s", file, e)
                failed.append(f"{file}: {e}")
                continue
            if count == 0:
                logger.warning("skipping %s: the video has no frames", file)
                failed.append(f"{file}: the video has no frames")
                continue
            logger.info("%s: %d frames, every %d-th run", file, count, frame_step)
            continue
        try:
            image = read_image(str(file))
        except (OSError, DataError) as e:
            logger.warning("skipping %s: cannot read the image: %s", file, e)
            failed.append(f"{file}: {e}")
            continue
        yield {"file": str(file)}, file.name, image


def _entry(head: dict[str, Any], det: Instances, names: tuple[str, ...]) -> dict[str, Any]:
    labels = [] if det.labels is None else det.labels.tolist()
    entry = {
        **head,
        "image_size": list(det.image_size),
        "boxes": [[round(float(v), 2) for v in box] for box in det.boxes.tolist()],
        "scores": [] if det.scores is None else [round(float(s), 4) for s in det.scores],
        "labels": labels,
        "class_names": [names[i] for i in labels],
    }
    if isinstance(det.masks, torch.Tensor):
        entry["masks"] = rle_encode(det.masks > 0.5 if det.masks.is_floating_point() else det.masks)
    return entry


def run(args: argparse.Namespace) -> int:
    """Run ``detforge predict`` (see the module docstring)."""
    if not 0.0 <= args.score_threshold <= 1.0:
        raise CLIError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    if args.frame_step < 1:
        raise CLIError(f"--frame-step must be >= 1, got {args.frame_step}")
    files = _input_files(Path(args.input))
    model, spec = checkpoint_model(args.weights)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    failed: list[str] = []
    for head, name, image in _images(files, args.frame_step, failed):
        det = predict_image(model, image, spec)
        if det.scores is not None:
            det = det[det.scores >= args.score_threshold]
        masks = det.masks.numpy() > 0.5 if isinstance(det.masks, torch.Tensor) else None
        drawn = draw_instances(
            image,
            det.boxes.numpy(),
            [] if det.labels is None else det.labels.tolist(),
            class_names=spec.class_names,
            scores=None if det.scores is None else det.scores.tolist(),
            masks=masks,
        )
        Image.fromarray(drawn).save(out / name)
        results.append(_entry(head, det, spec.class_names))
    (out / "predictions.json").write_text(json.dumps(results))
    logger.info("predict: %d images, drawings and predictions.json in %s", len(results), out)
    if failed:
        logger.warning("predict: %d inputs could not be read and were skipped:", len(failed))
        for line in failed:
            logger.warning("  %s", line)
    if not results:
        raise CLIError(f"--input {args.input}: no image could be read ({failed[0]})")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``detforge predict``."""
    p = subparsers.add_parser(
        "predict",
        help="detect objects in images or a video with a checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="checkpoint to run")
    p.add_argument("--input", required=True, metavar="PATH", help="image, folder or video")
    p.add_argument("--output", default="predictions", metavar="DIR", help="output folder")
    p.add_argument("--score-threshold", type=float, default=0.5, help="minimum score kept")
    p.add_argument(
        "--frame-step", type=int, default=1, metavar="N", help="videos: every N-th frame only"
    )
    p.set_defaults(func=run)
    return p
