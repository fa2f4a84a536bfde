"""NMS, batched NMS and Soft-NMS: the vectorised reference against loop-based float64 oracles.

Most random boxes have coordinates on a 1/4-pixel grid below 128 px: their areas and
intersections are then exact in float32 (and float16 for the coordinates), so the float32
reference and the float64 oracle must agree on every decision, including IoUs that equal the
threshold exactly. Random unquantised boxes are compared with the oracle too, and with a greedy
loop over ``box_iou`` evaluated in float32, which the reference must match bit for bit.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import detforge.ops._reference.nms as ref
from detforge.ops.nms import SoftNMSMethod, batched_nms, batched_soft_nms, nms, soft_nms
from detforge.structures.boxes import box_iou

THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 1.0)

# ---------------------------------------------------------------------------------------------
# Oracles: plain Python over lists, in float64.


def _iou64(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def oracle_nms(boxes: Tensor, scores: Tensor, t: float) -> list[int]:
    """Greedy NMS: highest score first, ties by lower index; drop IoU > t."""
    b, s = boxes.double().tolist(), scores.double().tolist()
    order = sorted(range(len(b)), key=lambda i: (-s[i], i))
    dead = [False] * len(b)
    keep = []
    for pos, i in enumerate(order):
        if dead[i]:
            continue
        keep.append(i)
        for j in order[pos + 1 :]:
            if not dead[j] and _iou64(b[i], b[j]) > t:
                dead[j] = True
    return keep


def _merge(parts: list[tuple[int, float]]) -> list[int]:
    return [i for i, _ in sorted(parts, key=lambda p: (-p[1], p[0]))]


def oracle_batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, t: float) -> list[int]:
    """``oracle_nms`` per category, merged by decreasing score, ties by lower index."""
    s = scores.double().tolist()
    parts = []
    for c in sorted(set(idxs.tolist())):
        members = [i for i, ci in enumerate(idxs.tolist()) if ci == c]
        kept = oracle_nms(boxes[members], scores[members], t)
        parts += [(members[k], s[members[k]]) for k in kept]
    return _merge(parts)


def oracle_soft_nms(
    boxes: Tensor, scores: Tensor, method: str, t: float, sigma: float, thr: float
) -> tuple[list[int], list[float]]:
    """Soft-NMS as documented: pick the max (ties: lower index), decay the rest, drop < thr."""
    b = boxes.double().tolist()
    s = {i: v for i, v in enumerate(scores.double().tolist()) if v >= thr}
    keep, new = [], []
    while s:
        i = min(s, key=lambda j: (-s[j], j))
        keep.append(i)
        new.append(s.pop(i))
        for j in list(s):
            iou = _iou64(b[i], b[j])
            if method == "linear":
                w = 1 - iou if iou > t else 1.0
            else:
                w = math.exp(-(iou * iou) / sigma)
            s[j] *= w
            if s[j] < thr:
                del s[j]
    return keep, new


def oracle_batched_soft_nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor, *args: float | str
) -> tuple[list[int], list[float]]:
    parts = []
    for c in sorted(set(idxs.tolist())):
        members = [i for i, ci in enumerate(idxs.tolist()) if ci == c]
        k, v = oracle_soft_nms(boxes[members], scores[members], *args)  # type: ignore[arg-type]
        parts += [(members[i], x) for i, x in zip(k, v, strict=True)]
    parts.sort(key=lambda p: (-p[1], p[0]))
    return [i for i, _ in parts], [x for _, x in parts]


# ---------------------------------------------------------------------------------------------
# Inputs.


def grid_boxes(n: int, seed: int, *, size: float = 128.0) -> tuple[Tensor, Tensor]:
    """Boxes on a 1/4-pixel grid in [0, size] (exact areas in float32), scores in [0, 1)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size * 0.8
    wh = torch.rand(n, 2, generator=g) * size * 0.3
    boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
    return (boxes * 4).round() / 4, torch.rand(n, generator=g)


def clustered(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Unquantised boxes in clusters of about 10, like detector output before NMS."""
    g = torch.Generator().manual_seed(seed)
    k = max(1, n // 10)
    centres = torch.rand(k, 2, generator=g) * 400
    sizes = torch.exp(torch.empty(k, 2).uniform_(math.log(8), math.log(96), generator=g))
    which = torch.randint(0, k, (n,), generator=g)
    c = centres[which] + 0.1 * sizes[which] * torch.randn(n, 2, generator=g)
    s = sizes[which] * torch.exp(0.15 * torch.randn(n, 2, generator=g))
    return torch.cat([c - s / 2, c + s / 2], dim=1), torch.rand(n, generator=g)


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny blocks, chunks and tiles, so that small inputs exercise every loop of the blocked
    path (which small inputs do not take by default)."""
    monkeypatch.setattr(ref, "_SMALL", -1)
    monkeypatch.setattr(ref, "_BLOCK", 8)
    monkeypatch.setattr(ref, "_CHUNK", 4)
    monkeypatch.setattr(ref, "_TILE", 16)


@pytest.fixture
def blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every input takes the blocked path, whatever its size (see test_nms_small.py for the
    small-input path)."""
    monkeypatch.setattr(ref, "_SMALL", -1)


def _check_nms(boxes: Tensor, scores: Tensor, t: float) -> None:
    got = nms(boxes, scores, t)
    assert got.dtype == torch.int64 and got.device == boxes.device
    assert got.tolist() == oracle_nms(boxes, scores, t)


# ---------------------------------------------------------------------------------------------
# nms


@pytest.mark.parametrize("t", THRESHOLDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_nms_random_grid_boxes(t: float, seed: int) -> None:
    _check_nms(*grid_boxes(300, seed), t)


@pytest.mark.parametrize("t", THRESHOLDS)
def test_nms_clustered_boxes(t: float) -> None:
    _check_nms(*clustered(400, 3), t)


@pytest.mark.usefixtures("blocked")
@pytest.mark.parametrize("t", THRESHOLDS)
@pytest.mark.parametrize("n", [255, 256, 257, 511, 512, 513])
def test_nms_block_boundaries(n: int, t: float) -> None:
    boxes, scores = grid_boxes(n, n, size=48.0)  # dense: many overlaps, long chains
    _check_nms(boxes, scores, t)


@pytest.mark.usefixtures("small_tiles")
@pytest.mark.parametrize("t", THRESHOLDS)
@pytest.mark.parametrize("kind", ["grid", "clustered"])
def test_nms_many_blocks_and_chunks(kind: str, t: float) -> None:
    boxes, scores = grid_boxes(500, 7) if kind == "grid" else clustered(500, 7)
    _check_nms(boxes, scores, t)


def test_nms_matches_box_iou_greedy_bit_for_bit() -> None:
    """Decisions are exactly ``box_iou(...) > t`` in float32, for arbitrary float boxes."""
    boxes, scores = clustered(600, 11)
    iou = box_iou(boxes, boxes)
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    for t in (0.1, 0.45, 0.6, 0.85):
        over = (iou > t).tolist()
        dead: set[int] = set()
        keep = []
        for i in order:
            if i not in dead:
                keep.append(i)
                dead.update(j for j in order if over[i][j])
        assert nms(boxes, scores, t).tolist() == keep


def test_nms_score_ties_take_lower_index_first() -> None:
    boxes, _ = grid_boxes(300, 4, size=64.0)
    scores = torch.randint(0, 4, (300,)).float() / 4  # four score levels: many ties
    for t in THRESHOLDS:
        _check_nms(boxes, scores, t)
    same = torch.tensor([[0.0, 0, 10, 10]] * 3)
    assert nms(same, torch.tensor([0.5, 0.5, 0.5]), 0.5).tolist() == [0]
    assert nms(same, torch.tensor([0.2, 0.5, 0.5]), 0.5).tolist() == [1]


def test_nms_duplicates_and_exact_threshold() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 3]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    # IoU(box 0, box 2) is exactly 0.5 and IoU(0, 3) exactly 0.3: "greater than" keeps them.
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.3).tolist() == [0, 3]
    assert nms(boxes, scores, 1.0).tolist() == [0, 1, 2, 3]  # identical boxes: IoU 1, not > 1
    assert nms(boxes, scores, 0.99).tolist() == [0, 2, 3]


def test_nms_degenerate_boxes_suppress_nothing() -> None:
    boxes = torch.tensor([[5.0, 5, 5, 9], [5, 5, 5, 9], [0, 3, 8, 3], [0, 0, 10, 10], [2, 2, 2, 2]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    for t in THRESHOLDS:
        assert nms(boxes, scores, t).tolist() == [0, 1, 2, 3, 4]
    _check_nms(*grid_boxes(200, 5, size=32.0), 0.0)
    degen, scores = grid_boxes(200, 6)
    degen[::3, 2] = degen[::3, 0]  # a third of the boxes have zero width
    _check_nms(degen, scores, 0.3)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_nms_tiny_inputs(n: int) -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11]])[:n]
    scores = torch.tensor([0.3, 0.6])[:n]
    for t in (0.5, 0.9):  # the two boxes have IoU 81 / 119
        got = nms(boxes, scores, t)
        assert got.dtype == torch.int64
        assert got.tolist() == oracle_nms(boxes, scores, t)
    assert nms(boxes, scores, 0.5).tolist() == {0: [], 1: [0], 2: [1]}[n]
    assert nms(boxes, scores, 0.9).tolist() == {0: [], 1: [0], 2: [1, 0]}[n]


def test_nms_thresholds_outside_unit_interval() -> None:
    boxes, scores = grid_boxes(100, 8)
    by_score = torch.argsort(scores, descending=True, stable=True)
    assert nms(boxes, scores, 1.5).tolist() == by_score.tolist()
    assert nms(boxes, scores, -0.1).tolist() == by_score[:1].tolist()


def test_nms_non_contiguous_inputs() -> None:
    boxes, scores = grid_boxes(400, 9)
    big = torch.zeros(400, 8)
    big[:, ::2] = boxes
    strided = big[:, ::2]  # [400, 4] with stride 2
    s2 = torch.stack([scores, scores], dim=1)[:, 1]
    t_boxes = boxes.t().contiguous().t()  # column-major
    assert not strided.is_contiguous() and not s2.is_contiguous()
    for t in (0.3, 0.7):
        want = oracle_nms(boxes, scores, t)
        assert nms(strided, s2, t).tolist() == want
        assert nms(t_boxes, scores, t).tolist() == want


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_nms_dtypes(dtype: torch.dtype) -> None:
    boxes, scores = grid_boxes(300, 10, size=64.0)
    if dtype == torch.bfloat16:
        boxes = boxes.round()  # integers below 256 are exact in bfloat16
    b, s = boxes.to(dtype), scores.to(dtype)
    assert torch.equal(b.double(), boxes.double())
    for t in (0.0, 0.3, 0.5, 0.7):
        assert nms(b, s, t).tolist() == oracle_nms(b, s, t)
    b64, s64 = clustered(300, 12)
    assert nms(b64.double(), s64.double(), 0.5).tolist() == oracle_nms(b64, s64, 0.5)


def test_nms_ignores_autograd() -> None:
    boxes, scores = clustered(100, 13)
    boxes.requires_grad_(True)
    scores.requires_grad_(True)
    assert nms(boxes, scores, 0.5).tolist() == oracle_nms(boxes.detach(), scores.detach(), 0.5)


# ---------------------------------------------------------------------------------------------
# batched_nms


@pytest.mark.parametrize("t", THRESHOLDS)
@pytest.mark.parametrize("dense", [True, False])
def test_batched_nms_matches_per_category_oracle(
    t: float, dense: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ref, "_SMALL", -1)  # the small-input path: test_nms_small.py
    if not dense:  # force the blocked path with small blocks and chunks
        monkeypatch.setattr(ref, "_DENSE", 0)
        monkeypatch.setattr(ref, "_BLOCK", 16)
        monkeypatch.setattr(ref, "_CHUNK", 4)
    boxes, scores = clustered(400, 14)
    idxs = torch.randint(0, 6, (400,))
    assert batched_nms(boxes, scores, idxs, t).tolist() == oracle_batched_nms(
        boxes, scores, idxs, t
    )


@pytest.mark.usefixtures("blocked")
def test_batched_nms_single_category_equals_nms() -> None:
    boxes, scores = grid_boxes(600, 15, size=64.0)  # 600 > _BLOCK: the blocked path
    for t in THRESHOLDS:
        want = nms(boxes, scores, t).tolist()
        assert want == oracle_nms(boxes, scores, t)
        assert batched_nms(boxes, scores, torch.full((600,), 3), t).tolist() == want


def test_batched_nms_category_values_and_singletons() -> None:
    boxes, scores = grid_boxes(200, 16, size=48.0)
    idxs = torch.randint(0, 3, (200,), dtype=torch.int32) * 10**6 - 5
    idxs[:20] = torch.arange(100, 120, dtype=torch.int32)  # 20 categories with one box each
    for t in (0.0, 0.5):
        assert batched_nms(boxes, scores, idxs, t).tolist() == oracle_batched_nms(
            boxes, scores, idxs, t
        )
    first = batched_nms(boxes, scores, idxs, -1.0)  # negative: the top box of each category
    assert first.tolist() == oracle_batched_nms(boxes, scores, idxs, -1.0)
    assert len(first) == len(set(idxs.tolist()))


def test_batched_nms_score_ties_across_categories() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 4)
    scores = torch.tensor([0.5, 0.5, 0.7, 0.5])
    idxs = torch.tensor([2, 1, 1, 0])
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == [2, 0, 3]


def test_batched_nms_huge_coordinates_lose_no_precision() -> None:
    """torchvision's trick (offset each box by category * (max coordinate + 1), then one NMS)
    moves these float32 boxes near 1e6 px to ~3e7 px, where float32 steps are 2 px: it changes
    the result. Comparing boxes per category keeps the exact answer.
    """
    boxes, scores = grid_boxes(300, 17, size=32.0)
    boxes = boxes + 1e6  # 1/4 px steps are still exact in float32 at 1e6
    idxs = torch.tensor([0, 7, 30])[torch.randint(0, 3, (300,))]
    offset = (idxs * (float(boxes.max()) + 1)).to(torch.float32)[:, None]
    for t in (0.3, 0.5, 0.7):
        want = oracle_batched_nms(boxes, scores, idxs, t)
        assert batched_nms(boxes, scores, idxs, t).tolist() == want
        assert nms(boxes + offset, scores, t).tolist() != want  # the trick would fail here
        assert nms(boxes, scores, t).tolist() == oracle_nms(boxes, scores, t)


def test_batched_nms_empty() -> None:
    got = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert got.dtype == torch.int64 and got.shape == (0,)


# ---------------------------------------------------------------------------------------------
# soft_nms


@pytest.mark.parametrize("method", ["linear", "gaussian"])
@pytest.mark.parametrize("kind", ["grid", "clustered"])
def test_soft_nms_matches_oracle(method: SoftNMSMethod, kind: str) -> None:
    boxes, scores = grid_boxes(150, 18) if kind == "grid" else clustered(150, 18)
    for t, sigma, thr in ((0.3, 0.5, 0.001), (0.5, 0.2, 0.05), (0.0, 1.0, 0.3)):
        keep, new = soft_nms(
            boxes, scores, method=method, iou_threshold=t, sigma=sigma, score_threshold=thr
        )
        want_keep, want_new = oracle_soft_nms(boxes, scores, method, t, sigma, thr)
        assert keep.tolist() == want_keep
        assert new.dtype == scores.dtype and not new.requires_grad
        torch.testing.assert_close(new.double(), torch.tensor(want_new, dtype=torch.float64))


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_batched_soft_nms_matches_per_category_oracle(method: SoftNMSMethod) -> None:
    boxes, scores = clustered(200, 19)
    idxs = torch.randint(0, 5, (200,)) - 2
    keep, new = batched_soft_nms(boxes, scores, idxs, method=method)
    want_keep, want_new = oracle_batched_soft_nms(boxes, scores, idxs, method, 0.3, 0.5, 0.001)
    assert keep.tolist() == want_keep
    torch.testing.assert_close(new.double(), torch.tensor(want_new, dtype=torch.float64))


def test_soft_nms_edge_cases() -> None:
    empty = soft_nms(torch.zeros(0, 4), torch.zeros(0))
    assert empty[0].dtype == torch.int64 and empty[0].shape == (0,) and empty[1].shape == (0,)
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    # box 2 starts below score_threshold; box 1 (IoU 1 with box 0) decays to 0 and is dropped
    keep, new = soft_nms(boxes, torch.tensor([0.9, 0.9, 0.0005]))
    assert keep.tolist() == [0] and new.tolist() == pytest.approx([0.9])
    keep, new = soft_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.99)
    assert keep.tolist() == [0, 2] and new.tolist() == pytest.approx([0.9, 0.7])
    assert soft_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), score_threshold=2.0)[0].numel() == 0
    k16, n16 = soft_nms(boxes.half(), torch.tensor([0.9, 0.5, 0.7]).half(), method="gaussian")
    assert k16.tolist() == [0, 2, 1] and n16.dtype == torch.float16


# ---------------------------------------------------------------------------------------------
# The three paths of nms / batched_nms (all-pairs IoU and candidate windows for small CPU inputs,
# blocked for the rest), each forced for every input size, and the dispatch between them


@pytest.fixture(params=["dense", "window", "blocked"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Make every input, whatever its size, take one path."""
    if request.param == "blocked":
        monkeypatch.setattr(ref, "_SMALL", -1)
    else:
        monkeypatch.setattr(ref, "_SMALL", 1 << 30)
        monkeypatch.setattr(ref, "_DENSE_SMALL", 1 << 30 if request.param == "dense" else 0)
    return str(request.param)


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths taken by the calls of a test, in order."""
    calls: list[str] = []
    for name, label in (("_dense_pairs", "dense"), ("_window_pairs", "window")):
        fn = getattr(ref, name)
        monkeypatch.setattr(ref, name, lambda *a, fn=fn, label=label: calls.append(label) or fn(*a))
    greedy = ref._greedy
    monkeypatch.setattr(ref, "_greedy", lambda *a: calls.append("blocked") or greedy(*a))
    resolve = ref._resolve  # batched_nms's padded tile: the blocked path too
    monkeypatch.setattr(ref, "_resolve", lambda *a: calls.append("blocked") or resolve(*a))
    return calls


def _check_batched(boxes: Tensor, scores: Tensor, idxs: Tensor, t: float) -> None:
    got = batched_nms(boxes, scores, idxs, t)
    assert got.dtype == torch.int64
    assert got.tolist() == oracle_batched_nms(boxes, scores, idxs, t)


@pytest.mark.parametrize("kind", ["grid", "clustered"])
def test_paths_match_oracle(path: str, kind: str, taken: list[str]) -> None:
    boxes, scores = grid_boxes(200, 30) if kind == "grid" else clustered(200, 30)
    idxs = torch.randint(0, 5, (200,))
    for t in THRESHOLDS:
        _check_nms(boxes, scores, t)
        _check_batched(boxes, scores, idxs, t)
    assert set(taken) == {path}


def test_paths_match_box_iou_greedy_bit_for_bit(path: str) -> None:
    """Unquantised boxes: the decisions are exactly ``box_iou(...) > t`` in float32."""
    boxes, scores = clustered(300, 31)
    iou = box_iou(boxes, boxes)
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    for t in (0.1, 0.45, 0.6, 0.85):
        over = (iou > t).tolist()
        dead: set[int] = set()
        keep = []
        for i in order:
            if i not in dead:
                keep.append(i)
                dead.update(j for j in order if over[i][j])
        assert nms(boxes, scores, t).tolist() == keep


def test_paths_score_ties(path: str) -> None:
    boxes, _ = grid_boxes(150, 32, size=48.0)
    scores = torch.randint(0, 3, (150,)).float() / 4  # three score levels: many ties
    idxs = torch.randint(0, 3, (150,))
    for t in THRESHOLDS:
        _check_nms(boxes, scores, t)
        _check_batched(boxes, scores, idxs, t)
    same = torch.tensor([[0.0, 0, 10, 10]] * 4)
    assert nms(same, torch.tensor([0.5, 0.5, 0.7, 0.5]), 0.5).tolist() == [2]
    assert batched_nms(same, torch.full((4,), 0.5), torch.tensor([1, 0, 1, 0]), 0.5).tolist() == [
        0,
        1,
    ]


def test_paths_zero_area_boxes(path: str) -> None:
    boxes = torch.tensor([[5.0, 5, 5, 9], [5, 5, 5, 9], [0, 3, 8, 3], [0, 0, 10, 10], [2, 2, 2, 2]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    for t in THRESHOLDS:  # zero-area boxes overlap nothing, not even each other
        assert nms(boxes, scores, t).tolist() == [0, 1, 2, 3, 4]
        assert batched_nms(boxes, scores, torch.zeros(5, dtype=torch.int64), t).tolist() == [
            0,
            1,
            2,
            3,
            4,
        ]
    degen, scores = grid_boxes(200, 33, size=64.0)
    degen[::3, 2] = degen[::3, 0]  # a third of the boxes have zero width
    degen[1::5, 3] = degen[1::5, 1]  # and some zero height
    for t in (0.0, 0.3, 0.7):
        _check_nms(degen, scores, t)


def test_paths_exact_threshold(path: str) -> None:
    """An IoU equal to the threshold never suppresses, on either side of a candidate window."""
    boxes = torch.tensor(
        [[0.0, 0, 12, 10], [4, 0, 16, 10], [0, 0, 12, 5], [0, 0, 10, 10], [5, 0, 15, 10]]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    # IoU(0, 1) = 80 / 160 and IoU(0, 2) = 60 / 120 are exactly 0.5; IoU(3, 4) = 1/3
    assert nms(boxes[:3], scores[:3], 0.5).tolist() == [0, 1, 2]
    assert nms(boxes[:3], scores[:3], 0.4999).tolist() == [0]
    assert nms(boxes[3:], scores[3:], 0.3).tolist() == [0]
    assert nms(boxes[3:], scores[3:], 1 / 3 + 1e-6).tolist() == [0, 1]
    for t in (0.25, 0.3, 0.5, 0.75):  # quarter-pixel boxes: many IoUs land exactly on t
        _check_nms(*grid_boxes(200, 34, size=24.0), t)


def test_paths_near_window_bound(path: str) -> None:
    """Boxes near the bound ``x1 + (1 - t) w`` of a candidate window: inner boxes that share the
    right edge of a 10 px box and start a few float steps either side of ``(1 - t) * 10``."""
    outer = torch.tensor([[0.0, 0, 10, 10]])
    for t in (0.3, 0.5, 0.7):
        x = torch.tensor((1 - t) * 10, dtype=torch.float32)
        starts = [x]
        for _ in range(3):
            starts = [torch.nextafter(starts[0], torch.tensor(-1.0)), *starts]
            starts.append(torch.nextafter(starts[-1], torch.tensor(11.0)))
        suppressed = []
        for x1 in starts:
            inner = torch.stack([x1, torch.tensor(0.0), torch.tensor(10.0), torch.tensor(10.0)])
            boxes = torch.cat([outer, inner[None]])
            over = bool(box_iou(outer, inner[None])[0, 0] > t)
            assert nms(boxes, torch.tensor([0.9, 0.8]), t).tolist() == ([0] if over else [0, 1])
            assert nms(boxes, torch.tensor([0.8, 0.9]), t).tolist() == ([1] if over else [1, 0])
            suppressed.append(over)
        assert any(suppressed) and not all(suppressed)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_paths_empty_and_tiny(path: str, n: int) -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11]])[:n]
    scores = torch.tensor([0.3, 0.6])[:n]
    for t in (0.5, 0.9):  # IoU of the two boxes: 81 / 119
        got = nms(boxes, scores, t)
        assert got.dtype == torch.int64 and got.tolist() == oracle_nms(boxes, scores, t)
        for idxs in (torch.zeros(n, dtype=torch.int64), torch.arange(n)):
            _check_batched(boxes, scores, idxs, t)
    assert nms(boxes, scores, 0.5).tolist() == {0: [], 1: [0], 2: [1]}[n]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_paths_dtypes(path: str, dtype: torch.dtype) -> None:
    boxes, scores = grid_boxes(150, 35, size=64.0)
    if dtype == torch.bfloat16:
        boxes = boxes.round()  # integers below 256 are exact in bfloat16
    b, s = boxes.to(dtype), scores.to(dtype)
    for t in (0.0, 0.3, 0.5, 0.7):
        assert nms(b, s, t).tolist() == oracle_nms(b, s, t)
    b64, s64 = clustered(150, 36)
    assert nms(b64.double(), s64.double(), 0.5).tolist() == oracle_nms(b64, s64, 0.5)


def test_paths_batched_categories(path: str) -> None:
    boxes, scores = clustered(300, 37)
    for idxs in (
        torch.randint(0, 80, (300,)),  # many categories, most with a few boxes
        torch.randint(0, 2, (300,), dtype=torch.int32) * 10**6 - 7,  # two, far-apart values
        torch.arange(300),  # every box alone
    ):
        for t in (0.0, 0.5, 0.7):
            _check_batched(boxes, scores, idxs, t)
    far, scores = grid_boxes(200, 38, size=32.0)
    far = far + 1e6  # quarter-pixel steps are still exact in float32 at 1e6
    idxs = torch.tensor([0, 7, 30])[torch.randint(0, 3, (200,))]
    for t in (0.3, 0.7):
        _check_batched(far, scores, idxs, t)
        _check_nms(far, scores, t)


@pytest.mark.parametrize("pairs", [1, 7, 64])
def test_window_path_in_many_chunks(pairs: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Candidate pairs evaluated a few at a time (chunks smaller than one box's candidates too)."""
    monkeypatch.setattr(ref, "_SMALL", 1 << 30)
    monkeypatch.setattr(ref, "_DENSE_SMALL", 0)
    monkeypatch.setattr(ref, "_PAIRS", pairs)
    boxes, scores = clustered(150, 40)
    idxs = torch.randint(0, 4, (150,))
    for t in (0.0, 0.5, 0.7):
        _check_nms(boxes, scores, t)
        _check_batched(boxes, scores, idxs, t)


def test_dispatch_threshold_boundaries(taken: list[str]) -> None:
    """Sizes on both sides of each threshold take the path they should, with the right result."""
    assert 0 < ref._DENSE_SMALL < ref._SMALL
    cases = [
        (ref._DENSE_SMALL, "dense"),
        (ref._DENSE_SMALL + 1, "window"),
        (ref._SMALL, "window"),
        (ref._SMALL + 1, "blocked"),
    ]
    for n, want in cases:
        boxes, scores = grid_boxes(n, n, size=200.0)
        idxs = torch.randint(0, 3, (n,))
        taken.clear()
        _check_nms(boxes, scores, 0.5)
        assert set(taken) == {want}
        taken.clear()
        _check_batched(boxes, scores, idxs, 0.5)
        assert set(taken) == {want}


def test_dispatch_small_paths_are_cpu_only() -> None:
    """Only CPU inputs take the small-input paths (meta tensors stand in for a GPU here)."""
    assert not ref._is_small(torch.zeros(10, 4, device="meta"))
    assert ref._is_small(torch.zeros(ref._SMALL, 4))
    assert not ref._is_small(torch.zeros(ref._SMALL + 1, 4))


@pytest.mark.gpu
@pytest.mark.parametrize("t", [0.0, 0.5, 0.7])
def test_cuda_matches_cpu_small_inputs(t: float) -> None:
    """CUDA takes the blocked path; the CPU takes the small-input paths at these sizes."""
    cuda = torch.device("cuda")
    for n in (ref._DENSE_SMALL, ref._SMALL):
        boxes, scores = clustered(n, 39)
        idxs = torch.randint(0, 20, (n,))
        got = nms(boxes.to(cuda), scores.to(cuda), t)
        assert torch.equal(got.cpu(), nms(boxes, scores, t))
        got = batched_nms(boxes.to(cuda), scores.to(cuda), idxs.to(cuda), t)
        assert torch.equal(got.cpu(), batched_nms(boxes, scores, idxs, t))


# ---------------------------------------------------------------------------------------------
# Argument checks


_B = torch.tensor([[0.0, 0, 1, 1], [0, 0, 2, 2]])
_S = torch.tensor([0.5, 0.6])


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (([[0.0, 0, 1, 1]], _S[:1], 0.5), TypeError, r"nms: `boxes` must be a torch.Tensor"),
        ((_B[:, :3], _S, 0.5), ValueError, r"nms: `boxes` must have shape \[\*, 4\]"),
        ((_B.long(), _S, 0.5), TypeError, r"nms: `boxes` must be a floating-point tensor"),
        ((_B[:, [2, 1, 0, 3]], _S, 0.5), ValueError, r"nms: `boxes` must be xyxy.*box 0"),
        ((_B.index_fill(0, torch.tensor([1]), math.nan), _S, 0.5), ValueError, r"finite; box 1"),
        ((_B.index_fill(0, torch.tensor([1]), math.inf), _S, 0.5), ValueError, r"finite; box 1"),
        ((_B, _S[:1], 0.5), ValueError, r"nms: `scores` must have shape \[2\]"),
        ((_B, _S.long(), 0.5), TypeError, r"nms: `scores` must be a floating-point tensor"),
        ((_B, torch.tensor([0.5, math.nan]), 0.5), ValueError, r"`scores` must be finite"),
        ((_B, _S, math.nan), ValueError, r"nms: `iou_threshold` must be finite"),
        ((_B, _S, math.inf), ValueError, r"nms: `iou_threshold` must be finite"),
        ((_B, _S, "0.5"), TypeError, r"nms: `iou_threshold` must be a float, got str"),
        ((_B, _S, True), TypeError, r"nms: `iou_threshold` must be a float, got bool"),
        ((_B, _S.to("meta"), 0.5), ValueError, r"nms: all tensors must be on one device"),
    ],
)
def test_nms_argument_errors(args: tuple[object, ...], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        nms(*args)  # type: ignore[arg-type]


def test_value_check_overflow_is_no_error(path: str) -> None:
    """The values are checked through sums and extremes; a sum that overflows (float16 scores)
    is re-checked entry by entry and passes."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])
    scores = torch.tensor([40000.0, 30000.0, 20000.0], dtype=torch.float16)  # sum > 65504
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert batched_nms(boxes, scores, torch.zeros(3, dtype=torch.int64), 0.5).tolist() == [0, 2]
    huge = torch.tensor([[-3e38, 0, 3e38, 1], [0, 0, 1, 1]])  # width overflows to inf
    assert nms(huge, torch.tensor([0.5, 0.6]), 0.5).tolist() == [1, 0]


def test_batched_and_soft_argument_errors() -> None:
    idxs = torch.tensor([0, 1])
    with pytest.raises(TypeError, match=r"batched_nms: `idxs` must be an integer tensor"):
        batched_nms(_B, _S, idxs.float(), 0.5)
    with pytest.raises(TypeError, match=r"batched_nms: `idxs` must be an integer tensor"):
        batched_nms(_B, _S, idxs.bool(), 0.5)
    with pytest.raises(ValueError, match=r"batched_nms: `idxs` must have shape \[2\]"):
        batched_nms(_B, _S, idxs[:1], 0.5)
    with pytest.raises(TypeError, match=r"batched_nms: `idxs` must be a torch.Tensor"):
        batched_nms(_B, _S, [0, 1], 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"soft_nms: `method` must be one of"):
        soft_nms(_B, _S, method="hard")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"soft_nms: `sigma` must be a finite number > 0"):
        soft_nms(_B, _S, method="gaussian", sigma=0.0)
    with pytest.raises(ValueError, match=r"batched_soft_nms: `score_threshold` must be finite"):
        batched_soft_nms(_B, _S, idxs, score_threshold=math.nan)
    with pytest.raises(ValueError, match=r"batched_soft_nms: all tensors must be on one device"):
        batched_soft_nms(_B, _S, idxs.to("meta"))


# ---------------------------------------------------------------------------------------------
# CUDA parity (skipped without a GPU)


@pytest.mark.gpu
@pytest.mark.parametrize("t", [0.0, 0.5, 0.7])
def test_cuda_matches_cpu(t: float) -> None:
    boxes, scores = clustered(3000, 20)
    idxs = torch.randint(0, 20, (3000,))
    cuda = torch.device("cuda")
    got = nms(boxes.to(cuda), scores.to(cuda), t)
    assert got.device.type == "cuda"
    assert torch.equal(got.cpu(), nms(boxes, scores, t))
    got = batched_nms(boxes.to(cuda), scores.to(cuda), idxs.to(cuda), t)
    assert torch.equal(got.cpu(), batched_nms(boxes, scores, idxs, t))
    many = torch.randint(0, 2, (3000,))  # two large categories: the blocked path
    got = batched_nms(boxes.to(cuda), scores.to(cuda), many.to(cuda), t)
    assert torch.equal(got.cpu(), batched_nms(boxes, scores, many, t))


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_cuda_soft_nms_matches_cpu(method: SoftNMSMethod) -> None:
    boxes, scores = clustered(300, 21)
    idxs = torch.randint(0, 4, (300,))
    cuda = torch.device("cuda")
    k_gpu, s_gpu = batched_soft_nms(boxes.to(cuda), scores.to(cuda), idxs.to(cuda), method=method)
    k_cpu, s_cpu = batched_soft_nms(boxes, scores, idxs, method=method)
    assert torch.equal(k_gpu.cpu(), k_cpu)
    torch.testing.assert_close(s_gpu.cpu(), s_cpu)
