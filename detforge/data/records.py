"""Compact storage of dataset records for multi-process data loading.

A list of dicts is a graph of many small Python objects. Every access from a forked loader
worker touches their reference counts, which writes to the shared pages, so copy-on-write
gradually duplicates the whole list in every worker ("memory leak" reports with large datasets).
:class:`SerializedList` stores each record pickled once into a single ``numpy`` ``uint8`` buffer
plus an ``int64`` offsets array: two objects with no per-record reference counts, which forked
workers share copy-on-read.

Pickle is safe here: the buffer is only ever produced in this process from records we were given
(``pickle.dumps``) and read back from memory. ``SerializedList`` never loads anything from a file.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["SerializedList"]

logger = logging.getLogger(__name__)


class SerializedList:
    """A read-only sequence of records stored as one pickled byte buffer.

    Args:
        records: the records (any picklable objects, usually the dicts of
            ``detforge/data/__init__.py``). They are pickled once, in order; the list itself is
            not kept.

    Attributes:
        buffer (ndarray[S] uint8): the concatenated pickles (read-only).
        offsets (ndarray[N + 1] int64): record ``i`` is ``buffer[offsets[i]:offsets[i + 1]]``.

    Indexing with an int (negative ints count from the end) returns a **fresh** copy of the
    record each time, so callers may modify it freely.
    """

    def __init__(self, records: Sequence[Any]) -> None:
        if isinstance(records, (str, bytes, dict)) or not hasattr(records, "__len__"):
            raise TypeError(
                f"SerializedList: `records` must be a sequence of records, "
                f"got {type(records).__name__}"
            )
        blobs = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in records]
        sizes = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=len(blobs))
        self.offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self.offsets[1:])
        self.buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8)  # read-only
        logger.info("serialised %d records into %.2f MiB", len(blobs), self.buffer.nbytes / 1024**2)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> Any:
        """Return a new copy of record ``index`` (an int; negative counts from the end)."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"SerializedList: index must be an int, got {type(index).__name__}")
        n = len(self)
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"SerializedList: index {index} out of range for {n} records")
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return pickle.loads(self.buffer[start:end].data)

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer and the offsets."""
        return int(self.buffer.nbytes + self.offsets.nbytes)
