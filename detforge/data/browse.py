"""Browse a dataset: draw each record's ground truth on its image and write it to a folder."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from detforge.data.catalog import DatasetMetadata
from detforge.data.errors import DataError
from detforge.data.mapper import read_image
from detforge.structures.masks import polygons_to_bitmask, rle_decode
from detforge.utils.visualizer import draw_instances

__all__ = ["browse_dataset", "draw_record"]

logger = logging.getLogger(__name__)


def _record_masks(annotations: list[dict], h: int, w: int) -> np.ndarray | None:
    if not any("segmentation" in a for a in annotations):
        return None
    masks = np.zeros((len(annotations), h, w), dtype=bool)
    for i, ann in enumerate(annotations):
        seg = ann.get("segmentation")
        if isinstance(seg, dict):
            masks[i] = rle_decode([seg])[0].numpy()
        elif seg:
            masks[i] = polygons_to_bitmask(seg, h, w).numpy()
    return masks


def draw_record(record: dict, metadata: DatasetMetadata) -> np.ndarray:
    """The record's image (EXIF orientation applied) with its boxes, names, masks and keypoints.

    Crowd annotations are drawn like the others, with ``(crowd)`` after the name.

    Returns:
        ``uint8 [H, W, 3]`` RGB.
    """
    image = read_image(record["file_name"])  # DataError names the file when it is unreadable
    anns = record.get("annotations", [])
    h, w = image.shape[:2]
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
    labels = [int(a["category_id"]) for a in anns]
    names = [
        metadata.class_names[a["category_id"]] + (" (crowd)" if a.get("iscrowd") else "")
        for a in anns
    ]
    keypoints = None
    if anns and all("keypoints" in a for a in anns):
        keypoints = np.array([a["keypoints"] for a in anns], dtype=np.float32).reshape(
            len(anns), -1, 3
        )
    return draw_instances(
        image,
        boxes,
        list(range(len(anns))),
        class_names=names,
        masks=_record_masks(anns, h, w),
        keypoints=keypoints,
        skeleton=metadata.skeleton,
        colors=[metadata.class_colors[c] for c in labels],
    )


def browse_dataset(
    records: Sequence[dict],
    metadata: DatasetMetadata,
    out_dir: str | Path,
    *,
    limit: int | None = None,
) -> list[Path]:
    """Write ``out_dir/<image stem>.jpg`` with the ground truth drawn, for each record.

    Unreadable images are reported (logged, and skipped with a count) rather than stopping.

    Args:
        records: dataset records (see ``detforge.data``).
        metadata: class names and colours, keypoint skeleton.
        out_dir: folder to write to (created).
        limit: at most this many records.

    Returns:
        The files written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, failed = [], 0
    for record in list(records)[:limit]:
        try:
            drawn = draw_record(record, metadata)
        except DataError as e:
            failed += 1
            logger.warning("browse: skipping %s", e)
            continue
        path = out / f"{Path(record['file_name']).stem}.jpg"
        Image.fromarray(drawn).save(path, quality=92)
        written.append(path)
    if failed:
        logger.warning("browse: %d of %d images could not be read", failed, failed + len(written))
    return written
