"""In-memory counters of one account, answering window queries with vectorised sums.

The store stays the source of truth; an :class:`AccountAggregate` mirrors an account's bucket
counters (loaded once, then kept current from the store's change log) so a query sums NumPy
arrays instead of scanning rows. Results are the same :class:`CountRow` groups the store's own
``counts`` returns, so response assembly does not know which answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from csatdist.buckets import BUCKET_MS, MINUTE_MS
from csatdist.distribution import CountRow, Grouping
from csatdist.query import Selection
from csatdist.store import BucketRow, CountsRequest, Store

Int64Array = npt.NDArray[np.int64]


class _Slot:
    """The counters of one 5-minute bucket: a growable (pair, 5) array and its totals."""

    __slots__ = ("counts", "index", "pairs", "size", "totals")

    def __init__(self) -> None:
        self.pairs: npt.NDArray[np.int32] = np.empty(8, dtype=np.int32)
        self.counts: Int64Array = np.zeros((8, 5), dtype=np.int64)
        self.index: dict[int, int] = {}
        self.size = 0
        self.totals: Int64Array = np.zeros(5, dtype=np.int64)

    def add(self, pair: int, counts: Sequence[int]) -> None:
        position = self.index.get(pair)
        if position is None:
            if self.size == len(self.pairs):
                self.pairs = np.resize(self.pairs, 2 * self.size)
                grown = np.zeros((2 * self.size, 5), dtype=np.int64)
                grown[: self.size] = self.counts[: self.size]
                self.counts = grown
            position = self.index[pair] = self.size
            self.pairs[position] = pair
            self.size += 1
        self.counts[position] += counts
        self.totals += counts


class AccountAggregate:
    """All counters of one account, by bucket and (skill, agent) pair."""

    def __init__(self, version: int = 0) -> None:
        self.version = version
        self._pair_of: dict[tuple[int, int], int] = {}
        self._skills: list[int] = []
        self._agents: list[int] = []
        self._slots: dict[int, _Slot] = {}

    def _pair(self, skill: int, agent: int) -> int:
        pair = self._pair_of.get((skill, agent))
        if pair is None:
            pair = self._pair_of[(skill, agent)] = len(self._skills)
            self._skills.append(skill)
            self._agents.append(agent)
        return pair

    def apply(self, rows: Iterable[BucketRow]) -> None:
        for bucket_end, skill, agent, *counts in rows:
            slot = self._slots.get(bucket_end)
            if slot is None:
                slot = self._slots[bucket_end] = _Slot()
            slot.add(self._pair(skill, agent), counts)

    def drop_before(self, oldest_bucket_end: int) -> None:
        """Forget buckets the store has purged (they can no longer be in any window)."""
        for bucket_end in [b for b in self._slots if b <= oldest_bucket_end]:
            del self._slots[bucket_end]

    def counts(self, request: CountsRequest) -> list[CountRow]:
        window = request.window
        grouping = request.grouping
        step = (request.interval_minutes or 0) * MINUTE_MS
        slots = [
            (end, slot)
            for end in range(window.first_bucket_end, window.end_ms + 1, BUCKET_MS)
            if (slot := self._slots.get(end)) is not None and slot.size
        ]
        if not slots:
            return []

        def interval_of(end: int) -> int | None:
            if not grouping.by_interval or not step:
                return None
            return window.end_ms - ((window.end_ms - end) // step) * step

        filtered = _is_filtered(request.skills) or _is_filtered(request.agents)
        if not grouping.by_skill and not grouping.by_agent and not filtered:
            sums: dict[int | None, Int64Array] = {}
            for end, slot in slots:
                key = interval_of(end)
                sums[key] = sums[key] + slot.totals if key in sums else slot.totals.copy()
            return [_row(key, None, None, total) for key, total in sums.items() if total.any()]

        pairs = np.concatenate([slot.pairs[: slot.size] for _, slot in slots])
        counts = np.concatenate([slot.counts[: slot.size] for _, slot in slots])
        intervals: Int64Array | None = None
        if grouping.by_interval and step:
            intervals = np.concatenate(
                [np.full(slot.size, interval_of(end), dtype=np.int64) for end, slot in slots]
            )
        if filtered:
            keep = self._admitted(request.skills, request.agents)[pairs]
            pairs, counts = pairs[keep], counts[keep]
            if intervals is not None:
                intervals = intervals[keep]
        return self._grouped(pairs, counts, intervals, grouping)

    def _admitted(
        self, skills: Selection | None, agents: Selection | None
    ) -> npt.NDArray[np.bool_]:
        admitted = np.ones(len(self._skills), dtype=bool)
        for values, selection in ((self._skills, skills), (self._agents, agents)):
            if selection is not None and selection.ids is not None:
                admitted &= np.isin(np.asarray(values, dtype=np.int64), list(selection.ids))
        return admitted

    def _grouped(
        self,
        pairs: npt.NDArray[np.int32],
        counts: Int64Array,
        intervals: Int64Array | None,
        grouping: Grouping,
    ) -> list[CountRow]:
        skills = np.asarray(self._skills, dtype=np.int64)
        agents = np.asarray(self._agents, dtype=np.int64)
        columns: list[Int64Array] = []
        if intervals is not None:
            columns.append(intervals)
        if grouping.by_skill:
            columns.append(skills[pairs])
        if grouping.by_agent:
            columns.append(agents[pairs])
        if not columns:
            total = counts.sum(axis=0)
            return [_row(None, None, None, total)] if total.any() else []
        keys, inverse = np.unique(np.stack(columns, axis=1), axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        sums = np.zeros((len(keys), 5), dtype=np.int64)
        for score in range(5):
            sums[:, score] = np.bincount(inverse, weights=counts[:, score], minlength=len(keys))
        rows = []
        for key, total in zip(keys.tolist(), sums, strict=True):
            if not total.any():
                continue
            values = iter(key)
            interval = next(values) if intervals is not None else None
            skill = next(values) if grouping.by_skill else None
            agent = next(values) if grouping.by_agent else None
            rows.append(_row(interval, skill, agent, total))
        return rows


def _is_filtered(selection: Selection | None) -> bool:
    return selection is not None and selection.ids is not None


def _row(interval: int | None, skill: int | None, agent: int | None, total: Int64Array) -> CountRow:
    c = total.tolist()
    return CountRow(interval, skill, agent, (c[0], c[1], c[2], c[3], c[4]))


class CountsSource(Protocol):
    """Anything that sums an account's counters for a window: a store, or the cache below."""

    def counts(self, request: CountsRequest) -> list[CountRow]: ...


class AggregateCache:
    """In-memory aggregates of the accounts this server answers for, never stale.

    Before every query the account's aggregate catches up with the store's change log (one
    indexed read), so an answer acknowledged by any server is in the next query here. An
    aggregate that fell behind the change log's retention, or is new, loads a snapshot.
    Aggregates unused for ``idle_seconds`` are dropped to bound memory.
    """

    def __init__(self, store: Store, idle_seconds: float = 1800.0) -> None:
        self.store = store
        self.idle_seconds = idle_seconds
        self._entries: dict[str, tuple[AccountAggregate, threading.Lock]] = {}
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()

    def _entry(self, account_id: str) -> tuple[AccountAggregate | None, threading.Lock]:
        now = time.monotonic()
        with self._lock:
            for idle in [a for a, t in self._last_used.items() if now - t > self.idle_seconds]:
                self._entries.pop(idle, None)
                self._last_used.pop(idle, None)
            self._last_used[account_id] = now
            entry = self._entries.get(account_id)
            if entry is None:
                lock = threading.Lock()
                self._entries[account_id] = (AccountAggregate(version=-1), lock)
                return None, lock
            return entry

    def _current(self, account_id: str) -> AccountAggregate:
        aggregate, _ = self._entries[account_id]
        changes = self.store.account_changes(account_id, max(aggregate.version, 0))
        if (
            aggregate.version < 0
            or aggregate.version < changes.purged_through
            or (changes.version < aggregate.version)
        ):
            version, rows = self.store.account_snapshot(account_id)
            aggregate = AccountAggregate(version)
            aggregate.apply(rows)
        elif changes.version > aggregate.version:
            aggregate.apply(changes.rows)
            aggregate.version = changes.version
        return aggregate

    def counts(self, request: CountsRequest) -> list[CountRow]:
        account_id = request.account_id
        _, lock = self._entry(account_id)
        with lock:
            aggregate = self._current(account_id)
            # Two days back is past any window and any purge, even after a clock step back.
            aggregate.drop_before(request.window.end_ms - 2 * 24 * 60 * MINUTE_MS)
            with self._lock:
                self._entries[account_id] = (aggregate, lock)
            return aggregate.counts(request)
