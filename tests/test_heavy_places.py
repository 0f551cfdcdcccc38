"""The server's places for heavy work (``CSATDIST_HEAVY_WORK_AT_ONCE``): the workers of one
``serve --workers N`` run at most that many heavy pieces at once between them, and a worker
killed while it holds one loses it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from csatdist import service
from csatdist.aggregates import AccountAggregate, AggregateCache
from csatdist.answers import Answer
from csatdist.buckets import BUCKET_MS, MINUTE_MS, window_for
from csatdist.http.runtime import Runtime, build_runtime
from csatdist.limits import HeavyTurns
from csatdist.memo import ResponseMemo
from csatdist.query import parse_query
from csatdist.service import _counts_request, render_distribution
from csatdist.settings import heavy_places
from csatdist.shared import STATE_VARIABLE, SharedHeavyPlaces, SharedState
from csatdist.store.sqlite import SQLiteStore
from tests.conftest import make_settings
from tests.helpers import T_13_29, FakeClock


@contextlib.contextmanager
def _workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at_once: int
) -> Iterator[tuple[Runtime, Runtime]]:
    """Two workers' runtimes of one server (each opens the shared files itself, as a worker
    process does)."""
    settings = make_settings(heavy_work_at_once=at_once)
    state = SharedState.create(settings, tmp_path)
    monkeypatch.setenv(STATE_VARIABLE, state.variable())
    stores = [SQLiteStore(tmp_path / "db.sqlite") for _ in range(2)]
    runtimes = [build_runtime(settings, store, FakeClock()) for store in stores]
    try:
        yield runtimes[0], runtimes[1]
    finally:
        for runtime, store in zip(runtimes, stores, strict=True):
            if runtime.shared:
                runtime.shared.close()
            store.close()
        state.unlink()


def _overlap(first: Runtime, second: Runtime) -> bool:
    """Whether two heavy pieces, one per worker (different accounts), ran at the same time."""
    inside = threading.Event()
    release = threading.Event()
    second_in = threading.Event()

    def hold_first() -> None:
        with first.heavy_work.holding("acme"):
            inside.set()
            release.wait(5)

    def hold_second() -> None:
        with second.heavy_work.holding("beta"):
            second_in.set()

    threads = [threading.Thread(target=hold_first), threading.Thread(target=hold_second)]
    threads[0].start()
    assert inside.wait(5)
    threads[1].start()
    overlapped = second_in.wait(0.5)
    release.set()
    for thread in threads:
        thread.join(5)
    assert second_in.is_set()  # it ran once the place was free
    return overlapped


def test_one_place_lets_one_worker_run_heavy_work_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _workers(tmp_path, monkeypatch, at_once=1) as (first, second):
        assert not _overlap(first, second)
        assert not _overlap(second, first)


def test_two_places_let_two_workers_run_heavy_work_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _workers(tmp_path, monkeypatch, at_once=2) as (first, second):
        assert _overlap(first, second)


def test_the_default_is_half_the_cores_at_least_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for cores, places in ((1, 1), (2, 1), (3, 1), (8, 4), (None, 1)):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert heavy_places(make_settings()) == places
    assert heavy_places(make_settings(heavy_work_at_once=3, workers=4)) == 3


def test_a_worker_killed_holding_a_place_loses_it(tmp_path: Path) -> None:
    places = SharedHeavyPlaces(tmp_path, 1, create=True)
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from csatdist.shared import SharedHeavyPlaces
        with SharedHeavyPlaces(Path({str(tmp_path)!r}), 1, create=False).holding():
            print("holding", flush=True)
            time.sleep(60)
        """
    )
    taken = threading.Event()

    def take() -> None:
        with places.holding():
            taken.set()

    try:
        with subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
        ) as holder:
            try:
                assert holder.stdout is not None
                assert holder.stdout.readline().strip() == "holding"
                waiter = threading.Thread(target=take, daemon=True)
                waiter.start()
                assert not taken.wait(0.3)  # held by the other process
                os.kill(holder.pid, signal.SIGKILL)
                assert taken.wait(5)
                waiter.join(5)
            finally:
                holder.kill()
    finally:
        places.close()


def test_with_more_places_a_waiting_piece_takes_whichever_is_freed(tmp_path: Path) -> None:
    """Three workers, two places: the third worker's piece runs as soon as either of the
    others ends (it waited on one place's lock alone: the other could be free, unused)."""
    places = [SharedHeavyPlaces(tmp_path, 2, create=i == 0) for i in range(3)]

    def hold(worker: int, inside: threading.Event, release: threading.Event | None) -> None:
        with places[worker].holding():
            inside.set()
            if release is not None:
                release.wait(10)

    try:
        for freed in (0, 1):
            releases = [threading.Event(), threading.Event()]
            inside = [threading.Event(), threading.Event(), threading.Event()]
            threads = [
                threading.Thread(target=hold, args=(worker, inside[worker], release))
                for worker, release in enumerate([*releases, None])
            ]
            for worker in (0, 1):
                threads[worker].start()
                assert inside[worker].wait(5)
            threads[2].start()
            assert not inside[2].wait(0.2)  # both places held
            releases[freed].set()
            assert inside[2].wait(5), f"the place worker {freed} left stayed unused"
            releases[1 - freed].set()
            for thread in threads:
                thread.join(5)
    finally:
        for place in places:
            place.close()


def test_the_places_are_never_more_than_the_workers() -> None:
    assert heavy_places(make_settings(heavy_work_at_once=8, workers=2)) == 2
    assert heavy_places(make_settings(heavy_work_at_once=1, workers=4)) == 1


def _aggregate(rows_per_bucket: int, now_ms: int) -> AccountAggregate:
    aggregate = AccountAggregate(1)
    rows = [
        (now_ms - bucket * BUCKET_MS, 1 + pair % 50, 1 + pair, 1, 0, 0, 0, 1)
        for bucket in range(288)
        for pair in range(rows_per_bucket)
    ]
    aggregate.load(rows)
    return aggregate


def test_the_cost_of_sums_per_interval_is_known_before_they_are_made() -> None:
    """Building the sums of a large interval query took most of an attack's CPU outside the
    heavy turns (bench/abuse.py, py-spy): their counter rows, counted first, say whether they
    are heavy work (from HEAVY_FROM_ROWS)."""
    now_ms = 1_800_000_000_000 // BUCKET_MS * BUCKET_MS
    aggregate = _aggregate(70, now_ms)
    window = window_for(now_ms, 1440)

    def rows(**values: str) -> int:
        query = parse_query({"v": "1", "timeframe": "1440", **values}, 1000)
        return aggregate.grouped_rows(_counts_request("acme", query, window))

    assert rows(skillIds="all", agentIds="all", interval="60") == 288 * 70
    assert rows(agentIds="all", interval="5") == 288 * 70
    assert rows(skillIds="1,2", interval="1440") == 288 * 70  # filtered: every row is read
    assert rows(interval="60") == 0  # the account's totals per interval: one row a bucket
    assert rows(skillIds="all", agentIds="all") == 0  # no intervals: the window's kept sums
    assert rows() == 0


def test_heavy_sums_wait_for_their_turn_without_holding_up_the_accounts_small_queries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """acme's large interval query waits for the heavy turn another account holds; acme's
    small query meanwhile is answered (it waited too, for the account's lock, while the large
    one waited for its turn holding it)."""
    store = SQLiteStore(tmp_path / "db.sqlite")
    try:
        store.record_answers(
            "acme",
            [Answer(0, f"a{i}", T_13_29 - i * 7 * MINUTE_MS, 1, i, 1 + i % 5) for i in range(40)],
        )
        monkeypatch.setattr(service, "HEAVY_FROM_ROWS", 10)  # 40 rows; 41 entries, a small body
        cache, memo, turns = AggregateCache(store), ResponseMemo(1 << 20), HeavyTurns()
        large = parse_query({"v": "1", "timeframe": "1440", "agentIds": "all", "interval": "60"})
        small = parse_query({"v": "1", "timeframe": "1440"})
        held, release = threading.Event(), threading.Event()

        def other_account() -> None:
            with turns.holding("beta"):
                held.set()
                release.wait(10)

        with ThreadPoolExecutor(3) as pool:
            blocker = pool.submit(other_account)
            assert held.wait(5)
            waiting = pool.submit(
                render_distribution, cache, memo, "acme", large, T_13_29, heavy_work=turns
            )
            for _ in range(500):  # until acme's sums wait for their turn
                if len(turns) == 2:
                    break
                time.sleep(0.01)
            assert len(turns) == 2
            quick = pool.submit(
                render_distribution, cache, memo, "acme", small, T_13_29, heavy_work=turns
            )
            assert orjson.loads(quick.result(5).data)["metricsTotals"]["total_answers"] == 40
            assert not waiting.done()
            release.set()
            blocker.result(5)
            body = waiting.result(5)
        plain = render_distribution(
            AggregateCache(store), ResponseMemo(1 << 20), "acme", large, T_13_29
        )
        assert body.data == plain.data
    finally:
        store.close()
