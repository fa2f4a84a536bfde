"""A built-in synthetic detection dataset, written to disk in COCO format.

Images show shapes (squares, discs, triangles, hexagons) of many scales on textured
backgrounds, overlapping each other. Each object has a box, an instance mask of its *visible*
region (a polygon when nothing covers it, a COCO RLE when another shape hides part of it) and
four keypoints (its top-, right-, bottom- and left-most points; visibility 2 when the point is
visible, 1 when covered). Everything is reproducible from a seed, and since the files are real
JPEGs and COCO JSON, the quickstart and the tests exercise the real loaders.

Layout written under ``root``::

    root/train/000000.jpg ...          root/val/000000.jpg ...
    root/annotations/train.json        root/annotations/val.json
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as mask_util

__all__ = [
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_KEYPOINT_FLIP_PAIRS",
    "SYNTHETIC_KEYPOINTS",
    "SyntheticSpec",
    "generate_synthetic_coco",
]

SYNTHETIC_CLASSES = ("square", "disc", "triangle", "hexagon")
SYNTHETIC_KEYPOINTS = ("top", "right", "bottom", "left")
SYNTHETIC_KEYPOINT_FLIP_PAIRS = ((1, 3),)  # right <-> left
_HUES = (0.0, 0.6, 0.33, 0.12)  # a base hue per class, jittered per object


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate.

    Attributes:
        num_train: training images.
        num_val: validation images.
        min_size: smallest image side, pixels.
        max_size: largest image side, pixels.
        max_objects: objects per image are drawn from ``[1, max_objects]``.
        min_object: smallest object radius as a fraction of the shorter image side.
        max_object: largest object radius, likewise.
        seed: everything derives from it.
    """

    num_train: int = 64
    num_val: int = 16
    min_size: int = 128
    max_size: int = 192
    max_objects: int = 5
    min_object: float = 0.08
    max_object: float = 0.3
    seed: int = 0


def _polygon(kind: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    sides = {0: 4, 1: 48, 2: 3, 3: 6}[kind]
    start = angle + (math.pi / 4 if kind == 0 else 0.0) - math.pi / 2
    a = start + np.arange(sides) * 2 * math.pi / sides
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], axis=1)  # [V, 2]


def _colour(kind: int, rng: np.random.Generator) -> tuple[int, int, int]:
    import colorsys

    h = (_HUES[kind] + rng.uniform(-0.04, 0.04)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(0.55, 0.95), rng.uniform(0.6, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _background(h: int, w: int, rng: np.random.Generator) -> Image.Image:
    cells = rng.normal(0, 1, (max(2, h // 16), max(2, w // 16), 3))
    base = np.clip(110 + 35 * cells + rng.uniform(-30, 30, 3), 0, 255).astype(np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
    fine = rng.normal(0, 10, (h, w, 1))
    stripes = 12 * np.sin(np.arange(w)[None, :, None] / rng.uniform(3, 9) + rng.uniform(0, 6))
    arr = np.asarray(img, dtype=np.float32) + fine + stripes
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _draw_image(h: int, w: int, spec: SyntheticSpec, rng: np.random.Generator):
    image = _background(h, w, rng)
    draw = ImageDraw.Draw(image)
    shapes = []
    owner = np.full((h, w), -1, dtype=np.int64)  # which object each pixel shows
    for j in range(int(rng.integers(1, spec.max_objects + 1))):
        kind = int(rng.integers(len(SYNTHETIC_CLASSES)))
        short = min(h, w)
        r = float(
            np.exp(rng.uniform(np.log(spec.min_object * short), np.log(spec.max_object * short)))
        )
        cx, cy = rng.uniform(r * 0.5, w - r * 0.5), rng.uniform(r * 0.5, h - r * 0.5)
        poly = _polygon(kind, cx, cy, r, float(rng.uniform(-0.3, 0.3)))
        draw.polygon([tuple(p) for p in poly], fill=_colour(kind, rng))
        single = Image.new("L", (w, h), 0)
        ImageDraw.Draw(single).polygon([tuple(p) for p in poly], fill=1)
        owner[np.asarray(single, dtype=bool)] = j
        shapes.append((kind, poly))
    image = image.filter(ImageFilter.GaussianBlur(radius=0.6))
    return image, shapes, owner


def _annotation(j: int, kind: int, poly: np.ndarray, owner: np.ndarray, h: int, w: int):
    """COCO annotation of object ``j``'s visible region, or None when it is hidden entirely."""
    visible = owner == j
    if visible.sum() < 4:
        return None
    full = Image.new("L", (w, h), 0)
    ImageDraw.Draw(full).polygon([tuple(p) for p in poly], fill=1)
    drawn = np.asarray(full, dtype=bool)
    occluded = bool((drawn & ~visible).any())
    if occluded:
        rle = mask_util.encode(np.asfortranarray(visible.astype(np.uint8)))
        segmentation: object = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
    else:
        clipped = poly.copy()
        clipped[:, 0] = clipped[:, 0].clip(0, w)
        clipped[:, 1] = clipped[:, 1].clip(0, h)
        flat = [round(float(v), 2) for v in clipped.reshape(-1)]
        segmentation = [flat]
        # Box and area of the polygon as pycocotools rasterises it, as COCO files state them.
        rle = mask_util.merge(mask_util.frPyObjects([flat], h, w))
    x, y, bw, bh = (float(v) for v in mask_util.toBbox(rle))
    keypoints: list[float] = []
    extremes = (poly[:, 1].argmin(), poly[:, 0].argmax(), poly[:, 1].argmax(), poly[:, 0].argmin())
    for e in extremes:
        px, py = poly[e]
        ix, iy = int(min(max(px, 0), w - 1)), int(min(max(py, 0), h - 1))
        # COCO keypoints are integer pixel indices; visibility 2 = visible, 1 = covered.
        keypoints += [ix, iy, 2 if owner[iy, ix] == j else 1]
    return {
        "category_id": kind + 1,
        "bbox": [round(v, 2) for v in (x, y, bw, bh)],
        "area": float(mask_util.area(rle)),
        "segmentation": segmentation,
        "iscrowd": 0,
        "keypoints": keypoints,
        "num_keypoints": sum(1 for v in keypoints[2::3] if v > 0),
    }


def _write_split(root: Path, split: str, count: int, spec: SyntheticSpec, rng) -> Path:
    (root / split).mkdir(parents=True, exist_ok=True)
    images: list[dict] = []
    annotations: list[dict] = []
    for i in range(count):
        h, w = (int(rng.integers(spec.min_size, spec.max_size + 1)) for _ in range(2))
        image, shapes, owner = _draw_image(h, w, spec, rng)
        name = f"{i:06d}.jpg"
        image.save(root / split / name, quality=95)
        images.append({"id": i, "file_name": name, "height": h, "width": w})
        for j, (kind, poly) in enumerate(shapes):
            ann = _annotation(j, kind, poly, owner, h, w)
            if ann is not None:
                annotations.append({"id": len(annotations) + 1, "image_id": i, **ann})
    categories = [
        {
            "id": k + 1,
            "name": name,
            "supercategory": "shape",
            "keypoints": list(SYNTHETIC_KEYPOINTS),
            "skeleton": [[1, 2], [2, 3], [3, 4], [4, 1]],
        }
        for k, name in enumerate(SYNTHETIC_CLASSES)
    ]
    info = {"description": "detforge synthetic shapes", "seed": spec.seed, "split": split}
    out = root / "annotations" / f"{split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps(
            {"info": info, "images": images, "annotations": annotations, "categories": categories}
        )
    )
    tmp.replace(out)  # atomic: a reader never sees a half-written file
    return out


def generate_synthetic_coco(root: str | Path, spec: SyntheticSpec | None = None) -> dict[str, Path]:
    """Write the synthetic dataset under ``root`` (see the module docstring for the layout).

    Args:
        root: output folder (created if missing).
        spec: what to generate; defaults to ``SyntheticSpec()``.

    Returns:
        ``{"train_json", "train_images", "val_json", "val_images"}`` paths.
    """
    spec = spec or SyntheticSpec()
    if spec.num_train < 0 or spec.num_val < 0 or spec.max_objects < 1:
        raise ValueError(f"generate_synthetic_coco: invalid spec {spec}")
    if not 8 <= spec.min_size <= spec.max_size:
        raise ValueError(f"generate_synthetic_coco: need 8 <= min_size <= max_size, got {spec}")
    root = Path(root)
    rng = np.random.default_rng(spec.seed)
    train_rng, val_rng = rng.spawn(2)
    return {
        "train_json": _write_split(root, "train", spec.num_train, spec, train_rng),
        "train_images": root / "train",
        "val_json": _write_split(root, "val", spec.num_val, spec, val_rng),
        "val_images": root / "val",
    }
