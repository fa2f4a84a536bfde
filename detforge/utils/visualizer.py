"""Drawing boxes, masks, keypoints and labels on images (for browsing data and predictions)."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["draw_instances", "palette"]


def palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """``n`` distinct, deterministic RGB colours, one per class.

    Hues step by the golden-ratio conjugate, so neighbouring labels get far-apart hues; the
    brightness alternates between neighbours.

    Returns:
        tuple of ``n`` ``(r, g, b)`` ints in ``[0, 255]``; the same for every call.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"palette: the number of colours must be an int >= 0, got {n!r}")
    colours = []
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        value = 0.95 if i % 2 == 0 else 0.75
        r, g, b = colorsys.hsv_to_rgb(hue, 0.7, value)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(colours)


def _erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def draw_instances(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[int],
    *,
    class_names: Sequence[str] | None = None,
    scores: Sequence[float] | None = None,
    masks: np.ndarray | None = None,
    keypoints: np.ndarray | None = None,
    skeleton: Sequence[tuple[int, int]] = (),
    colors: Sequence[tuple[int, int, int]] | None = None,
    mask_alpha: float = 0.45,
) -> np.ndarray:
    """Draw instances on an RGB image.

    Args:
        image: ``uint8 [H, W, 3]`` RGB.
        boxes: ``[N, 4]`` xyxy pixels.
        labels: ``N`` contiguous class indices.
        class_names: names for the labels (indices are shown otherwise).
        scores: ``N`` scores, shown after the name.
        masks: ``bool [N, H, W]``; tinted with the class colour and outlined.
        keypoints: ``[N, P, 3]`` ``(x, y, v)``; points with ``v > 0`` are drawn.
        skeleton: pairs of keypoint indices to connect.
        colors: one colour per class (default :func:`palette`).
        mask_alpha: opacity of the mask tint.

    Returns:
        A new ``uint8 [H, W, 3]`` image.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"draw_instances: `image` must be uint8 [H, W, 3], got {image.dtype} {image.shape}"
        )
    n = len(labels)
    if len(boxes) != n:
        raise ValueError(f"draw_instances: {len(boxes)} boxes but {n} labels")
    colors = list(colors) if colors is not None else palette(max([*labels, 0]) + 1)
    canvas = image.astype(np.float32)
    if masks is not None:
        for m, label in zip(masks.astype(bool), labels, strict=True):
            canvas[m] = (1 - mask_alpha) * canvas[m] + mask_alpha * np.array(colors[label])
            canvas[m & ~_erode(m)] = 255.0
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for i in range(n):
        c = colors[labels[i]]
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        draw.rectangle((x1, y1, x2, y2), outline=c, width=2)
        text = class_names[labels[i]] if class_names is not None else str(labels[i])
        if scores is not None:
            text += f" {scores[i]:.2f}"
        tw = draw.textlength(text)
        draw.rectangle((x1, max(y1 - 11, 0), x1 + tw + 4, max(y1 - 11, 0) + 11), fill=c)
        draw.text((x1 + 2, max(y1 - 11, 0)), text, fill=(0, 0, 0))
    if keypoints is not None:
        for kps, label in zip(keypoints, labels, strict=True):
            c = colors[label]
            for a, b in skeleton:
                if kps[a, 2] > 0 and kps[b, 2] > 0:
                    draw.line((*kps[a, :2], *kps[b, :2]), fill=c, width=2)
            for x, y, v in kps:
                if v > 0:
                    draw.ellipse(
                        (x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=(255, 255, 255), outline=c
                    )
    return np.asarray(out)
