"""Counter changes packed as one value per version (SQLite's change log).

A version's changes — (bucket end, skill, agent, s1..s5) rows — are stored as one BLOB of
little-endian int64, eight per row: one row of the change log per ingest instead of one per
counter, which is most of the cost of logging a batch's changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import chain

import numpy as np
import numpy.typing as npt

from csatdist.distribution import group_sums
from csatdist.store import BucketRow

_INT64 = np.dtype("<i8")
_COLUMNS = 8
#: The bytes of one row in a BLOB.
ROW_BYTES = _COLUMNS * _INT64.itemsize


def pack(rows: Sequence[Sequence[int]]) -> bytes:
    """The BLOB of ``rows`` (each bucket end, skill, agent, s1..s5)."""
    return np.fromiter(
        chain.from_iterable(rows), dtype=_INT64, count=_COLUMNS * len(rows)
    ).tobytes()


def pack_array(rows: npt.NDArray[np.int64]) -> bytes:
    """The BLOB of ``rows`` given as an array of eight columns (the same bytes as :func:`pack`
    of its rows)."""
    return np.ascontiguousarray(rows, dtype=_INT64).tobytes()


def _array(blobs: Iterable[bytes]) -> npt.NDArray[np.int64]:
    parts = [np.frombuffer(blob, dtype=_INT64) for blob in blobs]
    if not parts:
        return np.empty((0, _COLUMNS), dtype=np.int64)
    return np.concatenate(parts).reshape(-1, _COLUMNS).astype(np.int64)


def summed_array(blobs: Iterable[bytes]) -> npt.NDArray[np.int64]:
    """The rows of several BLOBs added up per (bucket end, skill, agent), in that order,
    without the counters whose changes cancel out, as an array of eight columns."""
    rows = _array(blobs)
    keys, sums = group_sums([rows[:, 0], rows[:, 1], rows[:, 2]], rows[:, 3:])
    return np.column_stack([*keys, sums]).astype(np.int64, copy=False)


def summed(blobs: Iterable[bytes]) -> list[BucketRow]:
    """:func:`summed_array` as tuples."""
    return [tuple(row) for row in summed_array(blobs).tolist()]
