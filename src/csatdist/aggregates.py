"""In-memory counters of one account, answering window queries with vectorised sums.

The store stays the source of truth; an :class:`AccountAggregate` mirrors an account's bucket
counters (loaded once, then kept current from the store's change log) so a query sums NumPy
arrays instead of scanning rows. Results are the same :class:`CountRow` groups the store's own
``counts`` returns, so response assembly does not know which answered.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from csatdist.buckets import BUCKET_MS, MINUTE_MS, Window, interval_end_of
from csatdist.distribution import (
    CountRow,
    CountTable,
    Grouping,
    Int64Array,
    nonzero_rows,
    rows_of,
    run_starts,
)
from csatdist.query import Selection
from csatdist.store import BucketRow, CountsRequest, FetchedChanges, Store

E = TypeVar("E", int, Int64Array)

#: Whole hours of a window are summed from one dense per-pair array instead of 12 buckets.
HOUR_MS = 60 * MINUTE_MS
#: Buckets older than this are dropped from memory: past any window and any purge, even after
#: a clock step back.
KEPT_MS = 2 * 24 * HOUR_MS
#: Changes applied with array operations from this many rows (one by one below).
VECTORISED_FROM_ROWS = 32
#: Per-pair sums of whole windows kept per account, kept current by every change: a dashboard
#: polls a few timeframes, each window one bucket on from the last every 5 minutes.
KEPT_WINDOWS = 4
#: A window is derived from a kept one of the same length this many buckets away at most
#: (its buckets leaving subtracted, those entering added); from further, summed afresh.
SHIFT_BUCKETS = 12
#: Counter rows :meth:`AggregateCache.preload` reads in one go: the snapshots of many small
#: accounts, or of one larger alone. 14 MB as Python tuples, a quarter of what one account of
#: a million answers a day takes alone (380,000 rows, 62 MB).
PRELOAD_ROWS = 100_000
#: Sums per interval and group from this many counter rows on are heavy work
#: (:meth:`AccountAggregate.grouped_rows`): 2-3 ms on this machine (50 skills, 2,000 agents),
#: about a heavy body's worth; a large account's full day, 200,000 rows, takes 14-33 ms.
HEAVY_FROM_ROWS = 20_000


class _Slot:
    """The counters of one 5-minute bucket: a growable (pair, 5) array and its totals."""

    __slots__ = ("_index", "counts", "pairs", "size", "totals")

    def __init__(
        self,
        pairs: npt.NDArray[np.int32] | None = None,
        counts: Int64Array | None = None,
        totals: Int64Array | None = None,
    ) -> None:
        if pairs is None or counts is None:
            pairs = np.empty(8, dtype=np.int32)
            counts = np.zeros((8, 5), dtype=np.int64)
            self.size = 0
        else:
            self.size = len(pairs)
        self.pairs: npt.NDArray[np.int32] = pairs
        self.counts: Int64Array = counts
        self.totals: Int64Array = counts[: self.size].sum(axis=0) if totals is None else totals
        # Built on the first change: most loaded buckets are never written again.
        self._index: dict[int, int] | None = None if self.size else {}

    def add(self, pair: int, counts: Sequence[int]) -> None:
        """Add one row of counts to the bucket."""
        (position,) = self._positions([pair])  # before self.counts: it may grow the array
        self.counts[position] += counts
        self.totals += counts

    def add_many(self, pairs: npt.NDArray[np.int32], counts: Int64Array) -> None:
        """Add ``counts`` (one row per entry of ``pairs``; a pair may repeat) to the bucket."""
        positions = self._positions(pairs.tolist())
        np.add.at(self.counts, positions, counts)
        self.totals += counts.sum(axis=0)

    def _positions(self, pairs: list[int]) -> list[int]:
        """Where each pair's counts are, new pairs added."""
        if self._index is None:
            self._index = dict(zip(self.pairs[: self.size].tolist(), range(self.size), strict=True))
        if self.size + len(pairs) > len(self.pairs):  # room for every pair being new
            capacity = max(8, 2 * self.size, self.size + len(pairs))
            self.pairs = np.resize(self.pairs, capacity)
            grown = np.zeros((capacity, 5), dtype=np.int64)
            grown[: self.size] = self.counts[: self.size]
            self.counts = grown
        index = self._index
        positions = []
        for pair in pairs:
            position = index.get(pair)
            if position is None:
                position = index[pair] = self.size
                self.pairs[position] = pair
                self.size += 1
            positions.append(position)
        return positions


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
        # Per-pair sums of recent windows, by (first bucket end, last bucket end), most recently
        # used last: kept current by apply(), forgotten when a bucket of theirs is dropped.
        self._windows: dict[tuple[int, int], Int64Array] = {}
        self._agent_groups: tuple[int, Int64Array, Int64Array] | None = None
        self._pair_arrays: tuple[Int64Array, Int64Array] | None = None

    def _pair(self, skill: int, agent: int) -> int:
        pair = self._pair_of.get((skill, agent))
        if pair is None:
            pair = self._pair_of[(skill, agent)] = len(self._skills)
            self._skills.append(skill)
            self._agents.append(agent)
        return pair

    def apply(self, rows: Iterable[BucketRow]) -> None:
        """Add changes to the counters (and to the kept hour and window sums that hold their
        buckets): vectorised per bucket, hour and window, not per row — a catch-up after a
        flood of ingests is thousands of rows, summed while holding the GIL; a few rows (a
        quiet account's new answers) one by one, which costs less than setting that up."""
        rows = list(rows)
        if len(rows) < VECTORISED_FROM_ROWS:
            for row in rows:
                self._apply_row(*row)
            return
        table = np.array(rows, dtype=np.int64)
        ends, counts = table[:, 0], table[:, 3:8]
        pairs = self._pairs_of(table[:, 1], table[:, 2])
        order = np.argsort(ends, kind="stable")
        ends, pairs, counts = ends[order], pairs[order], counts[order]
        starts = run_starts(ends)
        for start, stop in zip(starts.tolist(), [*starts[1:].tolist(), len(ends)], strict=True):
            end = int(ends[start])
            slot = self._slots.get(end)
            if slot is None:
                slot = self._slots[end] = _Slot()
            slot.add_many(pairs[start:stop], counts[start:stop])
        hour_ends = _hour_end_of(ends)
        for hour_end in np.unique(hour_ends).tolist():
            if hour_end in self._hours:
                inside = hour_ends == hour_end
                self._hours[hour_end] = self._added(self._hours[hour_end], pairs, counts, inside)
        for span in self._windows:
            inside = (ends >= span[0]) & (ends <= span[1])
            if inside.any():
                self._windows[span] = self._added(self._windows[span], pairs, counts, inside)

    def _apply_row(self, bucket_end: int, skill: int, agent: int, *counts: int) -> None:
        slot = self._slots.get(bucket_end)
        if slot is None:
            slot = self._slots[bucket_end] = _Slot()
        pair = self._pair(skill, agent)
        slot.add(pair, counts)
        hour_end = _hour_end_of(bucket_end)
        if hour_end in self._hours:
            self._hours[hour_end] = self._grown_to_pairs(self._hours[hour_end])
            self._hours[hour_end][pair] += counts
        for span in self._windows:
            if span[0] <= bucket_end <= span[1]:
                self._windows[span] = self._grown_to_pairs(self._windows[span])
                self._windows[span][pair] += counts

    def _pairs_of(self, skills: Int64Array, agents: Int64Array) -> npt.NDArray[np.int32]:
        """The pair number of each (skill, agent), new pairs numbered in (skill, agent) order.
        Through one-dimensional uniques: np.unique over rows (axis=0) sorts a void view, 0.24 s
        of a 380,000-row load."""
        skill_ids, skill_codes = np.unique(skills, return_inverse=True)
        agent_ids, agent_codes = np.unique(agents, return_inverse=True)
        keys, pair_codes = np.unique(
            skill_codes.reshape(-1) * len(agent_ids) + agent_codes.reshape(-1), return_inverse=True
        )
        numbers = [
            self._pair(skill, agent)
            for skill, agent in zip(
                skill_ids[keys // len(agent_ids)].tolist(),
                agent_ids[keys % len(agent_ids)].tolist(),
                strict=True,
            )
        ]
        pairs: npt.NDArray[np.int32] = np.array(numbers, dtype=np.int32)[pair_codes.reshape(-1)]
        return pairs

    def _added(
        self,
        sums: Int64Array,
        pairs: npt.NDArray[np.int32],
        counts: Int64Array,
        inside: npt.NDArray[np.bool_],
    ) -> Int64Array:
        """``sums`` (per pair) with the ``inside`` rows added, grown to every pair known."""
        sums = self._grown_to_pairs(sums)
        np.add.at(sums, pairs[inside], counts[inside])
        return sums

    def _grown_to_pairs(self, sums: Int64Array) -> Int64Array:
        """``sums`` per pair, or a copy with room for every pair known."""
        return sums if len(sums) >= len(self._skills) else _grown(sums, len(self._skills))

    def load(self, rows: Sequence[BucketRow]) -> None:
        """Bulk-load a snapshot into an empty aggregate (vectorised: a day of a large account
        is about a million rows, and a warm-up loads thousands of small ones)."""
        if self._slots:
            raise ValueError("load() fills an empty aggregate; use apply() for changes")
        if not rows:
            return
        table = np.array(rows, dtype=np.int64)
        if (np.diff(table[:, 0]) < 0).any():  # SQLite's rows come in key order, by bucket
            table = table[np.argsort(table[:, 0], kind="stable")]
        ends = table[:, 0]
        pairs = self._pairs_of(table[:, 1], table[:, 2])
        counts = np.ascontiguousarray(table[:, 3:8])
        starts = np.concatenate(([0], np.flatnonzero(np.diff(ends)) + 1))
        stops = np.concatenate((starts[1:], [len(ends)]))
        totals = np.add.reduceat(counts, starts, axis=0)
        for start, stop, end, total in zip(
            starts.tolist(), stops.tolist(), ends[starts].tolist(), totals, strict=True
        ):
            self._slots[end] = _Slot(pairs[start:stop].copy(), counts[start:stop].copy(), total)

    def drop_before(self, oldest_bucket_end: int) -> None:
        """Forget buckets the store has purged (they can no longer be in any window)."""
        for bucket_end in [b for b in self._slots if b <= oldest_bucket_end]:
            del self._slots[bucket_end]
            self._hours.pop(_hour_end_of(bucket_end), None)
        for span in [s for s in self._windows if s[0] <= oldest_bucket_end]:
            del self._windows[span]  # a window is shifted by subtracting its leaving buckets

    def counts(self, request: CountsRequest) -> list[CountRow]:
        return rows_of(self.table(request))

    def grouped_rows(self, request: CountsRequest) -> int:
        """The counter rows :meth:`table` reads to sum ``request`` per interval and group (0
        when it sums otherwise): its cost, known before it starts (heavy work from
        :data:`HEAVY_FROM_ROWS`)."""
        grouping = request.grouping
        if not grouping.by_interval or request.interval_minutes is None:
            return 0
        filtered = _is_filtered(request.skills) or _is_filtered(request.agents)
        if not (grouping.by_skill or grouping.by_agent or filtered):
            return 0
        return sum(slot.size for _, slot in self._window_slots(request.window))

    def _window_slots(self, window: Window) -> list[tuple[int, _Slot]]:
        """The window's buckets that hold counts, with their ends, oldest first."""
        return [
            (end, slot)
            for end in range(window.first_bucket_end, window.end_ms + 1, BUCKET_MS)
            if (slot := self._slots.get(end)) is not None and slot.size
        ]

    def table(self, request: CountsRequest, max_rows: int | None = None) -> CountTable:
        """The sums a query needs, as columns (see :class:`CountTable`). Over ``max_rows``
        rows (sums per interval and group), :class:`TooManyRows` is raised, with memory of at
        most that many rows taken first."""
        window = request.window
        grouping = request.grouping
        by_interval = grouping.by_interval and request.interval_minutes is not None
        filtered = _is_filtered(request.skills) or _is_filtered(request.agents)
        if not by_interval and (grouping.by_skill or grouping.by_agent or filtered):
            pair_sums = self._window_sums(window)
            if filtered:
                pair_sums = pair_sums.copy()
                pair_sums[~self._admitted(request.skills, request.agents)] = 0
            return self._pair_table(pair_sums, grouping)
        slots = self._window_slots(window)
        if not slots:
            return _table(
                [] if by_interval else None,
                [] if grouping.by_skill else None,
                [] if grouping.by_agent else None,
                np.zeros((0, 5), dtype=np.int64),
            )
        if not by_interval:  # the account's total, unfiltered
            total = np.sum([slot.totals for _, slot in slots], axis=0)
            return _table(None, None, None, total.reshape(1, 5)[total.any(keepdims=True)])

        minutes = request.interval_minutes or 0
        ends = [interval_end_of(end, window, minutes) for end, _ in slots]
        if not grouping.by_skill and not grouping.by_agent and not filtered:
            sums: dict[int, Int64Array] = {}
            for interval, (_, slot) in zip(ends, slots, strict=True):
                sums[interval] = sums[interval] + slot.totals if interval in sums else slot.totals
            present = [interval for interval, total in sums.items() if total.any()]
            counts = np.array([sums[i] for i in present], dtype=np.int64).reshape(-1, 5)
            return _table(present, None, None, counts)

        admitted = self._admitted(request.skills, request.agents) if filtered else None
        sizes = [slot.size for _, slot in slots]
        if max_rows is not None and sum(sizes) > max_rows:  # the rows bound the sums' rows
            return self._grouped_per_interval(slots, ends, admitted, grouping, max_rows)
        pairs = np.concatenate([slot.pairs[: slot.size] for _, slot in slots])
        counts = np.concatenate([slot.counts[: slot.size] for _, slot in slots])
        intervals = np.repeat(np.array(ends, dtype=np.int64), sizes)
        if admitted is not None:
            keep = admitted[pairs]
            pairs, counts, intervals = pairs[keep], counts[keep], intervals[keep]
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

    def _window_sums(self, window: Window) -> Int64Array:
        """Counts per (skill, agent) pair over the window (read-only: kept for the next query).
        Kept from an earlier query of the same window and every change since, or derived from
        a kept window of the same length a few buckets away, or summed afresh."""
        span = (window.first_bucket_end, window.end_ms)
        sums = self._windows.pop(span, None)
        if sums is None:
            nearest = min(
                (s for s in self._windows if s[1] - s[0] == span[1] - span[0]),
                key=lambda s: abs(s[1] - span[1]),
                default=None,
            )
            if nearest is not None and abs(nearest[1] - span[1]) <= SHIFT_BUCKETS * BUCKET_MS:
                sums = self._shifted(self._windows.pop(nearest), nearest, span)
            else:
                sums = self._pair_sums(window)
                if len(self._windows) >= KEPT_WINDOWS:
                    del self._windows[next(iter(self._windows))]  # the least recently used
        sums = self._windows[span] = self._grown_to_pairs(sums)  # pairs new outside the window
        return sums[: len(self._skills)]

    def _shifted(self, sums: Int64Array, old: tuple[int, int], new: tuple[int, int]) -> Int64Array:
        """The sums of window ``old`` (changed in place) made those of the same-length ``new``:
        the buckets of one only taken out, those of the other only put in."""
        sums = self._grown_to_pairs(sums)  # the pairs of the buckets put in may be new
        for first, last, sign in ((old[0], old[1], -1), (new[0], new[1], 1)):
            other = new if sign < 0 else old
            for end in range(first, last + 1, BUCKET_MS):
                if other[0] <= end <= other[1]:
                    continue
                slot = self._slots.get(end)
                if slot is not None and slot.size:  # a slot's pairs are distinct
                    sums[slot.pairs[: slot.size]] += sign * slot.counts[: slot.size]
        return sums

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

    def _pair_table(self, sums: Int64Array, grouping: Grouping) -> CountTable:
        """Per-pair sums as one row per pair, per agent, or one in all; empty groups left out."""
        if grouping.by_skill:
            present = np.flatnonzero(nonzero_rows(sums))
            skills, agents = self._pair_ids()
            return CountTable(None, skills[present], agents[present], sums[present])
        if grouping.by_agent:
            agent_ids, agent_of_pair = self._agent_grouping()
            per_agent = np.zeros((len(agent_ids), 5), dtype=np.int64)
            np.add.at(per_agent, agent_of_pair, sums)
            present = np.flatnonzero(nonzero_rows(per_agent))
            return CountTable(None, None, agent_ids[present], per_agent[present])
        total = sums.sum(axis=0)
        return _table(None, None, None, total.reshape(1, 5)[total.any(keepdims=True)])

    def _pair_ids(self) -> tuple[Int64Array, Int64Array]:
        """The skill and agent of every pair, as arrays (rebuilt when pairs are added)."""
        if self._pair_arrays is None or len(self._pair_arrays[0]) != len(self._skills):
            self._pair_arrays = (
                np.asarray(self._skills, dtype=np.int64),
                np.asarray(self._agents, dtype=np.int64),
            )
        return self._pair_arrays

    def _agent_grouping(self) -> tuple[Int64Array, Int64Array]:
        """Distinct agent ids and each pair's index among them (rebuilt when pairs are added)."""
        if self._agent_groups is None or self._agent_groups[0] != len(self._agents):
            agent_ids, agent_of_pair = np.unique(self._pair_ids()[1], return_inverse=True)
            self._agent_groups = (len(self._agents), agent_ids, agent_of_pair.reshape(-1))
        return self._agent_groups[1], self._agent_groups[2]

    def _admitted(
        self, skills: Selection | None, agents: Selection | None
    ) -> npt.NDArray[np.bool_]:
        admitted = np.ones(len(self._skills), dtype=bool)
        for values, selection in zip(self._pair_ids(), (skills, agents), strict=True):
            if selection is not None and selection.ids is not None:
                admitted &= np.isin(values, list(selection.ids))
        return admitted

    def _group_numbers(self, grouping: Grouping) -> tuple[Int64Array, int]:
        """Each pair's group number for ``grouping`` (dense, from 0), and how many groups."""
        skills, _ = self._pair_ids()
        if grouping.by_skill:  # (skill, agent) pairs: the pair number is already dense
            return np.arange(len(skills), dtype=np.int64), len(skills)
        if grouping.by_agent:
            agent_ids, agent_of_pair = self._agent_grouping()
            return agent_of_pair, len(agent_ids)
        return np.zeros(len(skills), dtype=np.int64), 1

    def _grouped(
        self,
        pairs: npt.NDArray[np.int32],
        counts: Int64Array,
        intervals: Int64Array,
        grouping: Grouping,
    ) -> CountTable:
        """Sum counts per (interval, group): over a dense (interval, group) array when that is
        not much larger than the rows, else over the distinct keys (memory of the rows)."""
        group_of, group_count = self._group_numbers(grouping)
        distinct, interval_number = np.unique(intervals, return_inverse=True)
        keys = interval_number.reshape(-1) * group_count + group_of[pairs]
        if group_count * len(distinct) <= 4 * len(keys) + 1024:
            sums = np.zeros((group_count * len(distinct), 5), dtype=np.int64)
            np.add.at(sums, keys, counts)
            present = np.flatnonzero(nonzero_rows(sums))
            keys, sums = present, sums[present]
        else:
            keys, inverse = np.unique(keys, return_inverse=True)
            sums = np.zeros((len(keys), 5), dtype=np.int64)
            np.add.at(sums, inverse.reshape(-1), counts)
            nonzero = nonzero_rows(sums)
            keys, sums = keys[nonzero], sums[nonzero]
        return self._group_table(distinct[keys // group_count], keys % group_count, sums, grouping)

    def _grouped_per_interval(
        self,
        slots: list[tuple[int, _Slot]],
        ends: list[int],
        admitted: npt.NDArray[np.bool_] | None,
        grouping: Grouping,
        max_rows: int,
    ) -> CountTable:
        """What :meth:`_grouped` gives, one interval at a time: memory of the groups and of
        at most ``max_rows`` rows kept, whatever the number of buckets' rows. Past the limit
        the rows are only counted, for :class:`TooManyRows`."""
        group_of, group_count = self._group_numbers(grouping)
        kept: list[tuple[int, Int64Array, Int64Array]] = []
        rows = 0
        position = 0
        while position < len(slots):
            interval = ends[position]
            sums = np.zeros((group_count, 5), dtype=np.int64)
            while position < len(slots) and ends[position] == interval:
                slot = slots[position][1]
                pairs, counts = slot.pairs[: slot.size], slot.counts[: slot.size]
                if admitted is not None:
                    keep = admitted[pairs]
                    pairs, counts = pairs[keep], counts[keep]
                np.add.at(sums, group_of[pairs], counts)
                position += 1
            present = np.flatnonzero(nonzero_rows(sums))
            rows += len(present)
            if rows <= max_rows:
                kept.append((interval, present, sums[present]))
        if rows > max_rows:
            raise TooManyRows(rows)
        if not kept:
            return self._group_table(
                np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 5), np.int64), grouping
            )
        return self._group_table(
            np.repeat([interval for interval, _, _ in kept], [len(p) for _, p, _ in kept]),
            np.concatenate([present for _, present, _ in kept]),
            np.concatenate([sums for _, _, sums in kept]),
            grouping,
        )

    def _group_table(
        self, interval_ends: Int64Array, group: Int64Array, sums: Int64Array, grouping: Grouping
    ) -> CountTable:
        skills, agents = self._pair_ids()
        if grouping.by_skill:
            return CountTable(interval_ends, skills[group], agents[group], sums)
        if grouping.by_agent:
            return CountTable(interval_ends, None, self._agent_grouping()[0][group], sums)
        return CountTable(interval_ends, None, None, sums)


class TooManyRows(Exception):
    """A query's sums would have more rows than the caller allows (``rows`` of them)."""

    def __init__(self, rows: int) -> None:
        super().__init__(f"{rows} rows")
        self.rows = rows


def _snapshot_aggregate(version: int, rows: Sequence[BucketRow]) -> AccountAggregate:
    """An aggregate holding a snapshot of an account's counters, at ``version``."""
    aggregate = AccountAggregate(version)
    aggregate.load(rows)
    return aggregate


def _hour_end_of(bucket_end: E) -> E:
    """The end of the hour holding a bucket (of each, for an array of bucket ends)."""
    return -(-bucket_end // HOUR_MS) * HOUR_MS


def _grown(dense: Int64Array, pairs: int) -> Int64Array:
    grown = np.zeros((max(pairs, 2 * len(dense)), 5), dtype=np.int64)
    grown[: len(dense)] = dense
    return grown


def _is_filtered(selection: Selection | None) -> bool:
    return selection is not None and selection.ids is not None


def _table(
    intervals: list[int] | None,
    skills: list[int] | None,
    agents: list[int] | None,
    counts: Int64Array,
) -> CountTable:
    def column(values: list[int] | None) -> Int64Array | None:
        return None if values is None else np.array(values, dtype=np.int64)

    return CountTable(column(intervals), column(skills), column(agents), counts)


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

    def _current(self, account_id: str, fetched: FetchedChanges | None) -> AccountAggregate:
        aggregate, _ = self._entries[account_id]
        if aggregate.version < 0:  # not loaded: its change log since version 0 would be dropped
            return self._loaded(account_id)
        return self._caught_up(account_id, aggregate, fetched) or self._loaded(account_id)

    def _caught_up(
        self, account_id: str, aggregate: AccountAggregate, fetched: FetchedChanges | None = None
    ) -> AccountAggregate | None:
        """``aggregate`` with the account's changes since its version (``fetched`` when they
        were read since exactly that version, else read now); None when they are gone
        (purged) or the account went back (a restored database)."""
        if fetched is not None and fetched.since == aggregate.version:
            changes = fetched.decode()
        else:
            changes = self.store.account_changes(account_id, aggregate.version)
        if aggregate.version < changes.purged_through or changes.version < aggregate.version:
            return None
        if changes.version > aggregate.version:
            aggregate.apply(changes.rows)
            aggregate.version = changes.version
        return aggregate

    def _loaded(self, account_id: str) -> AccountAggregate:
        """The account's aggregate from a snapshot of its counters, with the changes after the
        snapshot's version (SQLite's counters may be behind its change log: they are folded in
        later). Those are never purged before the counters hold them."""
        aggregate = _snapshot_aggregate(*self.store.account_snapshot(account_id))
        return self._caught_up(account_id, aggregate) or aggregate

    def preload(
        self, account_ids: Sequence[str], now_ms: int, max_rows: int = PRELOAD_ROWS
    ) -> None:
        """Load the aggregates of those of ``account_ids`` not in memory, many accounts' with
        one store read (:meth:`Store.account_snapshots`, at most ``max_rows`` rows but always
        one account): a start-up warm-up of thousands of small accounts. Each account is
        loaded once: one already being loaded (a query's first use) is waited for, not read
        again, and a query of an account this is loading waits for it and then only catches
        up with the changes since."""
        held: dict[str, threading.Lock] = {}
        busy: list[str] = []
        try:
            for account_id in account_ids:
                _, lock = self._entry(account_id)
                if not lock.acquire(blocking=False):  # never wait holding others' locks
                    busy.append(account_id)
                elif self.loaded_version(account_id) is not None:  # the next query catches up
                    lock.release()
                else:
                    held[account_id] = lock
            while held:
                snapshots = self.store.account_snapshots(list(held), max_rows)
                if not snapshots:  # a store returns one account at least; never loop for good
                    break
                for account_id, (version, rows) in snapshots.items():
                    aggregate = _snapshot_aggregate(version, rows)
                    aggregate.drop_before(now_ms - KEPT_MS)
                    with self._lock:
                        self._entries[account_id] = (aggregate, held[account_id])
                    held.pop(account_id).release()
        finally:
            for lock in held.values():
                lock.release()
        busy += held  # only when a store broke its contract: then one at a time
        for account_id in busy:
            with self.current(account_id, now_ms):
                pass

    def loaded_version(self, account_id: str) -> int | None:
        """The version the account's aggregate holds, None when it is not in memory. Only the
        cache's own lock is taken (briefly), not the account's: a version is only ever set
        after the changes it names are applied."""
        with self._lock:  # the idle sweep iterates _last_used under it
            entry = self._entries.get(account_id)
            if entry is None or entry[0].version < 0:
                return None
            self._last_used[account_id] = time.monotonic()
            return entry[0].version

    @contextlib.contextmanager
    def current(
        self, account_id: str, now_ms: int, fetched: FetchedChanges | None = None
    ) -> Iterator[AccountAggregate]:
        """The account's aggregate, caught up with the store, held for the ``with`` block (its
        ``version`` then names exactly the counts it holds). ``fetched``: the account's
        changes, read after the request arrived, to catch up with instead of reading them
        again (used only if they start at the aggregate's version)."""
        _, lock = self._entry(account_id)
        with lock:
            aggregate = self._current(account_id, fetched)
            aggregate.drop_before(now_ms - KEPT_MS)
            with self._lock:
                self._entries[account_id] = (aggregate, lock)
            yield aggregate

    def counts(self, request: CountsRequest) -> list[CountRow]:
        with self.current(request.account_id, request.window.end_ms) as aggregate:
            return aggregate.counts(request)
