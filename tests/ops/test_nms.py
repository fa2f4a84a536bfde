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
    """Tiny blocks, chunks and tiles, so that small inputs exercise every loop of the reference."""
    monkeypatch.setattr(ref, "_BLOCK", 8)
    monkeypatch.setattr(ref, "_CHUNK", 4)
    monkeypatch.setattr(ref, "_TILE", 16)


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
    if not dense:  # force the blocked path with small blocks and chunks
        monkeypatch.setattr(ref, "_DENSE", 0)
        monkeypatch.setattr(ref, "_BLOCK", 16)
        monkeypatch.setattr(ref, "_CHUNK", 4)
    boxes, scores = clustered(400, 14)
    idxs = torch.randint(0, 6, (400,))
    assert batched_nms(boxes, scores, idxs, t).tolist() == oracle_batched_nms(
        boxes, scores, idxs, t
    )


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
