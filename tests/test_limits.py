"""The concurrency limit: 429 at once beyond N in flight, and no leaked slots."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from unittest import mock

import httpx
import pytest

from csatdist.errors import StoreUnavailable, TooManyRequests
from csatdist.http import create_app
from csatdist.limits import HeavyTurns, LocalLimiter
from csatdist.observability import IN_FLIGHT
from csatdist.store import AccountChanges, BucketRow, Store
from tests.conftest import add_key, make_settings
from tests.helpers import FakeClock, bearer, live_server

T = TypeVar("T")


class GatedStore:
    """Wraps a store; queries wait for the gate, and can be told to fail.

    Queries of one account take turns in a server's aggregate cache, so only the first is
    inside the store at a time; the others wait behind it, still in flight (see in_flight()).
    """

    #: Its reads wait, so none may be made on the event loop: every query goes to a thread.
    point_reads_inline = False
    #: Nor awaited there (PostgreSQL's point reads would bypass the gate).
    point_reads = None

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.waiting = 0
        self.fail = False
        self._lock = threading.Lock()

    def account_changes(self, account_id: str, since_version: int) -> AccountChanges:
        """Every query reads the change log first (or, for an account not in memory yet, its
        snapshot): hold it there."""
        return self._held(lambda: self.inner.account_changes(account_id, since_version))

    def account_snapshot(self, account_id: str) -> tuple[int, list[BucketRow]]:
        return self._held(lambda: self.inner.account_snapshot(account_id))

    def _held(self, read: Callable[[], T]) -> T:
        with self._lock:
            self.waiting += 1
        try:
            if not self.gate.wait(timeout=30):
                raise RuntimeError("gate never opened")
            if self.fail:
                raise StoreUnavailable("simulated outage")
            return read()
        finally:
            with self._lock:
                self.waiting -= 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def in_flight() -> int:
    """Queries admitted by the limiter and not finished, in this process (all test servers)."""
    return int(IN_FLIGHT._value.get())


def wait_for(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


@pytest.fixture
def limited(store: Store) -> Iterator[tuple[str, GatedStore, dict[str, str], dict[str, str]]]:
    gated = GatedStore(store)
    settings = make_settings(max_concurrent_requests=2, max_concurrent_requests_global=3)
    app = create_app(settings, store=gated, clock=FakeClock())  # type: ignore[arg-type]
    acme = bearer(add_key(store, "acme", "read"))
    beta = bearer(add_key(store, "beta", "read"))
    with live_server(app) as url:
        yield url, gated, acme, beta


def query(url: str, headers: dict[str, str], account: str = "acme") -> httpx.Response:
    return httpx.get(
        f"{url}/operations/api/account/{account}/msgcsatdistribution",
        params={"v": 1, "timeframe": 60},
        headers=headers,
        timeout=30,
    )


def burst(url: str, headers: dict[str, str], gated: GatedStore, size: int) -> list[int]:
    """``size`` parallel slow queries: 2 get in, the rest are refused while they are held."""
    gated.gate.clear()
    with ThreadPoolExecutor(size) as pool:
        futures = [pool.submit(query, url, headers) for _ in range(size)]
        wait_for(lambda: in_flight() == 2)
        wait_for(lambda: sum(f.done() for f in futures) == size - 2)
        refused = [f.result() for f in futures if f.done()]
        for response in refused:
            assert response.status_code == 429
            assert response.headers["Retry-After"] == "1"
            assert "q=2" in response.headers["RateLimit-Policy"]
            assert response.headers["content-type"] == "application/problem+json"
        gated.gate.set()
        return sorted(f.result().status_code for f in futures)


def test_burst_beyond_the_limit_gets_429_and_the_next_burst_behaves_the_same(limited: Any) -> None:
    url, gated, acme, _ = limited
    for _ in range(3):
        assert burst(url, acme, gated, 6) == [200, 200, 429, 429, 429, 429]


def test_429_is_immediate(limited: Any) -> None:
    url, gated, acme, _ = limited
    gated.gate.clear()
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(query, url, acme) for _ in range(2)]
        wait_for(lambda: in_flight() == 2)
        started = time.monotonic()
        response = query(url, acme)
        elapsed = time.monotonic() - started
        gated.gate.set()
        assert [f.result().status_code for f in held] == [200, 200]
    assert response.status_code == 429
    assert elapsed < 5  # it was not queued behind the held queries (they wait up to 30 s)


def test_a_refused_query_is_held_back_for_its_retry_after(limited: Any) -> None:
    """A client that ignores Retry-After and asks again at once gets each 429 only after the
    refusal delay (1 s): one request a second per connection, not hundreds (bench/abuse.py's
    readers made 250-400 a second, most of the event loop's time under attack)."""
    url, gated, acme, _ = limited
    gated.gate.clear()
    with ThreadPoolExecutor(2) as pool, httpx.Client(timeout=30) as client:
        held = [pool.submit(query, url, acme) for _ in range(2)]
        wait_for(lambda: in_flight() == 2)
        started = time.monotonic()
        statuses = [
            client.get(
                f"{url}/operations/api/account/acme/msgcsatdistribution",
                params={"v": 1, "timeframe": 60},
                headers=acme,
            ).status_code
            for _ in range(3)
        ]
        elapsed = time.monotonic() - started
        gated.gate.set()
        assert [f.result().status_code for f in held] == [200, 200]
    assert statuses == [429, 429, 429]
    assert elapsed >= 3 * 0.9  # each refusal waited its Retry-After (1 s)


def test_limit_is_per_account_with_a_global_cap(limited: Any) -> None:
    url, gated, acme, beta = limited
    gated.gate.clear()
    with ThreadPoolExecutor(4) as pool:
        held = [pool.submit(query, url, acme) for _ in range(2)]
        held.append(pool.submit(query, url, beta, "beta"))
        wait_for(lambda: in_flight() == 3)
        # beta has 1 of its 2, but the server holds 3 of 3.
        refused = query(url, beta, "beta")
        assert refused.status_code == 429
        assert "the service has 3 queries in flight" in refused.json()["detail"]
        gated.gate.set()
        assert [f.result().status_code for f in held] == [200, 200, 200]


def test_slots_are_released_after_errors(limited: Any) -> None:
    url, gated, acme, _ = limited
    gated.fail = True
    gated.gate.set()
    for _ in range(5):
        response = query(url, acme)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
    gated.fail = False
    assert burst(url, acme, gated, 4) == [200, 200, 429, 429]


def test_slots_are_released_after_client_disconnects(limited: Any) -> None:
    url, gated, acme, _ = limited
    gated.gate.clear()
    host, port = url.removeprefix("http://").split(":")
    path = "/operations/api/account/acme/msgcsatdistribution?v=1&timeframe=60"
    sockets = []
    for _ in range(2):
        sock = socket.create_connection((host, int(port)))
        request = (
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {acme['Authorization']}\r\n\r\n"
        )
        sock.sendall(request.encode())
        sockets.append(sock)
    wait_for(lambda: in_flight() == 2)
    for sock in sockets:
        sock.close()  # the clients give up while their queries are in flight
    gated.gate.set()
    wait_for(lambda: in_flight() == 0)
    assert burst(url, acme, gated, 4) == [200, 200, 429, 429]


def test_local_limiter_counts_per_account_and_in_total() -> None:
    limiter = LocalLimiter(per_account=1, global_limit=2)
    limiter.take("a")
    assert limiter.in_flight_for("a") == 1
    with pytest.raises(TooManyRequests):
        limiter.take("a")
    limiter.take("b")
    with pytest.raises(TooManyRequests) as refused:
        limiter.take("c")
    assert refused.value.scope == "global"
    limiter.give_back("a")
    limiter.give_back("b")
    assert limiter.in_flight == 0


def test_heavy_work_runs_one_piece_at_a_time_accounts_in_turn_and_forgets_them() -> None:
    """acme's second piece, queued before beta's first, waits behind it: acme had its turn."""
    turns = HeavyTurns()
    events: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def hold(account: str, name: str) -> None:
        with turns.holding(account):
            events.append(f"{name} in")
            if name == "first":
                inside.set()
                release.wait(5)
            events.append(f"{name} out")

    def queued(count: int) -> None:
        for _ in range(500):
            with turns._changed:
                if sum(map(len, turns._waiting.values())) == count:
                    return
            time.sleep(0.01)
        raise AssertionError("never queued")

    first = threading.Thread(target=hold, args=("acme", "first"))
    first.start()
    assert inside.wait(5)
    threads = [threading.Thread(target=hold, args=("acme", "second"))]
    threads[0].start()
    queued(2)
    threads.append(threading.Thread(target=hold, args=("beta", "other")))
    threads[1].start()
    queued(3)
    time.sleep(0.05)
    assert events == ["first in"]  # one piece at a time: both wait
    release.set()
    for thread in (first, *threads):
        thread.join(5)
    assert events == ["first in", "first out", "other in", "other out", "second in", "second out"]
    assert len(turns) == 0


def test_a_piece_interrupted_while_waiting_leaves_the_line() -> None:
    turns = HeavyTurns()
    with (
        turns.holding("acme"),
        mock.patch.object(turns._changed, "wait", side_effect=KeyboardInterrupt),
        pytest.raises(KeyboardInterrupt),
        turns.holding("beta"),
    ):
        pass
    assert len(turns) == 0
    with turns.holding("beta"):  # nothing left in its way
        pass
