"""The in-memory aggregates: equal to the store's own sums, and never stale."""

from __future__ import annotations

import pytest

from csatdist.aggregates import AggregateCache
from csatdist.answers import Answer
from csatdist.buckets import MINUTE_MS, window_for
from csatdist.distribution import Grouping
from csatdist.query import ALL, Selection
from csatdist.store import CountsRequest, open_store
from tests.helpers import T_13_29

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
