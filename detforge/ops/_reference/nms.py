"""Vectorised pure-PyTorch greedy NMS (plain and per category) and Soft-NMS.

Hard NMS is computed exactly, without a Python loop over boxes. Boxes are visited in blocks of
``_BLOCK`` in score order, holding only boxes that no earlier kept box suppressed:

1. inside a block, the greedy decisions are the unique solution of the triangular system
   ``keep[j] = not any(keep[i] and M[i, j] for i < j)`` with ``M = IoU > threshold``. The Jacobi
   iteration ``keep <- (keep @ M == 0)`` started from all-true reaches it exactly after at most
   (longest chain of overlaps) + 1 steps: usually 2 to 4, and never more than ``_BLOCK + 1``
   (a row of boxes each overlapping the next is the worst case);
2. the boxes kept by the block then suppress every later box they overlap ("forward"
   suppression), so a box leaves the problem as soon as it is suppressed. To avoid comparing every
   kept box with every remaining box, the remaining boxes are held in a spatial order and cut into
   chunks of ``_CHUNK``; a kept box is compared only with the chunks that it could overlap with
   IoU > threshold (see ``_reach``), and the chunk x kept-box pairs are evaluated as flat tiles.

Per category, the boxes are ordered by (category, score) and pairs of different categories never
suppress each other; when every category is small, all categories are resolved at once in a
padded ``[K, S, S]`` tile instead. Overlap decisions are ``box_iou(a, b) > iou_threshold``
computed with the same operations as ``detforge.structures.boxes.box_iou`` in the compute dtype
(float32, or float64 for float64 boxes).

Small CPU inputs (at most ``_SMALL`` boxes: per-class NMS at test time, per-level RPN NMS) take
another path, ``_small_keep``. There a call costs what its number of operations costs, not their
size: a tensor op costs a few microseconds however small its tensors, and ops over more than
32768 elements start parallel regions that stall when another process holds a core. So the small
path does its array work in NumPy (on the same memory; a call costs about a microsecond, never
runs in parallel, and performs the same IEEE operations, so the decisions are identical):

1. the overlapping pairs: every pair's IoU at once up to ``_DENSE_SMALL`` boxes
   (``_dense_pairs``); beyond, only candidate pairs (``_window_pairs``): with the boxes sorted by
   (category and) x1, a box can only overlap a later box by IoU > t if that box starts before
   ``x1 + (1 - t) * w`` (see ``_reach``), so each box is paired with a run of the sorted boxes,
   evaluated ``_PAIRS`` at a time;
2. the greedy pass: each overlapping pair sets a bit in the row of its higher-scored box (the
   boxes it suppresses if kept), and ``_bit_greedy`` walks the kept boxes in Python with integers
   as bit sets, one step per kept box that overlaps a later one.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["batched_nms", "batched_soft_nms", "nms", "soft_nms"]

_BLOCK = 256  # boxes resolved together by the dense fixed point
_CHUNK = 64  # remaining boxes per spatial chunk in the forward suppression
_TILE = 1 << 15  # elements of a temporary pair tile (small tiles stay in cache and malloc's heap)
_DENSE = 1 << 21  # batched NMS resolves all categories in one padded tile up to these pairs
_SMALL = 1024  # CPU inputs of at most this many boxes take ``_small_keep``
_DENSE_SMALL = 128  # ... and up to this many, the IoU of every pair (``_dense_pairs``)
_PAIRS = 1 << 13  # candidate pairs evaluated at once by ``_window_pairs``


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _rows(boxes: Tensor) -> Tensor:
    """Boxes as rows ``[5, N]``: x1, y1, x2, y2 and area, in the compute dtype."""
    b = boxes.detach().t().to(_compute_dtype(boxes))
    return torch.cat([b, ((b[2] - b[0]) * (b[3] - b[1]))[None]])


def _padded_rows(boxes: Tensor, order: Tensor) -> Tensor:
    """Rows of ``boxes[order]`` plus a last zero box ``[5, N + 1]``.

    The zero box has IoU 0 with every box, so it pads tiles harmlessly.
    """
    rows = _rows(boxes[order])
    return torch.cat([rows, rows.new_zeros(5, 1)], dim=1)


def _iou(r1: Tensor, r2: Tensor) -> Tensor:
    """IoU of broadcastable boxes, bit for bit the formula of ``box_iou`` (union 0 -> IoU 0).

    Args:
        r1 (Tensor[5, ...]): rows x1, y1, x2, y2, area of the first boxes.
        r2 (Tensor[5, ...]): rows of the second boxes.

    Returns:
        Tensor[...]: the broadcast IoU, in ``[0, 1]``.
    """
    iw = torch.minimum(r1[2], r2[2]).sub_(torch.maximum(r1[0], r2[0])).clamp_(min=0)
    ih = torch.minimum(r1[3], r2[3]).sub_(torch.maximum(r1[1], r2[1])).clamp_(min=0)
    inter = iw.mul_(ih)
    union = (r1[4] + r2[4]).sub_(inter).clamp_(min=torch.finfo(inter.dtype).tiny)
    return inter.div_(union)


def _fixed_point(over: Tensor) -> Tensor:
    """Greedy keep mask of each row of ``over`` (Tensor[G, S, S], 0/1, upper-triangular).

    Returns:
        Tensor[G, S] (bool): ``keep[j] = not any(keep[i] and over[i, j] for i < j)``.
    """
    keep = torch.ones(over.shape[:2], dtype=over.dtype, device=over.device)
    if not bool(over.amax() > 0):
        return keep.bool()
    for _ in range(over.shape[1] + 1):  # exact after (longest chain + 1) <= S + 1 steps
        new = (torch.bmm(keep.unsqueeze(1), over).squeeze(1) == 0).to(over.dtype)  # [G, S]
        if torch.equal(new, keep):
            break
        keep = new
    return keep.bool()


def _runs(values: Tensor) -> Tensor:
    """Run index of each entry of a sorted 1-D tensor: ``[3, 3, 5, 7, 7] -> [0, 0, 1, 2, 2]``."""
    change = (values[1:] != values[:-1]).to(torch.int64)
    return torch.cat([change.new_zeros(1), change.cumsum(0)])


def _resolve(rows: Tensor, pos: Tensor, seg: Tensor | None, t: float) -> Tensor:
    """Greedy NMS among the boxes ``pos`` (ascending), independently in each segment.

    Args:
        rows (Tensor[5, N + 1]): boxes in score order, zero box last (see ``_padded_rows``).
        pos (Tensor[M]): ascending positions into ``rows``.
        seg (Tensor[M] | None): non-decreasing segment (category) index, or ``None`` for one.
        t: IoU threshold (>= 0).

    Returns:
        Tensor[M] (bool): which of ``pos`` survive.
    """
    if seg is None:
        grid = pos[None]  # [1, M]
        slot = None
    else:
        counts = torch.bincount(seg)
        slot = torch.arange(pos.numel(), device=pos.device) - (counts.cumsum(0) - counts)[seg]
        grid = pos.new_full((counts.numel(), int(counts.max())), rows.shape[1] - 1)
        grid[seg, slot] = pos  # [G, S], padded with the zero box
    r = rows[:, grid]  # [5, G, S]
    iou = _iou(r[..., :, None], r[..., None, :])  # [G, S, S]
    # 1.0 where IoU > t above the diagonal (the sign of IoU - t is exact), else 0.0
    keep = _fixed_point(iou.triu_(1).sub_(t).sign_().clamp_(min=0))  # [G, S]
    return keep[0] if seg is None or slot is None else keep[seg, slot]


def _spatial_order(rows: Tensor, cls: Tensor | None) -> Tensor:
    """Permutation of the boxes by (category, horizontal strip, x centre): compact chunks.

    The strips are about as high as a chunk of ``_CHUNK`` boxes is wide. Any order gives the same
    NMS result; a compact one just makes the forward suppression cheaper.
    """
    n = rows.shape[1] - 1
    ctr = (rows[:2, :n] + rows[2:4, :n]) * 0.5  # [2, N]
    lo, hi = ctr.amin(dim=1), ctr.amax(dim=1)
    span = (hi - lo).clamp(min=1e-6)
    side = (span.prod() * (_CHUNK / n)).sqrt()
    strip = ((ctr[1] - lo[1]) / side).floor().clamp(max=2**20).to(torch.int64)
    xq = ((ctr[0] - lo[0]) * ((2**20) / span[0])).floor().clamp(max=2**20).to(torch.int64)
    order = torch.argsort(strip * (2**21) + xq)
    if cls is not None:
        order = order[torch.argsort(cls[order], stable=True)]
    return order


def _reach(t: float, extent: float, dtype: torch.dtype) -> tuple[float, float]:
    """Scale and slack of the neighbourhood test of the forward suppression.

    If ``IoU(i, j) > t`` then the x-overlap exceeds ``t * max(w_i, w_j)``, hence
    ``|cx_i - cx_j| < (1 - t) * max(w_i, w_j) = 2 (1 - t) max(half_i, half_j)``, and likewise in y.
    The threshold is lowered by 1e-5 and an absolute slack is added so that rounding (of the
    centres, and of the computed IoU against the exact one) can only widen the test.
    """
    eps = torch.finfo(dtype).eps
    return 2.0 * max(1.0 - max(t - 1e-5, 0.0), 0.0), 64 * eps * (extent + 1.0)


class _Chunks:
    """Unprocessed boxes cut into spatially compact chunks of ``_CHUNK``, for forward suppression.

    Chunks keep boxes that were processed or suppressed since they were built (their results
    are simply ignored); ``_greedy`` rebuilds them when less than half of the slots are alive.

    Args:
        rows (Tensor[5, N + 1]): boxes in score order (see ``_padded_rows``).
        cls (Tensor[N] | None): category index of each box.
        rem (Tensor[R]): positions of the boxes, in spatial order.
        t: IoU threshold (>= 0).
    """

    def __init__(self, rows: Tensor, cls: Tensor | None, rem: Tensor, t: float) -> None:
        reach = _reach(t, float(rows[:4].abs().amax()), rows.dtype)
        r = rem.numel()
        pad = rem[-1:].expand(-(-r // _CHUNK) * _CHUNK - r)  # repeat the last box: harmless
        self.grid = torch.cat([rem, pad]).view(-1, _CHUNK)  # [C, _CHUNK] positions
        self.rows = rows[:, self.grid]  # [5, C, _CHUNK]
        ctr = (self.rows[:2] + self.rows[2:4]) * 0.5  # [2, C, _CHUNK]
        lo, hi = ctr.amin(dim=2), ctr.amax(dim=2)  # [2, C]
        self.half = ((self.rows[2:4] - self.rows[:2]) * 0.5).amax(dim=2)[..., None]
        self.mid = ((lo + hi) * 0.5)[..., None]  # [2, C, 1] centre of the chunk's centres
        self.radius = ((hi - lo) * 0.5 + reach[1])[..., None]  # their half spread, plus slack
        self.cls = None if cls is None else cls[self.grid]  # [C, _CHUNK]
        self.cls_range = None if self.cls is None else self.cls.aminmax(dim=1)  # 2 x [C]
        self.scale = reach[0]

    def _pairs(self, rows: Tensor, cls: Tensor | None, kept: Tensor) -> tuple[Tensor, Tensor]:
        """(chunk, kept box) index pairs that pass the neighbourhood test of ``_reach``."""
        k = rows[:4, kept]  # [4, k]
        kc, kh = ((k[:2] + k[2:]) * 0.5)[:, None], ((k[2:] - k[:2]) * 0.5)[:, None]  # [2, 1, k]
        reach = torch.maximum(kh, self.half).mul_(self.scale)  # [2, C, k]
        gap = (kc - self.mid).abs_().sub_(self.radius).sub_(reach)
        near = torch.maximum(gap[0], gap[1]) <= 0  # [C, k]
        if self.cls_range is not None and cls is not None:
            kcls, (lo, hi) = cls[kept][None, :], self.cls_range
            near &= (kcls >= lo[:, None]) & (kcls <= hi[:, None])
        ci, ki = near.nonzero().unbind(1)
        return ci, ki

    def suppressed(self, rows: Tensor, cls: Tensor | None, kept: Tensor, t: float) -> Tensor:
        """Positions of chunk boxes (with repeats) that overlap a ``kept`` box with IoU > ``t``."""
        ci, ki = self._pairs(rows, cls, kept)
        best = rows.new_zeros(self.grid.shape)  # max IoU with a kept box, [C, _CHUNK]
        step = max(1, _TILE // _CHUNK)
        for s in range(0, ci.numel(), step):
            c_, k_ = ci[s : s + step], kept[ki[s : s + step]]
            iou = _iou(self.rows.index_select(1, c_), rows[:, k_, None])  # [p, _CHUNK]
            if self.cls is not None and cls is not None:
                iou.mul_(self.cls.index_select(0, c_) == cls[k_, None])
            best.scatter_reduce_(0, c_[:, None].expand_as(iou), iou, "amax")
        return self.grid[best > t]


def _greedy(rows: Tensor, cls: Tensor | None, t: float) -> Tensor:
    """Positions kept by greedy NMS over boxes in (category,) score order; see the module doc.

    Args:
        rows (Tensor[5, N + 1]): boxes in order, zero box last (see ``_padded_rows``).
        cls (Tensor[N] | None): non-decreasing category index of each box.
        t: IoU threshold (>= 0).

    Returns:
        Tensor[K] (int64): ascending positions of the kept boxes.
    """
    n = rows.shape[1] - 1
    alive = torch.ones(n, dtype=torch.bool, device=rows.device)  # unprocessed, unsuppressed
    order: Tensor | None = None  # boxes in spatial order, built when first needed
    chunks: _Chunks | None = None
    kept_parts = []
    start = 0
    while True:
        block = alive[start:].nonzero().squeeze(1)[:_BLOCK] + start
        if block.numel() == 0:
            break
        seg = None if cls is None else _runs(cls[block])
        kept = block[_resolve(rows, block, seg, t)]
        kept_parts.append(kept)
        alive[block] = False
        start = int(block[-1]) + 1
        left = int(alive.sum())
        if left == 0:
            break
        if chunks is None or 2 * left < chunks.grid.numel():
            order = _spatial_order(rows, cls) if order is None else order
            order = order[alive[order]]
            chunks = _Chunks(rows, cls, order, t)
        alive[chunks.suppressed(rows, cls, kept, t)] = False
    return torch.cat(kept_parts) if kept_parts else alive.new_zeros(0, dtype=torch.int64)


def _bit_greedy(rows: bytes, todo: int, n: int, width: int) -> int:
    """Greedy NMS over bit sets; bit ``k`` stands for the box at score position ``k``.

    Args:
        rows: ``n`` rows of ``width`` bytes, little-endian bit sets: row ``k`` holds the later
            boxes that box ``k`` suppresses if it is kept.
        todo: bit set of the boxes whose row is not empty.
        n: number of boxes.
        width: bytes per row.

    Returns:
        int: bit set of the kept boxes.
    """
    free = (1 << n) - 1  # boxes not suppressed (so far)
    while todo:  # the first box left in todo is kept: every box before it is settled
        low = todo & -todo
        k = low.bit_length() - 1
        free &= ~int.from_bytes(rows[k * width : (k + 1) * width], "little")
        todo &= free
        todo ^= low
    return free


def _iou_np(p: np.ndarray, area: np.ndarray, q: np.ndarray, area_q: np.ndarray) -> np.ndarray:
    """IoU of broadcastable boxes, bit for bit ``_iou`` (in NumPy).

    Args:
        p (ndarray[4, ...]): rows x2, y2, -x1, -y1 of the first boxes.
        area (ndarray[...]): their areas.
        q (ndarray[4, ...]): rows of the second boxes.
        area_q (ndarray[...]): their areas.

    Returns:
        ndarray[...]: the broadcast IoU.
    """
    z = np.minimum(p, q)  # min x2, min y2, -max x1, -max y1
    iwh = np.add(z[:2], z[2:], out=z[:2])  # min x2 - max x1 (x + (-y) is x - y), ...
    np.maximum(iwh, 0, out=iwh)
    inter = np.multiply(iwh[0], iwh[1], out=iwh[0])
    union = area + area_q
    union -= inter
    np.maximum(union, np.finfo(union.dtype).tiny, out=union)
    return np.divide(inter, union, out=inter)


def _corner_rows(b: np.ndarray) -> np.ndarray:
    """Rows x2, y2, -x1, -y1 and area ``[5, N]`` of boxes ``[N, 4]``."""
    p = np.empty((5, b.shape[0]), dtype=b.dtype)  # C order: the broadcasts below stay fast
    p[:2] = b[:, 2:].T
    np.negative(b[:, :2].T, out=p[2:4])
    wh = p[:2] + p[2:4]  # bit for bit x2 - x1, y2 - y1
    np.multiply(wh[0], wh[1], out=p[4])
    return p


def _dense_pairs(b: np.ndarray, cls: np.ndarray | None, t: float) -> np.ndarray:
    """Which pairs overlap, from the IoU of every pair: few calls, N * N work.

    Args:
        b (ndarray[N, 4]): boxes by score, in the compute dtype.
        cls (ndarray[N] | None): their categories, or ``None``.
        t: IoU threshold (>= 0).

    Returns:
        ndarray[N, N] (bool): ``[i, j]`` is true iff ``i < j``, IoU > ``t`` and, if ``cls`` is
        given, the categories are equal.
    """
    p = _corner_rows(b)
    over = _iou_np(p[:4, :, None], p[4, :, None], p[:4, None, :], p[4]) > b.dtype.type(t)
    pos = np.arange(b.shape[0])
    over &= pos[:, None] < pos
    if cls is not None:
        over &= cls[:, None] == cls
    return over


def _window_pairs(
    b: np.ndarray, cls: np.ndarray | None, t: float, extent: float
) -> tuple[np.ndarray, np.ndarray]:
    """Which pairs overlap, from the IoU of candidate pairs only: more calls, less work.

    A box can only overlap a box with a larger (or equal) x1 by IoU > t if that x1 is below
    ``x1 + (1 - t) * w`` (see ``_reach``): with the boxes sorted by (category and) x1, the
    candidates of a box are the boxes after it, up to that bound. The pairs are evaluated in
    chunks of about ``_PAIRS``, so that the temporaries stay small (see ``_TILE``).

    Args:
        b (ndarray[N, 4]): boxes by score, in the compute dtype.
        cls (ndarray[N] | None): their categories, or ``None``.
        t: IoU threshold (>= 0).
        extent: an upper bound of the absolute value of every coordinate.

    Returns:
        i, j (ndarray[E] int64): the score positions of the overlapping pairs, ``i < j``.
    """
    n = b.shape[0]
    xo = np.argsort(b[:, 0], kind="stable")  # x1 order -> score position
    xs = b[xo, 0]
    scale, slack = _reach(t, extent, torch.float64 if b.dtype == np.float64 else torch.float32)
    if cls is not None:
        rank = np.argsort(cls[xo], kind="stable")  # (category, x1) order -> x1 order
        xo = xo[rank]
        c = cls[xo]
        run = np.concatenate([[0], np.cumsum(c[1:] != c[:-1])])
    bx = b[xo]  # [N, 4] in (category,) x1 order
    p = _corner_rows(bx)
    bound = (p[0] + p[2]) * b.dtype.type(scale * 0.5) + b.dtype.type(slack) + bx[:, 0]
    hi = np.searchsorted(xs, bound)  # boxes (of any category) with x1 < bound
    if cls is not None:  # ... of the same category: (category, x1 rank) as one sorted key
        hi = np.searchsorted(run * n + rank, run * n + hi)
    ar = np.arange(n)
    count = hi - ar - 1  # candidates of the box at k: positions k + 1 .. hi[k] - 1
    ends = np.concatenate([[0], count.cumsum()])  # pairs of boxes k0..k1-1: ends[k0]..ends[k1]
    shift = ends[:-1] - ar - 1  # pair number - shift = position of the candidate
    cuts: list[int] = []  # chunks of boxes with about _PAIRS pairs
    if ends[-1] > _PAIRS:
        cuts = list(np.searchsorted(ends, np.arange(_PAIRS, ends[-1], _PAIRS), side="right") - 1)
    us, vs = [], []
    for k0, k1 in zip([0, *cuts], [*cuts, n], strict=True):
        m = count[k0:k1]
        first = np.repeat(ar[k0:k1], m)
        second = np.arange(ends[k0], ends[k1]) - np.repeat(shift[k0:k1], m)
        pa, pb = p.take(first, axis=1), p.take(second, axis=1)
        pairs = np.flatnonzero(_iou_np(pa[:4], pa[4], pb[:4], pb[4]) > b.dtype.type(t))
        us.append(xo[first[pairs]])
        vs.append(xo[second[pairs]])
    u, v = (us[0], vs[0]) if len(us) == 1 else (np.concatenate(us), np.concatenate(vs))
    return np.minimum(u, v), np.maximum(u, v)


def _small_keep(
    boxes: Tensor, order: Tensor, cls: Tensor | None, t: float, extent: float
) -> Tensor:
    """Greedy NMS of a small CPU input, with NumPy doing the work; see the module doc.

    NumPy (on views of the tensors' memory) costs a fraction of a tensor op per call and never
    starts a parallel region, which is what a small input needs; its float operations are the
    same IEEE operations as ``_iou``'s, so the decisions are identical.

    Args:
        boxes (Tensor[N, 4]): xyxy on the CPU, in input order, N >= 1.
        order (Tensor[N]): input indices by decreasing score.
        cls (Tensor[N] | None): integer category of each box (input order), or ``None``.
        t: IoU threshold (>= 0).
        extent: an upper bound of the absolute value of every coordinate.

    Returns:
        Tensor[K] (int64): the kept indices, in the order of ``order``.
    """
    n = order.numel()
    by_score = order.numpy()
    b = boxes.detach()
    b = b.to(_compute_dtype(b)).numpy()[by_score]  # [N, 4] by score, compute dtype
    c = None if cls is None else cls.numpy()[by_score]
    width = (n + 7) >> 3  # bytes per bit row
    if n <= _DENSE_SMALL:
        with np.errstate(all="ignore"):  # huge finite boxes: inf, NaN as in tensor ops
            over = _dense_pairs(b, c, t)
        rows = np.packbits(over, axis=1, bitorder="little").tobytes()
        todo = over.any(axis=1)
    else:
        with np.errstate(all="ignore"):
            i, j = _window_pairs(b, c, t, extent)
        # row i gets bit j; the pairs are distinct, so a sum of bits is their OR
        sums = np.bincount(i * width + (j >> 3), np.left_shift(1, j & 7), n * width)
        rows = sums.astype(np.uint8).tobytes()
        todo = np.zeros(n, dtype=bool)
        todo[i] = True
    todo_bits = int.from_bytes(np.packbits(todo, bitorder="little").tobytes(), "little")
    kept = _bit_greedy(rows, todo_bits, n, width)
    bits = np.unpackbits(
        np.frombuffer(kept.to_bytes(width, "little"), np.uint8), count=n, bitorder="little"
    )
    return torch.from_numpy(by_score[bits.astype(bool)])


def _is_small(boxes: Tensor) -> bool:
    """Whether ``_small_keep`` handles these boxes: at most ``_SMALL`` of them, on the CPU."""
    return boxes.shape[0] <= _SMALL and boxes.device.type == "cpu"


def _extent(boxes: Tensor, extent: float | None) -> float:
    """``extent`` if given, else the largest absolute coordinate."""
    return float(boxes.detach().abs().amax()) if extent is None else extent


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, extent: float | None = None) -> Tensor:
    """Greedy NMS; arguments as ``detforge.ops.nms.nms`` (already validated).

    ``extent``, if given, bounds the absolute value of every coordinate (saves a pass over them).

    Returns:
        Tensor[K] (int64): kept indices by decreasing score, ties by lower index.
    """
    order = torch.argsort(scores.detach(), descending=True, stable=True)
    if order.numel() == 0 or iou_threshold < 0:  # IoU >= 0 > t: the top box suppresses all
        return order[:1]
    if _is_small(boxes):
        return _small_keep(boxes, order, None, iou_threshold, _extent(boxes, extent))
    return order[_greedy(_padded_rows(boxes, order), None, iou_threshold)]


def batched_nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, extent: float | None = None
) -> Tensor:
    """Per-category greedy NMS; arguments as ``detforge.ops.nms.batched_nms`` (validated).

    ``extent`` as for :func:`nms`.

    Returns:
        Tensor[K] (int64): kept indices by decreasing score, ties by lower index.
    """
    by_score = torch.argsort(scores.detach(), descending=True, stable=True)
    if by_score.numel() and iou_threshold >= 0 and _is_small(boxes):
        return _small_keep(boxes, by_score, idxs, iou_threshold, _extent(boxes, extent))
    rank = torch.argsort(idxs[by_score], stable=True)  # position p -> rank by score
    order = by_score[rank]  # by (category, score, index)
    if order.numel() == 0:
        return order
    cls = _runs(idxs[order])  # [N] category index 0..G-1, non-decreasing
    if iou_threshold < 0:  # IoU >= 0 > t: only the top box of each category survives
        first = torch.cat([cls.new_ones(1, dtype=torch.bool), cls[1:] != cls[:-1]])
        kept = first.nonzero().squeeze(1)
    else:
        rows = _padded_rows(boxes, order)
        counts = torch.bincount(cls)
        most = int(counts.max())
        if most <= _BLOCK and counts.numel() * most * most <= _DENSE:
            pos = torch.arange(order.numel(), device=order.device)
            kept = pos[_resolve(rows, pos, cls, iou_threshold)]
        else:
            kept = _greedy(rows, cls, iou_threshold)
    return by_score[rank[kept].sort().values]  # merge the categories by score, then index


def _segment_argmax(s: Tensor, cls: Tensor, groups: int) -> Tensor:
    """Position of the highest ``s`` in each category present, ties by lower position."""
    best = s.new_full((groups,), -math.inf).scatter_reduce_(0, cls, s, "amax")
    cand = (s == best[cls]).nonzero().squeeze(1)
    first = cand.new_full((groups,), s.numel()).scatter_reduce_(0, cls[cand], cand, "amin")
    return first[first < s.numel()]


def _soft(
    boxes: Tensor,
    scores: Tensor,
    cls: Tensor | None,
    method: Literal["linear", "gaussian"],
    t: float,
    sigma: float,
    score_threshold: float,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS, in every category at once (one pick per category and step) if ``cls`` is given.

    Returns:
        indices (Tensor[K]) in pick order within each category, and their scores when picked.
    """
    groups = int(cls.max()) + 1 if cls is not None and cls.numel() else 1
    state = _rows(boxes)  # [5, N]
    s = scores.detach().to(_compute_dtype(scores))
    idx = (s >= score_threshold).nonzero().squeeze(1)  # live boxes, ascending index
    state, s, c = state[:, idx], s[idx], None if cls is None else cls[idx]
    picked, picked_scores = [], []
    while idx.numel():
        pick = s.argmax().unsqueeze(0) if c is None else _segment_argmax(s, c, groups)
        picked.append(idx[pick])
        picked_scores.append(s[pick])
        if c is None:
            other = state[:, pick]  # [5, 1]
        else:  # the box picked in each box's category
            table = pick.new_zeros(groups)
            table[c[pick]] = pick
            other = state[:, table[c]]  # [5, R]
        iou = _iou(state, other).to(s.dtype)
        if method == "linear":
            s = s * torch.where(iou > t, 1 - iou, torch.ones_like(iou))
        else:
            s = s * torch.exp(-(iou * iou) / sigma)
        live = s >= score_threshold
        live[pick] = False
        keep = live.nonzero().squeeze(1)
        state, s, idx = state[:, keep], s[keep], idx[keep]
        c = None if c is None else c[keep]
    if not picked:
        return idx.new_zeros(0), scores.new_zeros(0)
    return torch.cat(picked), torch.cat(picked_scores).to(scores.dtype)


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    method: Literal["linear", "gaussian"],
    iou_threshold: float,
    sigma: float,
    score_threshold: float,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS; arguments as ``detforge.ops.nms.soft_nms`` (already validated)."""
    return _soft(boxes, scores, None, method, iou_threshold, sigma, score_threshold)


def batched_soft_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    method: Literal["linear", "gaussian"],
    iou_threshold: float,
    sigma: float,
    score_threshold: float,
) -> tuple[Tensor, Tensor]:
    """Per-category Soft-NMS; arguments as ``detforge.ops.nms.batched_soft_nms`` (validated).

    Returns:
        kept indices (Tensor[K]) by decreasing new score, ties by lower index, and new scores.
    """
    cls = torch.unique(idxs, return_inverse=True)[1] if idxs.numel() else idxs.long()
    keep, new = _soft(boxes, scores, cls, method, iou_threshold, sigma, score_threshold)
    perm = torch.argsort(keep)
    keep, new = keep[perm], new[perm]
    perm = torch.argsort(new, descending=True, stable=True)
    return keep[perm], new[perm]
