"""The in-memory aggregates: equal to the store's own sums, and never stale."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csatdist import aggregates
from csatdist.aggregates import AccountAggregate, AggregateCache, TooManyRows
from csatdist.answers import Answer
from csatdist.buckets import MINUTE_MS, window_for
from csatdist.distribution import CountRow, Grouping, rows_of
from csatdist.query import ALL, Selection
from csatdist.store import BucketRow, CountsRequest, FetchedChanges, Store, open_store
from tests.helpers import T_13_29, change_log_reads

T = TypeVar("T")

GROUPINGS = [
    Grouping(False, False, False),
    Grouping(True, True, False),
    Grouping(False, True, False),
    Grouping(False, False, True),
    Grouping(True, True, True),
]


def answers(prefix: str, count: int, offset_min: int = 0) -> list[Answer]:
    return [
        Answer(
            i,
            f"{prefix}{i}",
            T_13_29 - (i * 7 % 1400 + offset_min) * MINUTE_MS,
            i % 4 - 1,
            i % 6,
            1 + i % 5,
        )
        for i in range(count)
    ]


def request(
    grouping: Grouping,
    timeframe: int = 1440,
    skills: Selection | None = None,
    agents: Selection | None = None,
) -> CountsRequest:
    interval = 60 if grouping.by_interval else None
    return CountsRequest("acme", window_for(T_13_29, timeframe), skills, agents, grouping, interval)


def same(rows: list[object]) -> list[object]:
    return sorted(rows, key=repr)


@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize(
    ("skills", "agents"),
    [
        (None, None),
        (ALL, None),
        (Selection(frozenset({0, 2})), ALL),
        (None, Selection(frozenset({1, 5, 99}))),
        (Selection(frozenset({-1})), None),
    ],
)
def test_cache_equals_the_store(
    database_url: str, grouping: Grouping, skills: Selection | None, agents: Selection | None
) -> None:
    store = open_store(database_url)
    try:
        store.record_answers("acme", answers("a", 500))
        cache = AggregateCache(store)
        for timeframe in (5, 60, 1440):
            wanted = request(grouping, timeframe, skills, agents)
            assert same(cache.counts(wanted)) == same(store.counts(wanted))  # type: ignore[arg-type]
    finally:
        store.close()


def test_writes_through_another_store_are_seen_at_once(database_url: str) -> None:
    """Another replica, or `csatdist ingest`, writing to the same database."""
    reader, writer = open_store(database_url), open_store(database_url)
    try:
        cache = AggregateCache(reader)
        total = request(Grouping(False, False, False))
        assert cache.counts(total) == []
        for round_number in range(5):
            writer.record_answers("acme", answers(f"r{round_number}-", 50, offset_min=1))
            assert same(cache.counts(total)) == same(reader.counts(total))  # type: ignore[arg-type]
        assert sum(cache.counts(total)[0].counts) == 250
    finally:
        reader.close()
        writer.close()


def test_an_account_not_in_memory_loads_without_reading_its_change_log(
    database_url: str,
) -> None:
    """The first query of an account (after a restart: every account) loads its snapshot and
    reads the change log only after the snapshot's version (SQLite's counters may be behind
    it), never from version 0 when the counters hold more: that read would be dropped (on
    `large`, 940,000 rows: two thirds of a cold start). Once loaded, queries read only the
    changes since."""
    store = open_store(database_url)
    try:
        for batch in range(3):
            store.record_answers("acme", answers(f"b{batch}-", 40))
        snapshot_version = store.account_snapshot("acme")[0]
        reads = change_log_reads(store)
        cache = AggregateCache(store)
        total = request(Grouping(False, False, False))
        assert sum(cache.counts(total)[0].counts) == 120
        assert reads == [snapshot_version]
        reads.clear()
        store.record_answers("acme", answers("later-", 5))
        assert sum(cache.counts(total)[0].counts) == 125
        assert len(reads) == 1  # only what changed since the snapshot
        assert reads[0] > 0
    finally:
        store.close()


def test_changes_read_where_the_query_arrived_are_applied_without_reading_them_again(
    database_url: str,
) -> None:
    """A query that read the account's changes since the aggregate's version (PostgreSQL: on
    the event loop, with its version) catches up from them; changes read since another
    version (the aggregate moved on meanwhile) are not applied: the change log is read."""
    store = open_store(database_url)
    account_changes = store.account_changes

    def fetched(since: int) -> FetchedChanges:
        read = account_changes("acme", since)
        return FetchedChanges(since, read.version, lambda: read)

    try:
        cache = AggregateCache(store)
        total = request(Grouping(False, False, False))
        store.record_answers("acme", answers("a", 10))
        with cache.current("acme", T_13_29) as aggregate:
            loaded = aggregate.version
        store.record_answers("acme", answers("b", 7))
        early = fetched(loaded)
        reads = change_log_reads(store)
        with cache.current("acme", T_13_29, early) as aggregate:
            assert aggregate.version == early.version > loaded
            assert sum(aggregate.counts(total)[0].counts) == 17
        assert reads == []
        store.record_answers("acme", answers("c", 3))
        stale = fetched(loaded)  # since a version the aggregate no longer holds
        with cache.current("acme", T_13_29, stale) as aggregate:
            assert sum(aggregate.counts(total)[0].counts) == 20
        assert reads == [early.version]
    finally:
        store.close()


def test_a_gap_in_the_change_log_reloads_the_account(database_url: str) -> None:
    store = open_store(database_url)
    try:
        cache = AggregateCache(store)
        pairs = request(Grouping(True, True, False))
        store.record_answers("acme", answers("a", 100))
        cache.counts(pairs)
        store.record_answers("acme", answers("b", 100))
        assert store.purge_changes(2**62) > 0  # the changes this cache has not read are gone
        assert same(cache.counts(pairs)) == same(store.counts(pairs))  # type: ignore[arg-type]
        store.record_answers("acme", answers("c", 100))
        assert same(cache.counts(pairs)) == same(store.counts(pairs))  # type: ignore[arg-type]
    finally:
        store.close()


def test_duplicates_do_not_move_the_version(database_url: str) -> None:
    store = open_store(database_url)
    try:
        store.record_answers("acme", answers("a", 10))
        version = store.account_changes("acme", 0).version
        store.record_answers("acme", answers("a", 10))
        later = store.account_changes("acme", version)
        assert later.rows == []
    finally:
        store.close()


class _WatchedStore:
    """A store that records which accounts' snapshots are read, one by one (a query's first
    use) or several together (a warm-up), and can hold either read until a gate opens."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.single: list[str] = []
        self.together: list[list[str]] = []
        self.hold_single = threading.Event()
        self.hold_together = threading.Event()
        self.gate = threading.Event()
        self.inside = threading.Event()

    def account_snapshot(self, account_id: str) -> tuple[int, list[BucketRow]]:
        self.single.append(account_id)
        return self._held(self.hold_single, lambda: self.inner.account_snapshot(account_id))

    def account_snapshots(
        self, account_ids: Sequence[str], max_rows: int
    ) -> dict[str, tuple[int, list[BucketRow]]]:
        snapshots = self.inner.account_snapshots(account_ids, max_rows)
        self.together.append(sorted(snapshots))
        return self._held(self.hold_together, lambda: snapshots)

    def _held(self, hold: threading.Event, read: Callable[[], T]) -> T:
        if hold.is_set():
            self.inside.set()
            assert self.gate.wait(10)
        return read()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _total(account: str) -> CountsRequest:
    return CountsRequest(account, window_for(T_13_29, 1440), None, None, GROUPINGS[0])


def _start(work: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_preload_loads_every_account_once_as_its_first_query_would(database_url: str) -> None:
    """A warm-up's preload reads many accounts' snapshots together, within its row budget;
    each account is read once, and its queries are then answered from memory, exactly."""
    store = open_store(database_url)
    watched = _WatchedStore(store)
    accounts = [f"acct{n}" for n in range(7)]
    try:
        for n, account in enumerate(accounts):
            store.record_answers(account, answers(f"{account}-", 10 * n + 1))
        expected = {account: store.counts(_total(account)) for account in accounts}  # folds
        cache = AggregateCache(watched)
        cache.preload([*accounts, "never-written"], T_13_29, max_rows=40)
        read = [account for part in watched.together for account in part]
        assert sorted(read) == sorted([*accounts, "never-written"])  # each once
        assert len(watched.together) > 1  # the budget split them
        for account in accounts:
            assert cache.loaded_version(account) == store.account_version(account)
            assert cache.counts(_total(account)) == expected[account]
            assert sum(expected[account][0].counts) == 10 * accounts.index(account) + 1
        assert watched.single == []
        cache.preload(accounts, T_13_29)  # in memory already: nothing read again
        assert len(read) == sum(len(part) for part in watched.together)
    finally:
        store.close()


def test_a_query_during_a_preload_waits_for_it_and_reads_only_the_changes(
    database_url: str,
) -> None:
    store = open_store(database_url)
    watched = _WatchedStore(store)
    try:
        store.record_answers("acme", answers("a", 30))
        cache = AggregateCache(watched)
        watched.hold_together.set()  # the preload has read the snapshot, and not yet loaded it
        preload = _start(lambda: cache.preload(["acme", "beta"], T_13_29))
        assert watched.inside.wait(10)
        store.record_answers("acme", answers("b", 5, offset_min=1))  # after the snapshot
        counted: list[list[CountRow]] = []
        query = _start(lambda: counted.append(cache.counts(_total("acme"))))
        query.join(0.3)
        assert query.is_alive()  # waits for the preload's load of the account
        watched.gate.set()
        preload.join(10)
        query.join(10)
        assert watched.single == []  # never read twice
        assert watched.together == [["acme", "beta"]]
        assert counted == [store.counts(_total("acme"))]
        assert sum(counted[0][0].counts) == 35  # the later answers too, from the change log
    finally:
        watched.gate.set()
        store.close()


def test_a_preload_waits_for_an_account_a_query_is_loading(database_url: str) -> None:
    store = open_store(database_url)
    watched = _WatchedStore(store)
    try:
        store.record_answers("acme", answers("a", 30))
        store.record_answers("beta", answers("b", 3))
        cache = AggregateCache(watched)
        watched.hold_single.set()
        query = _start(lambda: cache.counts(_total("acme")))
        assert watched.inside.wait(10)  # the query is loading acme
        preload = _start(lambda: cache.preload(["acme", "beta"], T_13_29))
        preload.join(0.3)
        assert preload.is_alive()  # beta loaded, acme waited for
        assert watched.together == [["beta"]]
        watched.gate.set()
        preload.join(10)
        query.join(10)
        assert not preload.is_alive()
        assert watched.single == ["acme"]  # read once, by the query
        assert cache.loaded_version("acme") == store.account_version("acme")
    finally:
        watched.gate.set()
        store.close()


def test_idle_accounts_are_dropped_and_reloaded(database_url: str) -> None:
    store = open_store(database_url)
    try:
        cache = AggregateCache(store, idle_seconds=0)
        total = request(Grouping(False, False, False))
        store.record_answers("acme", answers("a", 20))
        store.record_answers("beta", answers("b", 5))
        first = cache.counts(total)
        beta = CountsRequest("beta", total.window, None, None, total.grouping)
        assert sum(cache.counts(beta)[0].counts) == 5  # sweeps acme out
        store.record_answers("acme", answers("c", 10))
        assert sum(cache.counts(total)[0].counts) == sum(first[0].counts) + 10
    finally:
        store.close()


# A day and a bit of 5-minute bucket ends, on a clock hour so whole hours line up at random.
_BASE = 1_790_000_000_000 // (60 * MINUTE_MS) * (60 * MINUTE_MS)
_BUCKET_ENDS = st.integers(0, 300).map(lambda n: _BASE + n * 5 * MINUTE_MS)
_ROWS = st.lists(
    st.tuples(
        _BUCKET_ENDS,
        st.integers(-1, 3),
        st.integers(-1, 6),
        *[st.integers(0, 3)] * 5,
    ),
    max_size=40,
)
#: A snapshot has one row per counter; changes may touch a counter many times.
_SNAPSHOTS = _ROWS.map(lambda rows: list({row[:3]: row for row in rows}.values()))
_SELECTIONS = st.one_of(
    st.none(), st.just(ALL), st.frozensets(st.integers(-1, 6), min_size=1).map(Selection)
)


def _naive(
    rows: list[tuple[int, ...]], request: CountsRequest
) -> dict[tuple[int | None, int | None, int | None], tuple[int, ...]]:
    """Sum every row in the window and admitted by the filters, per the request's groups."""
    window, grouping = request.window, request.grouping
    sums: dict[tuple[int | None, int | None, int | None], list[int]] = {}
    for end, skill, agent, *counts in rows:
        if not window.start_ms < end <= window.end_ms:
            continue
        if request.skills and request.skills.ids is not None and skill not in request.skills.ids:
            continue
        if request.agents and request.agents.ids is not None and agent not in request.agents.ids:
            continue
        interval = None
        if grouping.by_interval and request.interval_minutes:  # intervals end at the window end
            step = request.interval_minutes * MINUTE_MS
            interval = window.end_ms - (window.end_ms - end) // step * step
        key = (
            interval,
            skill if grouping.by_skill else None,
            agent if grouping.by_agent else None,
        )
        total = sums.setdefault(key, [0] * 5)
        for score, count in enumerate(counts):
            total[score] += count
    return {key: tuple(total) for key, total in sums.items() if any(total)}


def _limited(
    aggregate: AccountAggregate, request: CountsRequest, max_rows: int
) -> tuple[TooManyRows | None, dict[tuple[int | None, int | None, int | None], tuple[int, ...]]]:
    try:
        table = aggregate.table(request, max_rows=max_rows)
    except TooManyRows as refused:
        return refused, {}
    return None, {(r.interval_end, r.skill_id, r.agent_id): r.counts for r in rows_of(table)}


@given(
    loaded=_SNAPSHOTS,
    steps=st.lists(
        st.tuples(
            _ROWS,
            st.integers(0, 300),
            st.sampled_from([5, 55, 60, 65, 120, 185, 1440]),
            st.sampled_from(GROUPINGS),
            _SELECTIONS,
            _SELECTIONS,
            st.none() | _BUCKET_ENDS,
        ),
        min_size=1,
        max_size=6,
    ),
    max_rows=st.integers(0, 8),
    vectorised_from=st.sampled_from([1, aggregates.VECTORISED_FROM_ROWS]),
)
@settings(max_examples=300, deadline=None)
def test_aggregate_sums_equal_a_naive_sum(
    loaded: list[tuple[int, ...]],
    steps: list[tuple[Any, ...]],
    max_rows: int,
    vectorised_from: int,
) -> None:
    """Whole hours come from per-hour sums built on first use, updated by later changes and
    forgotten when a bucket of theirs is dropped; results must not depend on any of that, nor
    on whether changes are applied row by row or as arrays."""
    with mock.patch.object(aggregates, "VECTORISED_FROM_ROWS", vectorised_from):
        _sums_equal_a_naive_sum(loaded, steps, max_rows)


def _sums_equal_a_naive_sum(
    loaded: list[tuple[int, ...]], steps: list[tuple[Any, ...]], max_rows: int
) -> None:
    aggregate = AccountAggregate()
    aggregate.load(loaded)  # type: ignore[arg-type]
    seen = list(loaded)
    for changes, now_bucket, timeframe, grouping, skills, agents, dropped_through in steps:
        aggregate.apply(changes)
        seen += changes
        if dropped_through is not None:  # the store purged these buckets
            aggregate.drop_before(dropped_through)
            seen = [row for row in seen if row[0] > dropped_through]
        # A skills grouping always has a skill selection; other groupings never do.
        by_skill = (skills or ALL) if grouping.by_skill else None
        now = _BASE + now_bucket * 5 * MINUTE_MS - 1
        interval = (
            5 if grouping.by_interval and timeframe % 60 else 60 if grouping.by_interval else None
        )
        wanted = CountsRequest(
            "acme", window_for(now, timeframe), by_skill, agents, grouping, interval
        )
        got = {(r.interval_end, r.skill_id, r.agent_id): r.counts for r in aggregate.counts(wanted)}
        expected = _naive(seen, wanted)
        assert got == expected
        # With a row limit: the same sums (by either way of grouping) or, for sums per interval
        # and skill or agent, a refusal that counts them exactly.
        refused, limited = _limited(aggregate, wanted, max_rows)
        if refused is not None:
            assert refused.rows == len(expected) > max_rows
        else:
            assert limited == expected
            if grouping.by_interval and (grouping.by_skill or grouping.by_agent):
                assert len(expected) <= max_rows


def test_a_row_limit_is_enforced_before_the_memory_is_taken() -> None:
    """A day of 5-minute sums per pair, 1,500 pairs: the refusal of sums per 5 minutes and
    pair takes a small part of the memory of building them; per hour they fit the limit
    exactly and equal the unlimited sums (one interval at a time instead of all at once)."""
    import tracemalloc

    import numpy as np

    rng = np.random.default_rng(7)
    pairs = [(skill, agent) for skill in range(15) for agent in range(100)]
    rows = [
        (_BASE + n * 5 * MINUTE_MS, skill, agent, *rng.integers(0, 3, 5).tolist())
        for n in range(1, 289)
        for skill, agent in pairs
    ]
    aggregate = AccountAggregate()
    aggregate.load(rows)  # type: ignore[arg-type]
    now = _BASE + 288 * 5 * MINUTE_MS
    grouping = Grouping(by_skill=True, by_agent=True, by_interval=True)
    per_hour = CountsRequest("acme", window_for(now, 1440), ALL, ALL, grouping, 60)
    unlimited = aggregate.table(per_hour)
    exact = aggregate.table(per_hour, max_rows=len(unlimited.counts))
    assert rows_of(exact) == rows_of(unlimited)
    with pytest.raises(TooManyRows) as refused:
        aggregate.table(per_hour, max_rows=len(unlimited.counts) - 1)
    assert refused.value.rows == len(unlimited.counts)

    per_5 = CountsRequest("acme", window_for(now, 1440), ALL, ALL, grouping, 5)
    tracemalloc.start()
    try:
        aggregate.table(per_5)
        _, built_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with pytest.raises(TooManyRows):
            aggregate.table(per_5, max_rows=100_000)
        _, refused_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused_peak * 10 < built_peak, (refused_peak, built_peak)


@given(
    loaded=_SNAPSHOTS,
    steps=st.lists(
        st.tuples(
            _ROWS,
            st.integers(-3, 14),
            st.sampled_from([5, 60, 65, 1440]),
            st.sampled_from(GROUPINGS),
            _SELECTIONS,
            st.none() | _BUCKET_ENDS,
        ),
        min_size=1,
        max_size=12,
    ),
    vectorised_from=st.sampled_from([1, aggregates.VECTORISED_FROM_ROWS]),
)
@settings(max_examples=300, deadline=None)
def test_sliding_windows_equal_a_naive_sum(
    loaded: list[tuple[int, ...]], steps: list[tuple[Any, ...]], vectorised_from: int
) -> None:
    """A dashboard's clock moves a few buckets at a time (now and then back) over a few
    timeframes: each window's sums are kept, shifted from the last of the same length, updated
    by changes, forgotten when a bucket of theirs is dropped; none of it may show in a sum."""
    with mock.patch.object(aggregates, "VECTORISED_FROM_ROWS", vectorised_from):
        _sliding_windows_equal_a_naive_sum(loaded, steps)


def _sliding_windows_equal_a_naive_sum(
    loaded: list[tuple[int, ...]], steps: list[tuple[Any, ...]]
) -> None:
    aggregate = AccountAggregate()
    aggregate.load(loaded)  # type: ignore[arg-type]
    seen = list(loaded)
    now_bucket = 150
    for changes, moved, timeframe, grouping, agents, dropped_through in steps:
        aggregate.apply(changes)
        seen += changes
        if dropped_through is not None:
            aggregate.drop_before(dropped_through)
            seen = [row for row in seen if row[0] > dropped_through]
        now_bucket += moved
        wanted = CountsRequest(
            "acme",
            window_for(_BASE + now_bucket * 5 * MINUTE_MS - 1, timeframe),
            ALL if grouping.by_skill else None,
            agents,
            replace(grouping, by_interval=False),
            None,
        )
        got = {(r.interval_end, r.skill_id, r.agent_id): r.counts for r in aggregate.counts(wanted)}
        assert got == _naive(seen, wanted)


@pytest.mark.parametrize("vectorised_from", [1, aggregates.VECTORISED_FROM_ROWS])
def test_changes_repeating_a_counter_count_every_row(vectorised_from: int) -> None:
    """A catch-up may hold one counter many times (PostgreSQL's change log has a row per
    version): each row counts, in the buckets and in the kept hour and window sums."""
    end = _BASE + 6 * 5 * MINUTE_MS  # inside a whole hour of a day's window
    aggregate = AccountAggregate()
    aggregate.load([(end, 1, 2, 1, 0, 0, 0, 0)])
    day = CountsRequest(
        "acme", window_for(_BASE + 288 * 5 * MINUTE_MS - 1, 1440), ALL, None, GROUPINGS[1], None
    )
    assert aggregate.counts(day)[0].counts == (1, 0, 0, 0, 0)  # hour and window sums kept
    with mock.patch.object(aggregates, "VECTORISED_FROM_ROWS", vectorised_from):
        aggregate.apply([(end, 1, 2, 1, 0, 0, 0, 0)] * 40 + [(end, 1, 3, 0, 0, 0, 0, 1)])
    got = {(r.skill_id, r.agent_id): r.counts for r in aggregate.counts(day)}
    assert got == {(1, 2): (41, 0, 0, 0, 0), (1, 3): (0, 0, 0, 0, 1)}
    window = CountsRequest("acme", window_for(end, 5), ALL, None, GROUPINGS[1], None)
    assert {(r.skill_id, r.agent_id): r.counts for r in aggregate.counts(window)} == got
