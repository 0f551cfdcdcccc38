"""Long-term history: the 5-minute counters rolled up into coarser steps, and sums over any
range from them (pure; the stores read and write the rows).

**What is kept.** Per account, the counts of scores 1..5 per step of 15 minutes, 1 hour and 1
day of UTC, for the account as a whole, per skill and per agent (:data:`KINDS`), and per (skill,
agent) pair per 15 minutes. Every report boundary of every IANA zone in use falls on a
15-minute step (the report core refuses the rest), so these answer any calendar period exactly.

**How it stays exact.** The 5-minute counters stay the source of truth while they are retained.
A roll-up copies an account's counters of the buckets ending up to a point ``R`` (its
``rolled_through``) into the history, in one transaction with moving ``R``; later changes to a
bucket at or before ``R`` — a late answer, a correction, an erasure — are applied to the history
in the transaction that makes them (:func:`history_deltas`). So at any instant the history holds
exactly the counts of the answers with ``time < R``, and the counters after ``R`` the rest: a
report reads both in one snapshot (:func:`compose`). Ingest of current answers never writes
history; the roll-up does, a bucket at a time, minutes later.

**How a range is summed fast.** A segment ``[a, b)`` is ``P(b) - P(a)`` where ``P(t)`` counts
the answers before ``t``. ``P`` at a boundary comes from a cumulative sum over one coarse step
(days, or hours for short ranges) up to the boundary's nearest coarse edge, corrected by the
finer steps between that edge and the boundary (at most 12 hours and two quarters, added or
taken off). A 90-day report by day in any zone reads about 90 day rows and a few hour rows per
entity, instead of 2,160 hours.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from csatdist.buckets import BUCKET_MS, MINUTE_MS
from csatdist.distribution import Int64Array

QUARTER_MS = 15 * MINUTE_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
#: The steps kept, in minutes (the ``tier`` column).
TIERS = (15, 60, 1440)
ACCOUNT, SKILL, AGENT = 0, 1, 2
#: The kinds of entity a history row counts (the ``kind`` column); the account's id is 0.
KINDS = (ACCOUNT, SKILL, AGENT)

#: (tier minutes, kind, start ms, entity id) -> counts of scores 1..5
HistoryKey = tuple[int, int, int, int]
#: (quarter start ms, skill id, agent id) -> counts
PairKey = tuple[int, int, int]


def _grouped(keys: Int64Array, counts: Int64Array) -> tuple[Int64Array, Int64Array]:
    """Counts summed per distinct row of ``keys`` (n, k)."""
    if not len(keys):
        return keys, counts
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    sums = np.zeros((len(unique), 5), dtype=np.int64)
    np.add.at(sums, inverse.reshape(-1), counts)
    return unique, sums


@dataclass(frozen=True, slots=True)
class HistoryDeltas:
    """What a set of bucket changes adds to the history tables (counts may be negative)."""

    #: (n, 4): tier, kind, start, entity
    keys: Int64Array
    counts: Int64Array
    #: (m, 3): quarter start, skill, agent
    pair_keys: Int64Array
    pair_counts: Int64Array

    def rows(self) -> list[tuple[int, ...]]:
        """(tier, kind, start, entity, s1..s5) rows, zero ones left out."""
        keep = self.counts.any(axis=1)
        return [tuple(r) for r in np.hstack((self.keys, self.counts))[keep].tolist()]

    def pair_rows(self) -> list[tuple[int, ...]]:
        """(quarter start, skill, agent, s1..s5) rows, zero ones left out."""
        keep = self.pair_counts.any(axis=1)
        return [tuple(r) for r in np.hstack((self.pair_keys, self.pair_counts))[keep].tolist()]


def history_deltas(rows: Sequence[Sequence[int]]) -> HistoryDeltas:
    """The history changes of bucket rows (bucket end, skill, agent, s1..s5): each bucket's
    counts go to its quarter, hour and day, for the account, its skill and its agent, and to
    its quarter for its (skill, agent) pair."""
    table = np.array(rows, dtype=np.int64).reshape(-1, 8)
    start = table[:, 0] - BUCKET_MS  # a bucket's answers are in [end - 5 min, end)
    skill, agent, counts = table[:, 1], table[:, 2], table[:, 3:]
    keys = []
    for minutes in TIERS:
        step = minutes * MINUTE_MS
        slot = start - start % step
        for kind, entity in ((ACCOUNT, np.zeros_like(skill)), (SKILL, skill), (AGENT, agent)):
            keys.append(
                np.column_stack(
                    (np.full_like(slot, minutes), np.full_like(slot, kind), slot, entity)
                )
            )
    all_keys, all_counts = _grouped(np.vstack(keys), np.tile(counts, (len(keys), 1)))
    quarter = start - start % QUARTER_MS
    pair_keys, pair_counts = _grouped(np.column_stack((quarter, skill, agent)), counts)
    return HistoryDeltas(all_keys, all_counts, pair_keys, pair_counts)


# Reading: P(t) at each boundary ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reads:
    """The history rows a composition needs, for one kind: the coarse tier over a range, and
    the finer tiers at listed starts."""

    coarse_minutes: int
    coarse_range: tuple[int, int]  # starts in [lo, hi)
    fine: dict[int, list[int]]  # tier minutes -> starts to read


#: rows of one tier: (start, entity, s1..s5)
TierRows = Sequence[Sequence[int]]


def _nearest(t: int, step: int) -> int:
    low = t - t % step
    return low if t - low <= step // 2 else low + step


def _span(a: int, b: int, step: int) -> list[int]:
    """Starts of the steps between two step-aligned instants, either order."""
    low, high = min(a, b), max(a, b)
    return list(range(low, high, step))


def plan_reads(boundaries: Sequence[int], rolled_through: int) -> Reads:
    """Which rows :func:`compose` needs for ``boundaries`` (15-minute aligned), those at or
    before ``rolled_through`` coming from history: by day with hour and quarter corrections, or
    by hour with quarter corrections when that reads fewer rows (short ranges). When a boundary
    is after ``rolled_through``, all of history up to it is needed too."""
    inside = [b for b in boundaries if b <= rolled_through]
    beyond = len(inside) < len(boundaries)
    choices = []
    for step in (DAY_MS, HOUR_MS):
        points = [*inside, _ceil(rolled_through, step)] if beyond else inside
        fine = _fine_needs(inside, step)
        low, high = _coarse_range(min(points), max(points), step)
        rows = (high - low) // step + sum(len(starts) for starts in fine.values())
        choices.append((rows, Reads(step // MINUTE_MS, (low, high), fine)))
    return min(choices, key=lambda choice: choice[0])[1]


def _ceil(t: int, step: int) -> int:
    return t if t % step == 0 else t - t % step + step


def _coarse_range(first: int, last: int, step: int) -> tuple[int, int]:
    """Coarse starts from before the first point's nearest edge to the last point's."""
    low = _nearest(first, step) - step
    return low, _nearest(last, step) + step


def _fine_needs(boundaries: Sequence[int], coarse: int) -> dict[int, list[int]]:
    needs: dict[int, set[int]] = {60: set(), 15: set()}
    for b in boundaries:
        edge = _nearest(b, coarse)
        if coarse == DAY_MS:
            hour = _nearest(b, HOUR_MS)
            needs[60].update(_span(edge, hour, HOUR_MS))
            needs[15].update(_span(hour, b, QUARTER_MS))
        else:
            needs[15].update(_span(edge, b, QUARTER_MS))
    return {minutes: sorted(starts) for minutes, starts in needs.items() if starts}


class _Cumulative:
    """Running totals per entity over the sorted starts of one tier's rows."""

    def __init__(self, starts: Sequence[int], rows: TierRows, index: dict[int, int]) -> None:
        self.starts = np.array(sorted(starts), dtype=np.int64)
        totals = np.zeros((len(self.starts) + 1, len(index), 5), dtype=np.int64)
        if len(rows):
            table = np.array(rows, dtype=np.int64).reshape(-1, 7)
            slot = np.searchsorted(self.starts, table[:, 0])
            entity = np.array([index[e] for e in table[:, 1].tolist()], dtype=np.int64)
            np.add.at(totals, (slot + 1, entity), table[:, 2:])
        self.cum: Int64Array = np.cumsum(totals, axis=0)

    def before(self, t: int) -> Int64Array:
        """Totals of the rows whose start is before ``t``."""
        position = int(np.searchsorted(self.starts, t, side="left"))
        found: Int64Array = self.cum[position]
        return found

    def between(self, a: int, b: int) -> Int64Array:
        """Rows with ``a <= start < b`` when a <= b; minus those of [b, a) otherwise."""
        return self.before(b) - self.before(a)


def compose(
    boundaries: Sequence[int],
    rolled_through: int,
    reads: Reads,
    coarse_rows: TierRows,
    fine_rows: Mapping[int, TierRows],
    tail: Sequence[Sequence[int]],
    entity_of_tail: Callable[[Sequence[int]], int],
) -> tuple[list[int], Int64Array]:
    """Counts per segment ``[b_i, b_(i+1))`` and entity: the entities (sorted) and an array of
    shape (segments, entities, 5).

    ``coarse_rows``/``fine_rows`` are the rows :func:`plan_reads` asked for, as (start, entity,
    s1..s5); ``tail`` the 5-minute counter rows (bucket end, skill, agent, s1..s5) of the
    buckets after ``rolled_through`` up to the last boundary; ``entity_of_tail`` picks a tail
    row's entity (0 for the account, its skill or its agent).
    """
    tail_entities = [entity_of_tail(row) for row in tail]
    entities = sorted(
        {int(r[1]) for r in coarse_rows}
        | {int(r[1]) for rows in fine_rows.values() for r in rows}
        | set(tail_entities)
    )
    index = {entity: i for i, entity in enumerate(entities)}
    coarse_step = reads.coarse_minutes * MINUTE_MS
    low, high = reads.coarse_range
    coarse = _Cumulative(range(low, high, coarse_step), coarse_rows, index)
    fine = {m: _Cumulative(reads.fine.get(m, []), fine_rows.get(m, []), index) for m in (60, 15)}
    after = _Cumulative(
        sorted({int(r[0]) for r in tail}),
        [(int(r[0]), index[e], *r[3:8]) for r, e in zip(tail, tail_entities, strict=True)],
        {i: i for i in range(len(entities))},
    )

    history_total = coarse.before(_ceil(rolled_through, coarse_step))

    def before(b: int) -> Int64Array:
        if b > rolled_through:  # all of history, then the counters' buckets ending by b
            return history_total + after.before(b + 1)
        edge = _nearest(b, coarse_step)
        total = coarse.before(edge)
        if coarse_step == DAY_MS:
            hour = _nearest(b, HOUR_MS)
            total = total + fine[60].between(edge, hour)
            edge = hour
        return total + fine[15].between(edge, b)

    prefix = np.stack([before(b) for b in boundaries])
    return entities, np.diff(prefix, axis=0)


# Which ids have answers in a range ----------------------------------------------------------


def covering_steps(start: int, end: int) -> list[tuple[int, int, int]]:
    """The history's steps that together hold exactly the answers of ``[start, end)`` (both
    15-minute aligned): ``(tier minutes, first start, end of starts)``, whole days of UTC, then
    whole hours beside them, then the quarters left at the edges."""
    steps: list[tuple[int, int, int]] = []

    def add(minutes: int, low: int, high: int) -> None:
        if low < high:
            steps.append((minutes, low, high))

    first_day, last_day = _ceil(start, DAY_MS), end - end % DAY_MS
    spans = [(start, end)]
    if first_day < last_day:
        add(1440, first_day, last_day)
        spans = [(start, first_day), (last_day, end)]
    for low, high in spans:
        first_hour, last_hour = _ceil(low, HOUR_MS), high - high % HOUR_MS
        if first_hour < last_hour:
            add(60, first_hour, last_hour)
            add(15, low, first_hour)
            add(15, last_hour, high)
        else:
            add(15, low, high)
    return sorted(steps, key=lambda step: -step[0])


def growing_windows(start: int, end: int) -> list[tuple[int, int]]:
    """``[start, end)`` (15-minute aligned) cut into consecutive windows from its start, each
    about twice as long as the one before: the k-th ends near ``start + (2**k - 1)`` quarters,
    on a whole hour or day of UTC once windows are hours or days long (so they are read in the
    history's coarse steps). Reading a range window by window until enough is found reads at
    most three times the part before the window that found it, in 16 windows for 400 days."""
    edges = [start]
    k = 0
    while edges[-1] < end:
        k += 1
        target = start + (2**k - 1) * QUARTER_MS
        half = 2 ** (k - 2) * QUARTER_MS  # of this window's length: the end moves less
        step = DAY_MS if half >= DAY_MS else HOUR_MS if half >= HOUR_MS else QUARTER_MS
        edges.append(min(end, target - target % step))
    return list(itertools.pairwise(edges))
