"""The history's pure parts against a naive sum: roll-up deltas and the composition of P(t)."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from csatdist.buckets import BUCKET_MS, MINUTE_MS
from csatdist.history import (
    ACCOUNT,
    AGENT,
    DAY_MS,
    QUARTER_MS,
    SKILL,
    compose,
    covering_steps,
    growing_windows,
    history_deltas,
    plan_reads,
)

T0 = 1_795_000_000_000 - 1_795_000_000_000 % DAY_MS  # a UTC midnight
Row = tuple[int, int, int, int, int, int, int, int]


@st.composite
def bucket_rows(draw: st.DrawFn, days: int) -> list[Row]:
    """5-minute counter rows over ``days`` (bucket end, skill, agent, s1..s5)."""
    rows = []
    for _ in range(draw(st.integers(0, 40))):
        end = T0 + BUCKET_MS * draw(st.integers(1, days * 288))
        counts = draw(st.lists(st.integers(0, 3), min_size=5, max_size=5))
        rows.append(
            (end, draw(st.sampled_from([-1, 1, 2])), draw(st.sampled_from([7, 8])), *counts)
        )
    return rows


def tier_rows(rows: list[Row], tier: int, kind: int) -> list[tuple[int, ...]]:
    """What a store holds for (tier, kind) after rolling ``rows`` up."""
    deltas = history_deltas(rows) if rows else None
    if deltas is None:
        return []
    return [r[2:] for r in deltas.rows() if r[0] == tier and r[1] == kind]


def naive(
    rows: Sequence[Row], boundaries: list[int], entity: int
) -> dict[tuple[int, int], list[int]]:
    sums: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0] * 5)
    for row in rows:
        time = row[0] - BUCKET_MS  # any instant of the bucket: all of it is in one quarter
        for i in range(len(boundaries) - 1):
            if boundaries[i] <= time < boundaries[i + 1]:
                key = (i, 0 if entity == ACCOUNT else row[entity])
                sums[key] = [a + b for a, b in zip(sums[key], row[3:], strict=True)]
    return {k: v for k, v in sums.items() if any(v)}


@settings(max_examples=400, deadline=None)
@given(
    data=st.data(),
    days=st.sampled_from([1, 3, 40]),
    kind=st.sampled_from([ACCOUNT, SKILL, AGENT]),
)
def test_segments_sum_exactly_from_history_and_the_tail(
    data: st.DataObject, days: int, kind: int
) -> None:
    rows = data.draw(bucket_rows(days))
    rolled = data.draw(st.integers(0, (days + 1) * 288))
    cuts = data.draw(
        st.lists(st.integers(0, (days + 2) * 96), min_size=2, max_size=12, unique=True)
    )
    rolled_through = T0 + rolled * BUCKET_MS
    boundaries = sorted(T0 - DAY_MS + c * QUARTER_MS for c in cuts)
    history = [r for r in rows if r[0] <= rolled_through]
    tail = [r for r in rows if rolled_through < r[0] <= boundaries[-1]]
    reads = plan_reads(boundaries, rolled_through)
    low, high = reads.coarse_range

    def read(tier: int, starts: set[int] | None) -> list[tuple[int, ...]]:
        found = tier_rows(history, tier, kind)
        if starts is None:
            return [r for r in found if low <= r[0] < high]
        return [r for r in found if r[0] in starts]

    entities, sums = compose(
        boundaries,
        rolled_through,
        reads,
        read(reads.coarse_minutes, None),
        {m: read(m, set(starts)) for m, starts in reads.fine.items()},
        tail,
        (lambda row: 0) if kind == ACCOUNT else (lambda row: row[kind]),
    )
    got = {
        (i, entities[e]): sums[i, e].tolist()
        for i in range(sums.shape[0])
        for e in range(sums.shape[1])
        if sums[i, e].any()
    }
    assert got == naive(rows, boundaries, kind)


def test_a_bucket_goes_to_its_quarter_hour_day_and_pair() -> None:
    end = T0 + 3 * 3600_000 + 20 * MINUTE_MS  # answers 03:15-03:20
    deltas = history_deltas([(end, 12, 1015, 0, 0, 1, 0, 2)])
    keys = {r[:4]: r[4:] for r in deltas.rows()}
    quarter, hour = T0 + 3 * 3600_000 + 15 * MINUTE_MS, T0 + 3 * 3600_000
    assert keys[(15, SKILL, quarter, 12)] == (0, 0, 1, 0, 2)
    assert keys[(60, AGENT, hour, 1015)] == (0, 0, 1, 0, 2)
    assert keys[(1440, ACCOUNT, T0, 0)] == (0, 0, 1, 0, 2)
    assert len(keys) == 9
    assert deltas.pair_rows() == [(quarter, 12, 1015, 0, 0, 1, 0, 2)]


def test_opposite_changes_cancel() -> None:
    end = T0 + BUCKET_MS
    deltas = history_deltas([(end, 1, 7, 1, 0, 0, 0, 0), (end, 1, 7, -1, 0, 0, 0, 0)])
    assert deltas.rows() == []
    assert deltas.pair_rows() == []


def test_long_reports_read_days_and_short_ones_hours() -> None:
    days = [T0 + d * DAY_MS - 2 * 3600_000 for d in range(91)]  # a zone at UTC+2
    reads = plan_reads(days, T0 + 200 * DAY_MS)
    assert reads.coarse_minutes == 1440
    assert sum(len(v) for v in reads.fine.values()) == 91 * 2  # two hours off each midnight
    hours = [T0 + h * 3600_000 for h in range(24 * 7)]
    assert plan_reads(hours, T0 + 200 * DAY_MS).coarse_minutes == 60
    assert np.all(np.diff(days) > 0)


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(0, 4 * 96).map(lambda q: T0 + q * QUARTER_MS),
    length=st.integers(1, 500 * 96).map(lambda q: q * QUARTER_MS),
)
def test_windows_and_their_steps_cover_a_range_once(start: int, length: int) -> None:
    """Counting the ids of a range reads it window by window, each window in the coarsest
    steps that fit: every quarter of the range is in exactly one step, none outside it."""
    end = start + length
    windows = growing_windows(start, end)
    assert windows[0][0] == start
    assert windows[-1][1] == end
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))
    assert all(low < high for low, high in windows)
    # reading through a window reads at most three times what was read before it...
    assert windows[0][1] == start + QUARTER_MS
    assert all(high - start <= 3 * (low - start) for low, high in windows[1:])
    # ...and even 500 days take few reads
    assert len(windows) <= 16
    quarters: list[int] = []
    for low, high in windows:
        steps = covering_steps(low, high)
        assert [m for m, _, _ in steps] == sorted((m for m, _, _ in steps), reverse=True)
        for minutes, first, stop in steps:
            step = minutes * MINUTE_MS
            assert first % step == 0
            assert stop % step == 0
            quarters += [
                q for s in range(first, stop, step) for q in range(s, s + step, QUARTER_MS)
            ]
    assert sorted(quarters) == list(range(start, end, QUARTER_MS))


def test_a_long_range_is_counted_in_days() -> None:
    midnight = T0 + 3 * DAY_MS
    assert covering_steps(midnight - 15 * MINUTE_MS, midnight + 2 * DAY_MS + 75 * MINUTE_MS) == [
        (1440, midnight, midnight + 2 * DAY_MS),
        (60, midnight + 2 * DAY_MS, midnight + 2 * DAY_MS + 3_600_000),
        (15, midnight - 15 * MINUTE_MS, midnight),
        (15, midnight + 2 * DAY_MS + 3_600_000, midnight + 2 * DAY_MS + 75 * MINUTE_MS),
    ]
    windows = growing_windows(midnight, midnight + 400 * DAY_MS)
    assert len(windows) == 16
    assert [high - midnight for _, high in windows[:4]] == [
        15 * MINUTE_MS,
        45 * MINUTE_MS,
        105 * MINUTE_MS,
        3 * 3_600_000,  # on a whole hour, once windows are two hours long
    ]
    assert all(high % DAY_MS == 0 for _, high in windows[-7:])  # then on midnights
