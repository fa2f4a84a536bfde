"""The main job of ``make demo`` until training lands: every op, end to end, on a synthetic scene.

It draws a scene of shapes with known polygons, plays a detector that fires many jittered boxes
around each object, and then runs what detforge has: batched NMS and soft-NMS to pick the
detections, a multi-level RoIAlign pooler over an image pyramid, mask targets cropped from the
polygons, and mask pasting back into the image. It checks the results against the known scene,
prints a summary and writes a picture.

Usage: ``python -m detforge.demo [--out demo_output] [--seed 0]``
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from detforge.ops.nms import batched_nms, soft_nms
from detforge.ops.paste_masks import paste_masks_in_image
from detforge.ops.poolers import MultiLevelRoIPooler
from detforge.structures.boxes import box_iou, clip_boxes
from detforge.structures.masks import PolygonMasks
from detforge.utils.visualizer import draw_instances

logger = logging.getLogger("detforge.demo")

CLASSES = ("square", "triangle", "disc")
COLOURS = ((230, 80, 60), (60, 170, 90), (70, 110, 230))


def _shape_polygon(kind: int, cx: float, cy: float, r: float) -> np.ndarray:
    if kind == 0:
        pts = [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    elif kind == 1:
        pts = [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    else:
        pts = [
            (cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 32)
        ]
    return np.asarray(pts, dtype=np.float64).reshape(-1)


def make_scene(rng: np.random.Generator, h: int = 480, w: int = 640) -> tuple[Image.Image, dict]:
    """A textured background with a few shapes; returns the image and its ground truth."""
    noise = rng.normal(0, 1, (h // 8, w // 8, 3))
    background = Image.fromarray(np.uint8(np.clip(128 + 25 * noise, 0, 255))).resize((w, h))
    draw = ImageDraw.Draw(background)
    polygons, labels = [], []
    for _ in range(7):
        kind = int(rng.integers(0, 3))
        r = float(np.exp(rng.uniform(math.log(12), math.log(90))))
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        poly = _shape_polygon(kind, cx, cy, r)
        draw.polygon(list(map(tuple, poly.reshape(-1, 2))), fill=COLOURS[kind])
        polygons.append([poly])
        labels.append(kind)
    masks = PolygonMasks(polygons)
    return background, {"masks": masks, "boxes": masks.bounding_boxes(), "labels": labels}


def fake_detector(gt_boxes: torch.Tensor, labels: list[int], rng: np.random.Generator, hw):
    """Many candidate boxes per object (jitter lowers the score) plus low-score clutter."""
    boxes, scores, classes = [], [], []
    for box, label in zip(gt_boxes.tolist(), labels, strict=True):
        size = torch.tensor([box[2] - box[0], box[3] - box[1]] * 2)
        jitter = torch.from_numpy(rng.normal(0, 0.08, (60, 4))).float()
        boxes.append(torch.tensor(box) + jitter * size)
        scores.append(torch.exp(-4 * jitter.abs().mean(1)) * 0.95)
        classes.append(torch.full((60,), label))
    n = 100
    xy = torch.from_numpy(rng.uniform(0, 1, (n, 2))).float() * torch.tensor([hw[1], hw[0]])
    wh = torch.from_numpy(rng.uniform(10, 120, (n, 2))).float()
    boxes.append(torch.cat([xy, xy + wh], 1))
    scores.append(torch.from_numpy(rng.uniform(0, 0.4, n)).float())
    classes.append(torch.from_numpy(rng.integers(0, 3, n)))
    return clip_boxes(torch.cat(boxes), hw), torch.cat(scores), torch.cat(classes).long()


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else 1.0


def run(out_dir: Path, seed: int) -> dict[str, float]:
    """Run the demo; returns the headline numbers (also printed)."""
    rng = np.random.default_rng(seed)
    image, gt = make_scene(rng)
    hw = (image.height, image.width)
    boxes, scores, classes = fake_detector(gt["boxes"], gt["labels"], rng, hw)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    keep = batched_nms(boxes, scores, classes, 0.5)
    keep = keep[scores[keep] > 0.5]
    timings["batched_nms"] = time.perf_counter() - t
    det_boxes, det_classes = boxes[keep], classes[keep]
    iou = box_iou(gt["boxes"], det_boxes)
    best_iou, match = iou.max(dim=1) if len(keep) else (torch.zeros(len(gt["labels"])), None)
    t = time.perf_counter()
    soft_keep, _ = soft_nms(boxes, scores, method="gaussian", sigma=0.5, score_threshold=0.3)
    timings["soft_nms"] = time.perf_counter() - t

    # Multi-level RoIAlign over an image pyramid (a stand-in for FPN features).
    x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 255
    pyramid = [F.avg_pool2d(x, s) for s in (4, 8, 16, 32)]
    pooler = MultiLevelRoIPooler(7, (1 / 4, 1 / 8, 1 / 16, 1 / 32), pooler_type="roi_align_v2")
    t = time.perf_counter()
    pooled = pooler(pyramid, [det_boxes])
    timings["roi_pooler"] = time.perf_counter() - t

    # Mask targets from the polygons inside the matched detections, pasted back to the image.
    assert match is not None, "the demo scene produced no detections"
    gt_for_det = iou.argmax(dim=0)
    targets = gt["masks"][gt_for_det].crop_and_resize(det_boxes, 28)
    t = time.perf_counter()
    pasted = paste_masks_in_image(targets, det_boxes, hw)
    timings["paste_masks"] = time.perf_counter() - t
    gt_bits = gt["masks"].to_bitmasks(*hw).tensor
    mask_ious = [_mask_iou(pasted[j], gt_bits[int(gt_for_det[j])]) for j in range(len(keep))]

    _draw(image, det_boxes, det_classes, pasted, out_dir / "demo.png")
    stats = {
        "objects": float(len(gt["labels"])),
        "candidates": float(len(boxes)),
        "kept_by_nms": float(len(keep)),
        "kept_by_soft_nms": float(len(soft_keep)),
        "recall@0.7": float((best_iou >= 0.7).float().mean()),
        "mean_mask_iou": float(np.mean(mask_ious)),
    }
    print(f"detforge demo: a synthetic {hw[1]}x{hw[0]} scene with {len(gt['labels'])} objects")
    print(f"  candidates from the fake detector   {len(boxes)}")
    print(f"  batched_nms (0.5) + score > 0.5      {len(keep)} detections")
    print(f"  soft_nms (gaussian)                  {len(soft_keep)} boxes above 0.3")
    print(f"  objects found at IoU >= 0.7          {stats['recall@0.7']:.0%}")
    print(f"  pooled RoI features                  {tuple(pooled.shape)}")
    print(f"  pasted masks vs ground truth         mean IoU {stats['mean_mask_iou']:.3f}")
    print("  timings: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in timings.items()))
    print(f"  picture: {out_dir / 'demo.png'}")
    return stats


def _draw(image: Image.Image, boxes, classes, masks: torch.Tensor, path: Path) -> None:
    """Write the image with the pasted masks tinted and the detections boxed and named."""
    drawn = draw_instances(
        np.asarray(image), boxes.numpy(), classes.tolist(), class_names=CLASSES,
        masks=masks.numpy(), colors=COLOURS,
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(drawn).save(path)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_output"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    run(args.out, args.seed)


if __name__ == "__main__":
    main()
