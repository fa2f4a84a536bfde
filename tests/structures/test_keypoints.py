"""Tests for detforge.structures.keypoints: heatmap targets and heatmap decoding."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from detforge.structures.keypoints import heatmaps_to_keypoints, keypoints_to_heatmap

COCO_KPTS = Path("coco_kpts_mmpose_sample/tests/data/coco/test_coco.json")

# --------------------------------------------------------------------------- keypoints_to_heatmap


def test_keypoints_to_heatmap_hand_cases() -> None:
    # RoI 16 x 32 px, M = 4: cells are 4 x 8 px (exact in binary floating point).
    rois = torch.tensor([[8.0, 16.0, 24.0, 48.0]])
    kps = torch.tensor(
        [
            [
                [8.0, 16.0, 2.0],  # top-left corner -> cell (0, 0)
                [12.0, 24.0, 1.0],  # on the left/top edge of cell (1, 1)
                [11.9, 23.9, 2.0],  # just before it -> cell (0, 0)
                [24.0, 40.0, 2.0],  # on the right edge -> column M - 1, row 3
                [9.0, 48.0, 2.0],  # on the bottom edge -> row M - 1
                [24.0, 48.0, 2.0],  # bottom-right corner -> (3, 3)
                [12.0, 24.0, 0.0],  # not labelled
                [7.9, 20.0, 2.0],  # left of the box
                [24.1, 20.0, 2.0],  # right of the box
                [10.0, 15.0, 2.0],  # above the box
                [10.0, 48.5, 2.0],  # below the box
                [float("nan"), 20.0, 2.0],  # NaN never becomes a target
            ]
        ]
    )
    index, valid = keypoints_to_heatmap(kps, rois, 4)
    assert index.dtype == torch.int64 and valid.dtype == torch.bool
    assert index.shape == valid.shape == (1, 12)
    assert index[0].tolist() == [0, 5, 0, 15, 12, 15, 0, 0, 0, 0, 0, 0]
    assert valid[0].tolist() == [True] * 6 + [False] * 6


def test_keypoints_to_heatmap_matches_detectron2_formula() -> None:
    n, k, m = 6, 5, 56
    xy1 = torch.rand(n, 2) * 100
    rois = torch.cat([xy1, xy1 + 1 + torch.rand(n, 2) * 150], dim=1)
    frac = torch.rand(n, k, 2) * 1.2 - 0.1  # some keypoints fall outside their box
    xy = rois[:, None, :2] + frac * (rois[:, None, 2:] - rois[:, None, :2])
    vis = torch.randint(0, 3, (n, k, 1)).float()
    index, valid = keypoints_to_heatmap(torch.cat([xy, vis], dim=2), rois, m)
    for i in range(n):
        for j in range(k):
            x1, y1, x2, y2 = rois[i].tolist()
            cx = math.floor((xy[i, j, 0] - x1) * (m / (x2 - x1)))
            cy = math.floor((xy[i, j, 1] - y1) * (m / (y2 - y1)))
            ok = bool(vis[i, j] > 0) and 0 <= cx < m and 0 <= cy < m
            assert bool(valid[i, j]) == ok
            assert int(index[i, j]) == (cy * m + cx if ok else 0)


def test_keypoints_to_heatmap_empty_and_degenerate() -> None:
    index, valid = keypoints_to_heatmap(torch.zeros(0, 17, 3), torch.zeros(0, 4), 56)
    assert index.shape == valid.shape == (0, 17)
    # A zero-width RoI gives no valid target, even for a keypoint on its edge.
    kps = torch.tensor([[[5.0, 5.0, 2.0], [5.0, 7.0, 2.0]]])
    index, valid = keypoints_to_heatmap(kps, torch.tensor([[5.0, 5.0, 5.0, 9.0]]), 8)
    assert not valid.any() and not index.any()


def test_keypoints_to_heatmap_errors() -> None:
    kps, rois = torch.zeros(2, 3, 3), torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 2)
    with pytest.raises(ValueError, match=r"`keypoints` must have shape \[\*, \*, 3\]"):
        keypoints_to_heatmap(torch.zeros(2, 3, 2), rois, 4)
    with pytest.raises(TypeError, match="`keypoints` must be a floating-point tensor"):
        keypoints_to_heatmap(kps.long(), rois, 4)
    with pytest.raises(ValueError, match="got 1 rois for 2 instances"):
        keypoints_to_heatmap(kps, rois[:1], 4)
    with pytest.raises(ValueError, match="`heatmap_size` must be a positive int"):
        keypoints_to_heatmap(kps, rois, 0)
    with pytest.raises(ValueError, match="x2 >= x1"):
        keypoints_to_heatmap(kps, rois.flip(1), 4)


# --------------------------------------------------------------------------- heatmaps_to_keypoints


def _decode_oracle(maps: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """One RoI and one keypoint at a time, following detectron2's steps literally."""
    n, k = maps.shape[:2]
    out = torch.zeros(n, k, 4, dtype=maps.dtype)
    for i in range(n):
        x1, y1, x2, y2 = rois[i].tolist()
        w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        wc, hc = math.ceil(w), math.ceil(h)
        big = F.interpolate(maps[i : i + 1], size=(hc, wc), mode="bicubic", align_corners=False)[0]
        for j in range(k):
            peak = big[j].max()
            flat = int(big[j].flatten().argmax())
            r, c = divmod(flat, wc)
            score = torch.exp(big[j] - peak) / torch.exp(maps[i, j] - peak).sum()
            out[i, j] = torch.stack(
                [
                    torch.tensor(x1 + (c + 0.5) * w / wc),
                    torch.tensor(y1 + (r + 0.5) * h / hc),
                    big[j, r, c],
                    score[r, c],
                ]
            )
    return out


ROIS = torch.tensor(
    [
        [0.0, 0.0, 56.0, 56.0],
        [10.5, 20.25, 40.5, 100.75],
        [3.0, 4.0, 9.0, 7.0],  # smaller than the heatmap: maps are downsampled
        [100.2, 50.7, 100.4, 50.9],  # sub-pixel box: clamped to 1 x 1
        [7.0, 7.0, 75.3, 40.1],
    ],
    dtype=torch.float64,
)


def test_heatmaps_to_keypoints_matches_oracle() -> None:
    maps = torch.randn(len(ROIS), 3, 14, 14, dtype=torch.float64)
    rois = torch.cat([ROIS, ROIS[1:2]])  # two RoIs of one size are decoded together
    maps = torch.cat([maps, maps[4:5]])
    out = heatmaps_to_keypoints(maps, rois)
    assert out.shape == (len(rois), 3, 4) and out.dtype == torch.float64
    torch.testing.assert_close(out, _decode_oracle(maps, rois))
    assert bool(((out[..., 3] > 0) & (out[..., 3] <= 1)).all())


def test_heatmaps_to_keypoints_recovers_peaks_within_half_a_cell() -> None:
    m = 28
    rois = ROIS[[0, 1, 4]].float()
    gen = torch.Generator().manual_seed(1)
    frac = 0.05 + 0.9 * torch.rand(len(rois), 4, 2, generator=gen)
    xy = rois[:, None, :2] + frac * (rois[:, None, 2:] - rois[:, None, :2])
    index, valid = keypoints_to_heatmap(torch.cat([xy, torch.ones(3, 4, 1)], 2), rois, m)
    assert valid.all()
    maps = torch.zeros(len(rois), 4, m * m)
    maps.scatter_(2, index[..., None], 10.0)  # a delta at each target cell
    out = heatmaps_to_keypoints(maps.view(-1, 4, m, m), rois)
    cell = (rois[:, 2:] - rois[:, :2]) / m  # [R, 2]
    centre = rois[:, None, :2] + (torch.stack([index % m, index // m], -1) + 0.5) * cell[:, None]
    assert bool(((out[..., :2] - centre).abs() <= 0.5 * cell[:, None] + 1e-4).all())
    # So the keypoint itself is within one cell, and re-encoding lands in the same cell.
    assert bool(((out[..., :2] - xy).abs() <= cell[:, None] + 1e-4).all())
    again, _ = keypoints_to_heatmap(torch.cat([out[..., :2], torch.ones(3, 4, 1)], 2), rois, m)
    assert torch.equal(again, index)


def test_heatmaps_to_keypoints_smooth_peak_in_small_box() -> None:
    # A box smaller than the heatmap: a smooth peak survives the downsampling.
    m = 28
    roi = torch.tensor([[3.0, 4.0, 17.0, 11.0]])
    ys, xs = torch.meshgrid(torch.arange(m) + 0.5, torch.arange(m) + 0.5, indexing="ij")
    peak = (20.0, 9.0)  # heatmap coordinates of the peak (x, y)
    maps = -((xs - peak[0]) ** 2 + (ys - peak[1]) ** 2) / (2 * 3.0**2)
    out = heatmaps_to_keypoints(maps[None, None], roi)[0, 0]
    want_x = 3.0 + peak[0] / m * 14.0
    want_y = 4.0 + peak[1] / m * 7.0
    assert abs(float(out[0]) - want_x) <= 0.5 + 1e-4  # within half a (resized) pixel
    assert abs(float(out[1]) - want_y) <= 0.5 + 1e-4


def test_heatmaps_to_keypoints_empty_and_errors() -> None:
    assert heatmaps_to_keypoints(torch.zeros(0, 17, 56, 56), torch.zeros(0, 4)).shape == (0, 17, 4)
    maps, rois = torch.zeros(2, 3, 8, 8), torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 2)
    with pytest.raises(ValueError, match="got 1 rois for 2 heatmaps"):
        heatmaps_to_keypoints(maps, rois[:1])
    with pytest.raises(ValueError, match=r"`maps` must have shape \[\*, \*, \*, \*\]"):
        heatmaps_to_keypoints(maps[0], rois)
    with pytest.raises(TypeError, match="`maps` must be a floating-point tensor"):
        heatmaps_to_keypoints(maps.long(), rois)
    with pytest.raises(ValueError, match="x2 >= x1"):
        heatmaps_to_keypoints(maps, rois.flip(1))


def test_heatmaps_to_keypoints_has_no_grad() -> None:
    maps = torch.randn(1, 2, 6, 6, requires_grad=True)
    out = heatmaps_to_keypoints(maps, torch.tensor([[0.0, 0.0, 12.0, 9.0]]))
    assert not out.requires_grad


# --------------------------------------------------------------------------- real COCO data


def test_coco_keypoints_round_trip(shared_datasets: Path) -> None:
    with open(shared_datasets / COCO_KPTS) as f:
        anns = [a for a in json.load(f)["annotations"] if a["num_keypoints"] > 0]
    assert anns
    kps = torch.tensor([a["keypoints"] for a in anns], dtype=torch.float64).view(len(anns), -1, 3)
    kps[..., :2] += 0.5  # COCO pixel indices -> continuous pixel centres (data-loader rule)
    x, y, w, h = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).unbind(1)
    rois = torch.stack([x, y, x + w, y + h], dim=1)
    m = 56
    index, valid = keypoints_to_heatmap(kps, rois, m)
    labelled = kps[..., 2] > 0
    assert bool((valid <= labelled).all()) and int(valid.sum()) >= 0.9 * int(labelled.sum())
    one_hot = torch.full((len(anns), kps.shape[1], m * m), -5.0, dtype=torch.float64)
    one_hot.scatter_(2, index[..., None], 5.0)
    decoded = heatmaps_to_keypoints(one_hot.view(len(anns), -1, m, m), rois)
    cell = (rois[:, 2:] - rois[:, :2]) / m
    err = (decoded[..., :2] - kps[..., :2]).abs()
    assert bool((err <= cell[:, None] + 1e-6).all(-1)[valid].all())
