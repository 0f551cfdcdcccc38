"""Rendered responses are reused only while nothing they depend on has changed."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

from csatdist import service
from csatdist.aggregates import AggregateCache
from csatdist.answers import Answer
from csatdist.buckets import MINUTE_MS, Window
from csatdist.limits import HeavyTurns
from csatdist.memo import Rendered, ResponseMemo
from csatdist.query import parse_query
from csatdist.service import memoised_distribution, query_distribution, render_distribution
from csatdist.store import open_store
from tests.helpers import T_13_29

QUERIES = [
    {"v": "1", "timeframe": "60"},
    {"v": "1", "timeframe": "1440", "skillIds": "all"},
    {"v": "1", "timeframe": "1440", "skillIds": "all", "agentIds": "all"},
    {"v": "1", "timeframe": "1440", "agentIds": "all", "interval": "60"},
]


def answer(answer_id: str, minutes_ago: int, score: int = 5) -> Answer:
    return Answer(0, answer_id, T_13_29 - minutes_ago * MINUTE_MS, 1, 7, score)


def rendered(size: int, tag: str = "x") -> Rendered:
    return Rendered(b"x" * size, tag, Window(0, 300_000))


def key(number: int, version: int = 1, account: str = "acme") -> tuple[str, int, Window, object]:
    window = Window(number * 300_000, (number + 1) * 300_000)
    return (account, version, window, parse_query({"v": "1", "timeframe": "5"}))


def test_an_account_keeps_at_most_its_share_evicting_its_least_recently_used() -> None:
    memo = ResponseMemo(max_bytes=1000)  # a quarter, 250 bytes, per account
    memo.put(key(0, account="other"), rendered(200))  # type: ignore[arg-type]
    for number in range(3):
        memo.put(key(number), rendered(100))  # type: ignore[arg-type]
    assert memo.get(key(0)) is None  # acme's 300 bytes > 250: its oldest went
    assert memo.get(key(0, account="other")) is not None  # not another account's
    assert memo.get(key(1)) is not None  # and key 1 is now acme's most recently used
    memo.put(key(3), rendered(100))  # type: ignore[arg-type]
    assert memo.get(key(2)) is None
    assert memo.get(key(1)) is not None
    assert memo.get(key(3)) is not None
    assert memo.size_bytes == 400
    assert len(memo) == 3
    memo.put(key(4), rendered(251))  # larger than an account's share: not kept, nothing evicted
    assert memo.get(key(4)) is None
    assert len(memo) == 3


def test_the_memo_keeps_at_most_its_bytes_evicting_the_least_recently_used() -> None:
    memo = ResponseMemo(max_bytes=1000)
    for number in range(5):
        memo.put(key(0, account=f"a{number}"), rendered(200))  # type: ignore[arg-type]
    assert memo.get(key(0, account="a0")) is not None  # a1 is now the least recently used
    memo.put(key(0, account="a5"), rendered(200))  # type: ignore[arg-type]
    assert memo.get(key(0, account="a1")) is None
    assert all(memo.get(key(0, account=f"a{n}")) is not None for n in (0, 2, 3, 4, 5))
    assert memo.size_bytes == 1000
    assert len(memo) == 5


def test_a_newer_version_replaces_the_response_of_the_same_query() -> None:
    """Versions only move forward: an older response could never be asked for again."""
    memo = ResponseMemo(max_bytes=1000)
    memo.put(key(0, version=1), rendered(100, "v1"))  # type: ignore[arg-type]
    memo.put(key(0, version=2), rendered(100, "v2"))  # type: ignore[arg-type]
    assert memo.get(key(0, version=1)) is None  # type: ignore[arg-type]
    found = memo.get(key(0, version=2))  # type: ignore[arg-type]
    assert found is not None
    assert found.etag == "v2"
    assert len(memo) == 1
    assert memo.size_bytes == 100


def test_a_memo_of_zero_bytes_keeps_nothing() -> None:
    memo = ResponseMemo(max_bytes=0)
    memo.put(key(0), rendered(1))  # type: ignore[arg-type]
    assert memo.get(key(0)) is None
    assert memo.size_bytes == 0


@pytest.mark.parametrize(
    "params", QUERIES, ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items())
)
def test_rendered_bodies_are_reused_until_another_replica_writes(
    database_url: str, params: dict[str, str]
) -> None:
    reader, writer = open_store(database_url), open_store(database_url)
    try:
        writer.record_answers("acme", [answer(f"a{i}", i * 7, 1 + i % 5) for i in range(50)])
        cache, memo = AggregateCache(reader), ResponseMemo(1 << 20)
        query = parse_query(params)
        first = render_distribution(cache, memo, "acme", query, T_13_29)
        assert render_distribution(cache, memo, "acme", query, T_13_29) is first  # reused
        assert first.data == orjson.dumps(query_distribution(reader, "acme", query, T_13_29).body)

        writer.record_answers("acme", [answer("late", 1, 2)])  # another replica acknowledges
        after = render_distribution(cache, memo, "acme", query, T_13_29)
        assert after.data != first.data
        assert after.etag != first.etag
        assert after.data == orjson.dumps(query_distribution(reader, "acme", query, T_13_29).body)

        writer.record_answers("acme", [answer("late", 1, 2)])  # a duplicate counts nothing
        assert render_distribution(cache, memo, "acme", query, T_13_29).data == after.data

        moved = render_distribution(cache, memo, "acme", query, T_13_29 + 5 * MINUTE_MS)
        assert moved.window != after.window  # the window moved: rendered again
        other = render_distribution(cache, memo, "beta", query, T_13_29)
        assert b"csat_score" in other.data
        assert other.data != after.data
    finally:
        reader.close()
        writer.close()


def test_the_event_loop_shortcut_answers_only_for_an_unchanged_account(database_url: str) -> None:
    """memoised_distribution (no worker thread) must never answer for a changed account."""
    reader, writer = open_store(database_url), open_store(database_url)
    try:
        cache, memo = AggregateCache(reader), ResponseMemo(1 << 20)
        query = parse_query(QUERIES[1])
        assert memoised_distribution(cache, memo, "acme", query, T_13_29) is None  # not loaded
        writer.record_answers("acme", [answer("a", 3)])
        first = render_distribution(cache, memo, "acme", query, T_13_29)
        assert memoised_distribution(cache, memo, "acme", query, T_13_29) is first

        writer.record_answers("acme", [answer("b", 4)])  # acknowledged through another store
        assert memoised_distribution(cache, memo, "acme", query, T_13_29) is None
        second = render_distribution(cache, memo, "acme", query, T_13_29)
        assert second.data != first.data
        assert memoised_distribution(cache, memo, "acme", query, T_13_29) is second
        later = T_13_29 + 5 * MINUTE_MS  # another window: not rendered yet
        assert memoised_distribution(cache, memo, "acme", query, later) is None
    finally:
        reader.close()
        writer.close()


def test_an_account_version_is_one_indexed_read_of_the_acknowledged_state(
    database_url: str,
) -> None:
    store = open_store(database_url)
    try:
        assert store.account_version("acme") == 0
        store.record_answers("acme", [answer("a", 3)])
        after_one = store.account_version("acme")
        assert after_one == store.account_changes("acme", 0).version > 0
        store.record_answers("acme", [answer("b", 3)])
        assert store.account_version("acme") > after_one
        assert store.account_version("beta") == 0
    finally:
        store.close()


def test_parts_are_built_only_for_a_body_the_memo_would_keep(database_url: str) -> None:
    """Parts take memory and time: kept beside a body the memo keeps, and then what building it
    is admitted for counts them; a body too large for an account's share is built whole."""
    store = open_store(database_url)
    try:
        store.record_answers(
            "acme",
            [Answer(0, f"a{i}", T_13_29 - i * MINUTE_MS, 1 + i % 3, i, 4) for i in range(40)],
        )
        query = parse_query({"v": "1", "timeframe": "1440", "agentIds": "all"})  # 41 entries
        for memo_bytes, with_parts, admitted in (
            (4 * 41 * 800, True, 41 * 1_100),  # the share holds 41 entries with their parts
            (4 * 41 * 800 - 4, False, 41 * 900),
            (0, False, 41 * 900),
        ):
            asked: list[int] = []
            memo = ResponseMemo(memo_bytes)
            rendered = render_distribution(
                AggregateCache(store), memo, "acme", query, T_13_29, admit=asked.append
            )
            assert (rendered.parts is not None) is with_parts
            assert asked == [admitted]
            assert rendered.data == orjson.dumps(
                query_distribution(store, "acme", query, T_13_29).body
            )
    finally:
        store.close()


def test_large_bodies_are_built_one_at_a_time_accounts_in_turn(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building a large body holds the GIL: large bodies are built one at a time, whatever
    the account (an identical one waiting reuses the body just built)."""
    store = open_store(database_url)
    try:
        for account, agents in (("acme", 0), ("beta", 1000)):
            store.record_answers(
                account,
                [Answer(0, f"a{i}", T_13_29 - i * MINUTE_MS, 1, agents + i, 4) for i in range(40)],
            )
        monkeypatch.setattr(service, "ONE_AT_A_TIME_FROM_ENTRIES", 20)  # 41 entries here
        building: dict[str, int] = {"acme": 0, "beta": 0}
        most = {"acme": 0, "both": 0}
        guard = threading.Lock()
        original = service.render_body

        def slow_render_body(query: Any, window: Any, table: Any, *args: Any, **kw: Any) -> Any:
            account = "beta" if int(table.agents[0]) >= 1000 else "acme"
            with guard:
                building[account] += 1
                most["acme"] = max(most["acme"], building["acme"])
                most["both"] = max(most["both"], sum(building.values()))
            time.sleep(0.1)
            with guard:
                building[account] -= 1
            return original(query, window, table, *args, **kw)

        monkeypatch.setattr(service, "render_body", slow_render_body)
        cache, memo, locks = AggregateCache(store), ResponseMemo(1 << 20), HeavyTurns()
        queries = [
            parse_query({"v": "1", "timeframe": str(minutes), "agentIds": "all"})
            for minutes in (1440, 1440, 1380, 1320)
        ]

        def render(account: str, query: Any) -> Rendered:
            return render_distribution(cache, memo, account, query, T_13_29, heavy_work=locks)

        with ThreadPoolExecutor(8) as pool:
            acme = [pool.submit(render, "acme", query) for query in queries]
            beta = pool.submit(render, "beta", queries[2])
            results = [future.result(10) for future in acme]
            beta.result(10)
        assert most == {"acme": 1, "both": 1}
        assert results[0] is results[1]  # the same query waited, then reused the body
        assert len(locks) == 0
    finally:
        store.close()
