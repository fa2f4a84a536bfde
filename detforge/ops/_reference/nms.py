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
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = ["batched_nms", "batched_soft_nms", "nms", "soft_nms"]

_BLOCK = 256  # boxes resolved together by the dense fixed point
_CHUNK = 64  # remaining boxes per spatial chunk in the forward suppression
_TILE = 1 << 15  # elements of a temporary pair tile (small tiles stay in cache and malloc's heap)
_DENSE = 1 << 21  # batched NMS resolves all categories in one padded tile up to these pairs


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


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS; arguments as ``detforge.ops.nms.nms`` (already validated).

    Returns:
        Tensor[K] (int64): kept indices by decreasing score, ties by lower index.
    """
    order = torch.argsort(scores.detach(), descending=True, stable=True)
    if order.numel() == 0 or iou_threshold < 0:  # IoU >= 0 > t: the top box suppresses all
        return order[:1]
    return order[_greedy(_padded_rows(boxes, order), None, iou_threshold)]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Per-category greedy NMS; arguments as ``detforge.ops.nms.batched_nms`` (validated).

    Returns:
        Tensor[K] (int64): kept indices by decreasing score, ties by lower index.
    """
    by_score = torch.argsort(scores.detach(), descending=True, stable=True)
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
