"""Data loaders: records + mapper + sampler -> batches (lists of model-input dicts).

Per-sample randomness is derived from ``(seed, rank, stream position)`` rather than from worker
RNG state, so the samples of a run do not depend on the number of workers, and a resumed run
regenerates exactly the augmentations it would have produced.

Bad samples (unreadable or truncated images, images whose size disagrees with the annotation,
annotations the mapper rejects) do not crash a run: in lenient mode the sample is replaced by
another record (chosen deterministically) and the skip is reported in the sample itself, under
``"skipped"``, so the training loop can count and log it from the main process whatever the
number of workers. ``strict=True`` raises instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from detforge.data.records import SerializedList
from detforge.data.samplers import GroupedBatchSampler, InferenceSampler, TrainingSampler
from detforge.utils.comm import get_rank

__all__ = [
    "MapDataset",
    "RecordSource",
    "build_test_loader",
    "build_train_loader",
    "sample_rng",
    "trivial_batch_collator",
]

logger = logging.getLogger(__name__)

Mapper = Callable[[dict, np.random.Generator], dict]


class RecordSource(Protocol):
    """What the loaders need of a dataset's records: a list, or a ``SerializedList``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


_MAX_RETRIES = 10


def sample_rng(seed: int, rank: int, position: int, attempt: int = 0) -> np.random.Generator:
    """The RNG of one sample: a function of the run seed, the rank and the stream position."""
    return np.random.default_rng([seed, rank, position, attempt])


def trivial_batch_collator(batch: list[dict]) -> list[dict]:
    """Batches are lists of per-image dicts; images of different sizes are padded in the model."""
    return batch


def _bad_data_errors() -> tuple[type[BaseException], ...]:
    from detforge.data.errors import DataError

    return (DataError, OSError)


class MapDataset(Dataset):
    """Records mapped on access.

    Args:
        records: a sequence of record dicts (a ``SerializedList`` keeps them compact).
        mapper: ``mapper(record, rng) -> dict``.
        seed: run seed for :func:`sample_rng`.
        rank: process rank (for :func:`sample_rng`); default from ``torch.distributed``.
        strict: raise on a bad sample instead of replacing it.
    """

    def __init__(
        self,
        records: RecordSource,
        mapper: Mapper,
        *,
        seed: int = 0,
        rank: int | None = None,
        strict: bool = False,
    ) -> None:
        if len(records) == 0:
            raise ValueError("MapDataset: `records` is empty")
        self.records, self.mapper, self.seed, self.strict = records, mapper, seed, strict
        self.rank = get_rank() if rank is None else rank

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        position, index = (key, key) if isinstance(key, int) else key
        skipped: list[dict[str, str]] = []
        errors = _bad_data_errors()
        for attempt in range(_MAX_RETRIES + 1):
            record = self.records[index]
            rng = sample_rng(self.seed, self.rank, position, attempt)
            try:
                sample = self.mapper(record, rng)
            except errors as e:
                if self.strict:
                    raise
                where = str(record.get("file_name", f"record {index}"))
                logger.warning("skipping a bad sample (%s): %s", where, e)
                skipped.append({"file_name": where, "error": f"{type(e).__name__}: {e}"})
                index = int(rng.integers(len(self.records)))
                continue
            if skipped:
                sample["skipped"] = skipped
            return sample
        raise RuntimeError(
            f"MapDataset: {len(skipped)} bad samples in a row, last: {skipped[-1]['error']}; "
            "the dataset looks broken"
        )


def build_train_loader(
    records: RecordSource,
    mapper: Mapper,
    *,
    batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    start_batch: int = 0,
    aspect_ratio_grouping: bool = True,
    sampler: TrainingSampler | None = None,
    strict: bool = False,
) -> Iterable[list[dict]]:
    """An infinite loader of training batches for this process.

    Args:
        records: the dataset's records (each with ``height`` and ``width``); a plain list is
            serialised into a :class:`~detforge.data.records.SerializedList` first.
        mapper: ``mapper(record, rng) -> dict``.
        batch_size: images per batch in this process.
        num_workers: loader worker processes (0 loads in the main process).
        seed: run seed: the order of records and every augmentation derive from it.
        start_batch: number of batches already trained on: the loader starts with the next
            one, exactly as an uninterrupted run would have continued (for resuming).
        aspect_ratio_grouping: batch landscape and portrait images separately.
        sampler: a custom training sampler (e.g. ``RepeatFactorTrainingSampler``).
        strict: raise on a bad sample instead of replacing it.

    Returns:
        An iterable of batches, each a list of ``batch_size`` model-input dicts.
    """
    # Groups first: from a plain list this reads the dicts, instead of unpickling every record.
    if aspect_ratio_grouping:
        groups = np.array([int(r["width"] >= r["height"]) for r in _iter_records(records)])
    else:
        groups = np.zeros(len(records), dtype=np.int64)
    records = _compact(records)
    dataset = MapDataset(records, mapper, seed=seed, strict=strict)
    if sampler is None:
        sampler = TrainingSampler(len(records), seed=seed)
    batches = GroupedBatchSampler(sampler, groups, batch_size, skip_batches=start_batch)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
        persistent_workers=num_workers > 0,
        # Its own generator: creating an iterator must not draw from torch's global RNG,
        # which the model's samplers use and a resumed run restores.
        generator=torch.Generator().manual_seed(seed),
    )


def build_test_loader(
    records: RecordSource,
    mapper: Mapper,
    *,
    batch_size: int = 1,
    num_workers: int = 0,
) -> DataLoader:
    """An ordered loader over this process's shard of ``records`` (every record once).

    A record whose image cannot be read or mapped becomes ``{"skipped": [{"file_name",
    "error"}], "image_id", "file_name"}`` (no ``image``) instead of stopping the loop;
    :func:`detforge.evaluation.evaluator.inference_on_dataset` counts and reports those.
    """
    dataset = _SkipBad(MapDataset(_compact(records), mapper, strict=True))
    sampler = InferenceSampler(len(records))
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
        generator=torch.Generator().manual_seed(0),
    )


class _SkipBad(Dataset):
    """A strict :class:`MapDataset` whose bad samples become ``skipped`` markers (inference:
    every record is seen once, none is replaced by another)."""

    def __init__(self, dataset: MapDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        try:
            return self.dataset[index]
        except _bad_data_errors() as e:
            record = self.dataset.records[index]
            where = str(record.get("file_name", f"record {index}"))
            logger.warning("cannot read %s, skipping it: %s", where, e)
            error = {"file_name": where, "error": f"{type(e).__name__}: {e}"}
            return {"skipped": [error], "image_id": record.get("image_id"), "file_name": where}


def _compact(records: RecordSource) -> RecordSource:
    # Lists of dicts are copied page by page into every worker as their refcounts change;
    # one serialised buffer is shared copy-on-read.
    if isinstance(records, SerializedList):
        return records
    return SerializedList([records[i] for i in range(len(records))])


def _iter_records(records: RecordSource) -> Iterable[dict[str, Any]]:
    for i in range(len(records)):
        yield records[i]
