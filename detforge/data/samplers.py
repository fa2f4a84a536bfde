"""Samplers: which records each process loads, in which order.

Training samplers are infinite and yield ``(position, index)`` keys: ``index`` is the record to
load and ``position`` its place in this process's stream. The dataset derives each sample's
augmentation RNG from ``(seed, rank, position)``, so a run's data is reproducible whatever the
number of workers, and a resumed run continues the stream exactly by starting at the position
where it stopped (``start``), without replaying it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from detforge.utils.comm import get_rank, get_world_size

__all__ = [
    "GroupedBatchSampler",
    "InferenceSampler",
    "RepeatFactorTrainingSampler",
    "TrainingSampler",
    "repeat_factors_from_category_frequency",
]

Key = tuple[int, int]  # (position in the stream, record index)


def _check_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    r = get_rank() if rank is None else rank
    w = get_world_size() if world_size is None else world_size
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"sampler: need 0 <= rank < world_size, got rank {r}, world_size {w}")
    return r, w


def _epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class TrainingSampler:
    """An infinite stream of shuffled record indices, sharded across processes.

    The global stream concatenates one seeded permutation of ``range(size)`` per epoch; process
    ``rank`` takes global positions ``rank, rank + world_size, ...``. All processes therefore
    see disjoint samples of the same stream, and together they cover every record once per
    epoch.

    Args:
        size: number of records.
        shuffle: shuffle each epoch (otherwise ``0 .. size-1`` repeated).
        seed: seed of the stream; must be the same in every process.
        rank: this process's rank (default: from ``torch.distributed``, 0 when not initialised).
        world_size: number of processes (default: likewise, 1).
        start: position in this process's stream to start from (for exact resume).
    """

    def __init__(
        self,
        size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        start: int = 0,
    ) -> None:
        if size <= 0:
            raise ValueError(f"TrainingSampler: `size` must be positive, got {size}")
        if start < 0:
            raise ValueError(f"TrainingSampler: `start` must be >= 0, got {start}")
        self.size, self.shuffle, self.seed, self.start = size, shuffle, seed, start
        self.rank, self.world_size = _check_rank(rank, world_size)

    def __iter__(self) -> Iterator[Key]:
        position = self.start
        epoch, perm = -1, torch.empty(0, dtype=torch.long)
        while True:
            g = position * self.world_size + self.rank  # global position
            if g // self.size != epoch:
                epoch = g // self.size
                perm = _epoch_permutation(self.size, self.seed, epoch, self.shuffle)
            yield position, int(perm[g % self.size])
            position += 1


def repeat_factors_from_category_frequency(
    category_ids: Sequence[Sequence[int]], threshold: float
) -> torch.Tensor:
    """Per-record repeat factors for long-tailed data (LVIS, Gupta et al. 2019).

    For category ``c`` with ``f(c)`` the fraction of records that contain it,
    ``r(c) = max(1, sqrt(threshold / f(c)))``; a record repeats ``max(r(c))`` over its categories
    (1 for a record without annotations).

    Args:
        category_ids: the category ids present in each record.
        threshold: frequency below which categories are oversampled.

    Returns:
        Tensor[N] float32 repeat factors, each >= 1.
    """
    if threshold <= 0:
        raise ValueError(
            f"repeat_factors_from_category_frequency: threshold must be > 0, got {threshold}"
        )
    n = len(category_ids)
    counts: dict[int, int] = {}
    for cats in category_ids:
        for c in set(cats):
            counts[c] = counts.get(c, 0) + 1
    cat_factor = {c: max(1.0, math.sqrt(threshold / (k / n))) for c, k in counts.items()}
    factors = [max((cat_factor[c] for c in set(cats)), default=1.0) for cats in category_ids]
    return torch.tensor(factors, dtype=torch.float32)


class RepeatFactorTrainingSampler(TrainingSampler):
    """Like :class:`TrainingSampler`, but record ``i`` appears ``repeat_factors[i]`` times per
    epoch on average: the integer part always, the fractional part by a seeded coin per epoch.

    Args:
        repeat_factors (Tensor[N]): float factors >= 1 (see
            :func:`repeat_factors_from_category_frequency`).
        seed, rank, world_size, start: as for :class:`TrainingSampler`.
    """

    def __init__(
        self,
        repeat_factors: torch.Tensor,
        *,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        start: int = 0,
    ) -> None:
        if repeat_factors.dim() != 1 or bool((repeat_factors < 1).any()):
            raise ValueError(
                "RepeatFactorTrainingSampler: `repeat_factors` must be a 1-D tensor >= 1"
            )
        super().__init__(
            len(repeat_factors), seed=seed, rank=rank, world_size=world_size, start=start
        )
        self.repeat_factors = repeat_factors.to(torch.float64)

    def _epoch_indices(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        whole = self.repeat_factors.floor()
        extra = torch.rand(len(whole), generator=g, dtype=torch.float64) < (
            self.repeat_factors - whole
        )
        reps = (whole + extra.to(torch.float64)).long()
        indices = torch.repeat_interleave(torch.arange(len(reps)), reps)
        return indices[torch.randperm(len(indices), generator=g)]

    def __iter__(self) -> Iterator[Key]:
        # Epoch lengths vary, so walk the global stream epoch by epoch up to `start`.
        position, epoch, offset = 0, 0, 0
        indices = self._epoch_indices(0)
        while True:
            g = position * self.world_size + self.rank
            while g - offset >= len(indices):
                offset += len(indices)
                epoch += 1
                indices = self._epoch_indices(epoch)
            if position >= self.start:
                yield position, int(indices[g - offset])
            position += 1


class InferenceSampler:
    """Every record exactly once, in order, split into contiguous shards across processes
    (shard sizes differ by at most one), for distributed evaluation.

    Args:
        size: number of records.
        rank, world_size: as for :class:`TrainingSampler`.
    """

    def __init__(
        self, size: int, *, rank: int | None = None, world_size: int | None = None
    ) -> None:
        if size < 0:
            raise ValueError(f"InferenceSampler: `size` must be >= 0, got {size}")
        self.rank, self.world_size = _check_rank(rank, world_size)
        per, rest = divmod(size, self.world_size)
        begin = self.rank * per + min(self.rank, rest)
        self.indices = range(begin, begin + per + (1 if self.rank < rest else 0))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class GroupedBatchSampler:
    """Batches of keys whose records share an aspect-ratio group.

    Keys are taken from ``sampler`` in order and kept in one bucket per group (e.g. landscape
    and portrait); a batch is emitted as soon as a bucket holds ``batch_size`` keys, so images
    of similar shape are padded together and waste less memory.

    The batches are a deterministic function of the key stream, so a resumed run gets exactly
    the batches it would have had: ``skip_batches`` replays the grouping of the first batches
    (keys only, no data is loaded) and starts with the next one.

    Args:
        sampler: yields ``(position, index)`` keys (e.g. :class:`TrainingSampler` from 0).
        group_ids: group of each record index (e.g. ``width >= height``).
        batch_size: keys per batch (per process).
        skip_batches: number of leading batches not to yield (batches already trained on).
    """

    def __init__(
        self,
        sampler: Iterable[Key],
        group_ids: Sequence[int] | np.ndarray,
        batch_size: int,
        *,
        skip_batches: int = 0,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(
                f"GroupedBatchSampler: `batch_size` must be positive, got {batch_size}"
            )
        if skip_batches < 0:
            raise ValueError(
                f"GroupedBatchSampler: `skip_batches` must be >= 0, got {skip_batches}"
            )
        self.sampler, self.batch_size, self.skip_batches = sampler, batch_size, skip_batches
        self.group_ids = np.asarray(group_ids, dtype=np.int64)

    def __iter__(self) -> Iterator[list[Key]]:
        buckets: dict[int, list[Key]] = {}
        emitted = 0
        for key in self.sampler:
            bucket = buckets.setdefault(int(self.group_ids[key[1]]), [])
            bucket.append(key)
            if len(bucket) == self.batch_size:
                if emitted >= self.skip_batches:
                    yield bucket[:]
                emitted += 1
                bucket.clear()
