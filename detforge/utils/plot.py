"""Training curves drawn with PIL (no plotting library needed): loss and AP from metrics.json."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

__all__ = ["plot_metrics", "read_metrics"]

_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.json`` (JSON lines) file."""
    lines = Path(path).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    title: str,
    series: dict[str, list[tuple[float, float]]],
) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0 + 5, y0 - 14), title, fill=(0, 0, 0))
    points = [p for s in series.values() for p in s if math.isfinite(p[1])]
    if not points:
        draw.text((x0 + 10, y0 + 10), "no data", fill=(120, 120, 120))
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xmin, xmax = min(xs), max(max(xs), min(xs) + 1)
    ymin, ymax = min(0.0, min(ys)), max(ys) if max(ys) > 0 else 1.0
    ymax += 0.05 * (ymax - ymin) or 1.0

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (
            x0 + 40 + (x - xmin) / (xmax - xmin) * (x1 - x0 - 50),
            y1 - 20 - (y - ymin) / (ymax - ymin) * (y1 - y0 - 30),
        )

    for frac in (0.0, 0.5, 1.0):
        y = ymin + frac * (ymax - ymin)
        px, py = to_px(xmin, y)
        draw.text((x0 + 2, py - 6), f"{y:.3g}", fill=(90, 90, 90))
        draw.line((px, py, x1 - 10, py), fill=(225, 225, 225))
    draw.text((x0 + 40, y1 - 14), f"{xmin:g}", fill=(90, 90, 90))
    draw.text((x1 - 60, y1 - 14), f"iter {xmax:g}", fill=(90, 90, 90))
    for i, (name, pts) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        pts = [p for p in pts if math.isfinite(p[1])]
        if len(pts) > 1:
            draw.line([to_px(*p) for p in pts], fill=colour, width=2)
        for p in pts[-1:] if len(pts) > 1 else pts:
            cx, cy = to_px(*p)
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=colour)
        draw.text((x1 - 150, y0 + 6 + 13 * i), name, fill=colour)


def plot_metrics(
    metrics: Sequence[dict],
    path: str | Path,
    *,
    loss_keys: Sequence[str] = ("total_loss",),
    ap_keys: Sequence[str] = ("bbox/AP", "segm/AP"),
) -> Path:
    """Write a PNG with the loss curves (left) and the AP curves (right) against iterations."""
    image = Image.new("RGB", (960, 360), (255, 255, 255))
    draw = ImageDraw.Draw(image)

    def series(keys: Sequence[str]) -> dict[str, list[tuple[float, float]]]:
        return {
            k: [(float(m["iteration"] + 1), float(m[k])) for m in metrics if k in m] for k in keys
        }

    _panel(draw, (10, 30, 470, 350), "loss", series(loss_keys))
    _panel(draw, (490, 30, 950, 350), "AP", series(ap_keys))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out
