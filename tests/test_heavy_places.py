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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from csatdist.aggregates import HEAVY_FROM_ROWS, AccountAggregate
from csatdist.buckets import BUCKET_MS, window_for
from csatdist.http.runtime import Runtime, build_runtime
from csatdist.query import parse_query
from csatdist.service import _counts_request
from csatdist.settings import heavy_places
from csatdist.shared import STATE_VARIABLE, SharedHeavyPlaces, SharedState
from csatdist.store.sqlite import SQLiteStore
from tests.conftest import make_settings
from tests.helpers import FakeClock


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
    assert heavy_places(make_settings(heavy_work_at_once=3)) == 3


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


def _aggregate(rows_per_bucket: int, now_ms: int) -> AccountAggregate:
    aggregate = AccountAggregate(1)
    rows = [
        (now_ms - bucket * BUCKET_MS, 1 + pair % 50, 1 + pair, 1, 0, 0, 0, 1)
        for bucket in range(288)
        for pair in range(rows_per_bucket)
    ]
    aggregate.load(rows)
    return aggregate


@pytest.mark.parametrize(
    ("rows_per_bucket", "heavy"),
    [(HEAVY_FROM_ROWS // 288 + 1, True), (HEAVY_FROM_ROWS // 288 - 1, False)],
)
def test_sums_per_interval_of_many_rows_are_heavy_work(rows_per_bucket: int, heavy: bool) -> None:
    """Building the sums of a large interval query took most of an attack's CPU outside the
    heavy turns (bench/abuse.py, py-spy); from HEAVY_FROM_ROWS counter rows it is inside."""
    now_ms = 1_800_000_000_000 // BUCKET_MS * BUCKET_MS
    aggregate = _aggregate(rows_per_bucket, now_ms)
    entered: list[str] = []

    class Turn:
        def __enter__(self) -> None:
            entered.append("in")

        def __exit__(self, *exc: object) -> None:
            entered.append("out")

    query = parse_query(
        {"v": "1", "timeframe": "1440", "skillIds": "all", "agentIds": "all", "interval": "60"},
        1000,
    )
    request = _counts_request("acme", query, window_for(now_ms, 1440))
    table = aggregate.table(request, None, Turn)
    plain = aggregate.table(request, None)
    assert entered == (["in", "out"] if heavy else [])
    assert np.array_equal(table.counts, plain.counts)
    assert int(table.counts.sum()) == 288 * rows_per_bucket * 2  # each row: one 1 and a total
