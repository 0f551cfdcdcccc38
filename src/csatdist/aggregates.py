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

from csatdist.buckets import BUCKET_MS, MINUTE_MS, Window, interval_end_of
from csatdist.distribution import CountRow, Grouping
from csatdist.query import Selection
from csatdist.store import BucketRow, CountsRequest, Store

Int64Array = npt.NDArray[np.int64]
#: Whole hours of a window are summed from one dense per-pair array instead of 12 buckets.
HOUR_MS = 60 * MINUTE_MS


class _Slot:
    """The counters of one 5-minute bucket: a growable (pair, 5) array and its totals."""

    __slots__ = ("_index", "counts", "pairs", "size", "totals")

    def __init__(
        self, pairs: npt.NDArray[np.int32] | None = None, counts: Int64Array | None = None
    ) -> None:
        if pairs is None or counts is None:
            pairs = np.empty(8, dtype=np.int32)
            counts = np.zeros((8, 5), dtype=np.int64)
            self.size = 0
        else:
            self.size = len(pairs)
        self.pairs: npt.NDArray[np.int32] = pairs
        self.counts: Int64Array = counts
        self.totals: Int64Array = counts[: self.size].sum(axis=0)
        # Built on the first change: most loaded buckets are never written again.
        self._index: dict[int, int] | None = None if self.size else {}

    def add(self, pair: int, counts: Sequence[int]) -> None:
        if self._index is None:
            self._index = dict(zip(self.pairs[: self.size].tolist(), range(self.size), strict=True))
        position = self._index.get(pair)
        if position is None:
            if self.size == len(self.pairs):
                self.pairs = np.resize(self.pairs, max(8, 2 * self.size))
                grown = np.zeros((max(8, 2 * self.size), 5), dtype=np.int64)
                grown[: self.size] = self.counts[: self.size]
                self.counts = grown
            position = self._index[pair] = self.size
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
        # Per-pair sums of whole hours (by hour end), built when a query first needs one and
        # kept current by apply(); an hour any of whose buckets is dropped is forgotten.
        self._hours: dict[int, Int64Array] = {}
        self._agent_groups: tuple[int, list[int], npt.NDArray[np.int64]] | None = None

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
            pair = self._pair(skill, agent)
            slot.add(pair, counts)
            hour = self._hours.get(_hour_end_of(bucket_end))
            if hour is not None:
                if pair >= len(hour):
                    hour = self._hours[_hour_end_of(bucket_end)] = _grown(hour, len(self._skills))
                hour[pair] += counts

    def load(self, rows: Sequence[BucketRow]) -> None:
        """Bulk-load a snapshot into an empty aggregate (vectorised: a day of a large account
        is about a million rows)."""
        if self._slots:
            raise ValueError("load() fills an empty aggregate; use apply() for changes")
        if not rows:
            return
        table = np.array(rows, dtype=np.int64)
        keys, pair_ids = np.unique(table[:, 1:3], axis=0, return_inverse=True)
        remap = np.array([self._pair(skill, agent) for skill, agent in keys.tolist()], np.int32)
        pairs = remap[pair_ids.reshape(-1)]
        order = np.argsort(table[:, 0], kind="stable")
        ends = table[order, 0]
        pairs = pairs[order]
        counts = np.ascontiguousarray(table[order, 3:8])
        boundaries = np.flatnonzero(np.diff(ends)) + 1
        starts = np.concatenate(([0], boundaries))
        stops = np.concatenate((boundaries, [len(ends)]))
        for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
            self._slots[int(ends[start])] = _Slot(
                pairs[start:stop].copy(), counts[start:stop].copy()
            )

    def drop_before(self, oldest_bucket_end: int) -> None:
        """Forget buckets the store has purged (they can no longer be in any window)."""
        for bucket_end in [b for b in self._slots if b <= oldest_bucket_end]:
            del self._slots[bucket_end]
            self._hours.pop(_hour_end_of(bucket_end), None)

    def counts(self, request: CountsRequest) -> list[CountRow]:
        window = request.window
        grouping = request.grouping
        slots = [
            (end, slot)
            for end in range(window.first_bucket_end, window.end_ms + 1, BUCKET_MS)
            if (slot := self._slots.get(end)) is not None and slot.size
        ]
        if not slots:
            return []

        def interval_of(end: int) -> int | None:
            if not grouping.by_interval or not request.interval_minutes:
                return None
            return interval_end_of(end, window, request.interval_minutes)

        filtered = _is_filtered(request.skills) or _is_filtered(request.agents)
        if not grouping.by_interval or not request.interval_minutes:
            if not grouping.by_skill and not grouping.by_agent and not filtered:
                total = np.sum([slot.totals for _, slot in slots], axis=0)
                return [_row(None, None, None, total)] if total.any() else []
            pair_sums = self._pair_sums(window)
            if filtered:
                pair_sums[~self._admitted(request.skills, request.agents)] = 0
            return self._pair_rows(pair_sums, grouping)
        if not grouping.by_skill and not grouping.by_agent and not filtered:
            sums: dict[int | None, Int64Array] = {}
            for end, slot in slots:
                key = interval_of(end)
                sums[key] = sums[key] + slot.totals if key in sums else slot.totals.copy()
            return [_row(key, None, None, total) for key, total in sums.items() if total.any()]

        pairs = np.concatenate([slot.pairs[: slot.size] for _, slot in slots])
        counts = np.concatenate([slot.counts[: slot.size] for _, slot in slots])
        intervals: Int64Array | None = None
        if grouping.by_interval and request.interval_minutes:
            intervals = np.concatenate(
                [np.full(slot.size, interval_of(end), dtype=np.int64) for end, slot in slots]
            )
        if filtered:
            keep = self._admitted(request.skills, request.agents)[pairs]
            pairs, counts = pairs[keep], counts[keep]
            if intervals is not None:
                intervals = intervals[keep]
        return self._grouped(pairs, counts, intervals, grouping)

    def _hour(self, hour_end: int) -> Int64Array:
        """The per-pair sums of the hour ending at ``hour_end`` (all of it in memory)."""
        dense = self._hours.get(hour_end)
        if dense is None:
            dense = np.zeros((len(self._skills), 5), dtype=np.int64)
            for end in range(hour_end - HOUR_MS + BUCKET_MS, hour_end + 1, BUCKET_MS):
                slot = self._slots.get(end)
                if slot is not None and slot.size:  # a slot's pairs are distinct
                    dense[slot.pairs[: slot.size]] += slot.counts[: slot.size]
            self._hours[hour_end] = dense
        return dense

    def _pair_sums(self, window: Window) -> Int64Array:
        """Counts per (skill, agent) pair over the window: whole hours from their dense sums,
        the buckets at either edge one by one."""
        sums = np.zeros((len(self._skills), 5), dtype=np.int64)
        end = window.first_bucket_end
        while end <= window.end_ms:
            hour_end = _hour_end_of(end)
            if end == hour_end - HOUR_MS + BUCKET_MS and hour_end <= window.end_ms:
                dense = self._hour(hour_end)
                size = min(len(dense), len(sums))  # rows past the pairs known are spare capacity
                sums[:size] += dense[:size]
                end = hour_end + BUCKET_MS
                continue
            slot = self._slots.get(end)
            if slot is not None and slot.size:
                sums[slot.pairs[: slot.size]] += slot.counts[: slot.size]
            end += BUCKET_MS
        return sums

    def _pair_rows(self, sums: Int64Array, grouping: Grouping) -> list[CountRow]:
        """Rows for per-pair sums: one per pair, per agent, or one in all."""
        if grouping.by_skill:
            present = np.flatnonzero(sums.any(axis=1))
            skills, agents = self._skills, self._agents
            return [
                CountRow(None, skills[pair], agents[pair], tuple(counts))
                for pair, counts in zip(present.tolist(), sums[present].tolist(), strict=True)
            ]
        if grouping.by_agent:
            agent_ids, agent_of_pair = self._agent_grouping()
            per_agent = np.zeros((len(agent_ids), 5), dtype=np.int64)
            np.add.at(per_agent, agent_of_pair, sums)
            present = np.flatnonzero(per_agent.any(axis=1))
            rows = zip(present.tolist(), per_agent[present].tolist(), strict=True)
            return [CountRow(None, None, agent_ids[n], tuple(counts)) for n, counts in rows]
        total = sums.sum(axis=0)
        return [_row(None, None, None, total)] if total.any() else []

    def _agent_grouping(self) -> tuple[list[int], npt.NDArray[np.int64]]:
        """Distinct agent ids and each pair's index among them (recomputed when pairs grow)."""
        cached = self._agent_groups
        if cached is None or cached[0] != len(self._agents):
            agent_ids, agent_of_pair = np.unique(
                np.asarray(self._agents, dtype=np.int64), return_inverse=True
            )
            cached = self._agent_groups = (
                len(self._agents),
                agent_ids.tolist(),
                agent_of_pair.reshape(-1).astype(np.int64),
            )
        return cached[1], cached[2]

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
        """Sum counts per group with bincount over dense group numbers (no sorting)."""
        labels: list[tuple[int | None, int | None]]
        if grouping.by_skill:  # (skill, agent) pairs: the pair number is already dense
            groups: npt.NDArray[np.int64] = pairs.astype(np.int64)
            group_count = len(self._skills)
            labels = list(zip(self._skills, self._agents, strict=True))
        elif grouping.by_agent:
            agents = np.asarray(self._agents, dtype=np.int64)
            agent_ids, agent_of_pair = np.unique(agents, return_inverse=True)
            groups = agent_of_pair.reshape(-1)[pairs]
            group_count = len(agent_ids)
            labels = [(None, a) for a in agent_ids.tolist()]
        else:
            groups = np.zeros(len(pairs), dtype=np.int64)
            group_count = 1
            labels = [(None, None)]
        interval_ends: list[int | None] = [None]
        if intervals is not None:
            distinct, interval_number = np.unique(intervals, return_inverse=True)
            groups = interval_number.reshape(-1) * group_count + groups
            interval_ends = list(distinct.tolist())
        size = group_count * len(interval_ends)
        sums = np.empty((size, 5), dtype=np.int64)
        for score in range(5):
            sums[:, score] = np.bincount(groups, weights=counts[:, score], minlength=size)
        present = np.flatnonzero(sums.any(axis=1))
        rows = []
        for number, total in zip(present.tolist(), sums[present].tolist(), strict=True):
            skill, agent = labels[number % group_count]
            rows.append(CountRow(interval_ends[number // group_count], skill, agent, tuple(total)))
        return rows


def _hour_end_of(bucket_end: int) -> int:
    return -(-bucket_end // HOUR_MS) * HOUR_MS


def _grown(dense: Int64Array, pairs: int) -> Int64Array:
    grown = np.zeros((max(pairs, 2 * len(dense)), 5), dtype=np.int64)
    grown[: len(dense)] = dense
    return grown


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
        self._next_sweep = 0.0
        self._lock = threading.Lock()

    def _entry(self, account_id: str) -> tuple[AccountAggregate | None, threading.Lock]:
        now = time.monotonic()
        with self._lock:
            if now >= self._next_sweep:  # not on every query: there may be thousands of accounts
                self._next_sweep = now + min(60.0, self.idle_seconds)
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
            aggregate.load(rows)
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
