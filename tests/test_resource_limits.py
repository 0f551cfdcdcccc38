"""One tenant must never exhaust the server: every request's memory and CPU are bounded before
the work starts, every kind of work has a per-account and a global limit, slow readers are cut
off, and what a hostile client sends is refused precisely (never a 500).

Each test here reproduces one finding of a black-box attack on a shared server and fails
without its fix.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sqlite3
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
import uvicorn
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from csatdist.answers import Answer, decode_body
from csatdist.errors import PayloadTooLarge, TooManyRequests
from csatdist.http import create_app
from csatdist.http.protocol import bounded_protocol
from csatdist.http.routes.compat import TARPIT_SECONDS
from csatdist.limits import Budget, ClientRate, MemoryBudget, Reservation, client_key
from csatdist.settings import Settings
from csatdist.shared import SharedMemoryBudget
from csatdist.store import Store
from csatdist.store.sqlite import SQLiteStore
from csatdist.users import LoginThrottle, make_user
from tests.conftest import Api, add_key, make_settings
from tests.helpers import T_13_29, FakeClock, bearer, free_port, live_server

MIB = 1024 * 1024
QUERY = "/operations/api/account/acme/msgcsatdistribution"
INGEST = "/api/account/acme/csat/answers"


def decode_peak(body: bytes, content_type: str, max_answers: int = 10_000) -> tuple[int, str]:
    """Peak bytes allocated while decoding ``body``, and the error it raised ('' if none)."""
    tracemalloc.start()
    outcome = ""
    try:
        decode_body(body, content_type, max_answers)
    except PayloadTooLarge as exc:
        outcome = exc.detail
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, outcome


# 1. ingest bodies: bounded before they are decoded ------------------------------------------


@pytest.mark.parametrize(
    ("name", "body", "content_type"),
    [
        ("5 M garbage lines", b"x\n" * (5 * MIB), "application/x-ndjson"),
        ("5 M lines of 1", b"1\n" * (5 * MIB), "application/x-ndjson"),
        (
            "one line of nested arrays",
            b"[" * 1000 + b"[]," * (3 * MIB) + b"]" * 1000,
            "application/x-ndjson",
        ),
        ("3 M empty objects", b'{"answers":[' + b"{}," * (3 * MIB) + b"{}]}", "application/json"),
        (
            "2.6 M tiny strings",
            b'{"answers":[' + b'"a",' * (2 * MIB + MIB // 2) + b'"a"]}',
            "application/json",
        ),
    ],
)
def test_hostile_ingest_bodies_are_refused_in_bounded_memory(
    name: str, body: bytes, content_type: str
) -> None:
    peak, refusal = decode_peak(body, content_type)
    assert refusal, f"{name}: accepted"
    # 10 MiB bodies decoded to 170-450 MB before; what is left is one copy of the body.
    assert peak < 2 * len(body) + 8 * MIB, f"{name}: {peak / MIB:.0f} MiB to refuse it"


def test_a_full_body_of_real_answers_is_still_read() -> None:
    answers = [
        {
            "id": f"conv-{i:06d}",
            "time": T_13_29,
            "skillId": 12,
            "agentId": 1015,
            "score": 5,
            "comment": "fast, friendly: [great] {really}",
            "channel": "web",
        }
        for i in range(10_000)
    ]
    decoded = decode_body(orjson.dumps({"answers": answers}), "application/json", 10_000)
    assert len(decoded.items) == 10_000
    ndjson = b"\n".join(orjson.dumps(a) for a in answers) + b"\n\n"
    assert len(decode_body(ndjson, "application/x-ndjson", 10_000).items) == 10_000


def test_strings_full_of_structural_characters_do_not_count_as_values() -> None:
    comment = ",:[{" * 400  # 1,600 structural characters inside one string
    lines = [orjson.dumps({"id": f"c{i}", "comment": comment}) for i in range(100)]
    decoded = decode_body(b"\n".join(lines), "application/x-ndjson", 100)
    assert len(decoded.items) == 100


def test_ingest_over_http_refuses_garbage_lines_with_413(api: Api) -> None:
    response = api.client.post(
        api.ingest_url(),
        content=b"x\n" * 100_000,
        headers={**api.write, "Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 413
    assert "lines" in response.json()["detail"]


@contextlib.contextmanager
def unfinished_body(url: str, method: str, path: str, token: str) -> Iterator[None]:
    """A request whose headers are sent and whose body never completes, while in the block."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as held:
        held.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
        )
        yield


def test_ingest_has_a_per_account_concurrency_limit(store: Store, clock: FakeClock) -> None:
    settings = make_settings(max_concurrent_ingest=1, request_body_timeout_seconds=5)
    token = add_key(store, "acme", "write")
    other = add_key(store, "other", "write")
    with live_server(create_app(settings, store=store, clock=clock)) as url:
        with unfinished_body(url, "POST", INGEST, token):  # the slot stays taken
            deadline = time.monotonic() + 5
            while True:
                refused = httpx.post(
                    url + INGEST, json={"answers": []}, headers=bearer(token), timeout=10
                )
                if refused.status_code == 429 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert refused.status_code == 429, refused.text
            assert refused.headers["Retry-After"] == "1"
            assert "write requests in flight" in refused.json()["detail"]
            elsewhere = httpx.post(
                url + "/api/account/other/csat/answers",
                json={"answers": []},
                headers=bearer(other),
                timeout=10,
            )
            assert elsewhere.status_code == 200  # another account is not affected
        deadline = time.monotonic() + 10
        while (
            httpx.post(
                url + INGEST, json={"answers": []}, headers=bearer(token), timeout=10
            ).status_code
            != 200
        ):  # the abandoned upload gave its slot back
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_every_write_takes_one_of_the_accounts_write_slots(store: Store, clock: FakeClock) -> None:
    """Names (4 MB bodies), alert rules and test deliveries (an outgoing call of up to 10 s) are
    writes like an ingest: a tenant cannot run more of them at once than its write slots."""
    settings = make_settings(max_concurrent_ingest=1, request_body_timeout_seconds=5)
    token = add_key(store, "acme", "read,write")
    # a directory body that never completes holds the account's only write slot
    with (
        live_server(create_app(settings, store=store, clock=clock)) as url,
        unfinished_body(url, "PUT", "/api/account/acme/directory", token),
    ):
        deadline = time.monotonic() + 5
        attempts = [
            ("PUT", "/api/account/acme/directory", {"skills": {"1": "Billing"}}),
            ("PUT", "/api/account/acme/csat/alerts/r", {"timeframe": 60}),
            ("POST", "/api/account/acme/csat/alerts/r/test", None),
            ("DELETE", "/api/account/acme/csat/alerts/r", None),
            ("POST", INGEST, {"answers": []}),
        ]
        for method, path, body in attempts:
            while True:
                refused = httpx.request(
                    method, url + path, json=body, headers=bearer(token), timeout=10
                )
                if refused.status_code == 429 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert refused.status_code == 429, (method, path, refused.text)
            assert "write requests in flight" in refused.json()["detail"]
        read = httpx.get(url + "/api/account/acme/directory", headers=bearer(token))
        assert read.status_code == 200  # reads have slots of their own


# 2. logins: a per-client rate, a cap on password checks, a bounded table ---------------------


@pytest.fixture
def login_api(store: Store, clock: FakeClock) -> Iterator[tuple[TestClient, Store]]:
    store.add_user(make_user("acme", "ana", "correct horse battery", clock()))
    app = create_app(make_settings(login_attempts_per_client_minute=5), store=store, clock=clock)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, store


def login(client: TestClient, username: str, password: str = "wrong password") -> httpx.Response:  # noqa: S107
    return client.post(
        "/api/account/acme/login?v=1.3", json={"username": username, "password": password}
    )


def test_logins_are_limited_per_client_whatever_the_user_names(
    login_api: tuple[TestClient, Store],
) -> None:
    client, _ = login_api
    statuses = [login(client, f"random-{i}").status_code for i in range(5)]
    assert statuses == [401] * 5
    started = time.monotonic()
    refused = login(client, "ana", "correct horse battery")
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert "login attempts from this client" in refused.json()["detail"]
    # held back before the refusal: a client that ignores Retry-After cannot loop fast
    assert time.monotonic() - started >= TARPIT_SECONDS * 0.9


def test_password_checks_are_limited_per_minute_from_all_clients(
    store: Store, clock: FakeClock
) -> None:
    """Many addresses each within their own rate still get at most this many checks."""
    store.add_user(make_user("acme", "ana", "correct horse battery", clock()))
    settings = make_settings(password_checks_per_minute=2, login_attempts_per_client_minute=100)
    with TestClient(create_app(settings, store=store, clock=clock)) as client:
        assert [login(client, f"random-{i}").status_code for i in range(2)] == [401, 401]
        refused = login(client, "ana", "correct horse battery")
        assert refused.status_code == 429
        assert "password checks on this server (limit 2 a minute)" in refused.json()["detail"]


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        (None, "-"),
        ("testclient", "testclient"),
    ],
)
def test_an_ipv6_client_is_limited_by_its_64_network(host: str | None, key: str) -> None:
    assert client_key(host) == key


def test_password_checks_running_at_once_are_capped(login_api: tuple[TestClient, Store]) -> None:
    client, _ = login_api
    limiter = client.app.state.runtime.login_limiter  # type: ignore[attr-defined]
    limiter.take("someone")  # another login's check is running
    try:
        busy = login(client, "ana", "correct horse battery")
        assert busy.status_code == 429
        assert "busy checking other passwords" in busy.json()["detail"]
    finally:
        limiter.give_back("someone")
    assert login(client, "ana", "correct horse battery").status_code == 200


def test_over_long_user_names_cost_no_hash_and_leave_nothing_behind(
    login_api: tuple[TestClient, Store],
) -> None:
    client, _ = login_api
    throttle = client.app.state.runtime.login_throttle  # type: ignore[attr-defined]
    started = time.perf_counter()
    for _ in range(4):
        assert login(client, "u" * 60_000).status_code == 401
    assert time.perf_counter() - started < 2  # no Argon2 run (~0.1 s and 64 MiB each)
    assert len(throttle._failures) == 0


def test_client_rate_refills_and_keeps_a_bounded_table() -> None:
    now = [0.0]
    rate = ClientRate(2, max_clients=3, monotonic=lambda: now[0])
    rate.take("a")
    rate.take("a")
    with pytest.raises(Exception, match="retry in 30 s"):
        rate.take("a")
    now[0] += 30  # one token back after half a minute
    rate.take("a")
    for client in ("b", "c", "d", "e"):
        rate.take(client)
    assert len(rate) == 3


# 3. numbers beyond any int, on every parameter and both stores ------------------------------

HUGE = "9" * 4301


@pytest.mark.parametrize(
    "params",
    [
        {"timeframe": HUGE},
        {"timeframe": "60", "interval": HUGE},
        {"timeframe": "60", "skillIds": HUGE},
        {"timeframe": "60", "agentIds": f"1,-{HUGE}"},
    ],
)
def test_over_long_numbers_are_400_not_500(api: Api, params: dict[str, str]) -> None:
    response = api.client.get(api.query_url(), params={"v": "1", **params}, headers=api.read)
    assert response.status_code == 400, response.text
    assert response.json()["invalid_params"][0]["reason"]
    body = {"v": 1, **params}
    posted = api.client.post(api.query_url(), content=orjson.dumps(body), headers=api.read)
    assert posted.status_code == 400, posted.text
    stream = api.client.get(
        f"/api/account/{api.account}/csat/stream", params=params, headers=api.read
    )
    assert stream.status_code == 400, stream.text


class _BrokenStore(SQLiteStore):
    def account_snapshot(self, account_id: str) -> Any:
        raise RuntimeError("a bug")


def test_an_unexpected_error_is_a_500_with_a_request_id_on_a_usable_connection(
    tmp_path: Path, clock: FakeClock
) -> None:
    store = _BrokenStore(tmp_path / "broken.db")
    token = add_key(store, "acme", "read")
    try:
        with (
            live_server(create_app(make_settings(), store=store, clock=clock)) as url,
            httpx.Client(base_url=url) as client,
        ):
            failed = client.get(QUERY, params={"v": 1, "timeframe": 5}, headers=bearer(token))
            assert failed.status_code == 500
            assert failed.headers["X-Request-ID"]
            assert failed.headers["content-type"] == "application/problem+json"
            assert "it has been logged" in failed.json()["detail"]
            assert client.get("/healthz").status_code == 200  # same keep-alive connection
            assert client.get("/metrics").status_code == 200
    finally:
        store.close()


# 4. responses: a cap on their size, memory held until sent, slow readers cut off -------------


def seed_pairs(store: Store, count: int) -> None:
    from csatdist.service import ingest_answers

    answers = [
        (i, {"id": f"p{i}", "time": T_13_29, "skillId": i % 50, "agentId": i, "score": 5})
        for i in range(count)
    ]
    ingest_answers(store, "acme", answers, T_13_29, 1445)


def test_a_response_over_the_entry_cap_is_a_400_naming_what_to_narrow(
    store: Store, clock: FakeClock
) -> None:
    seed_pairs(store, 1200)
    token = add_key(store, "acme", "read")
    app = create_app(make_settings(max_response_entries=1000), store=store, clock=clock)
    with TestClient(app) as client:
        ok = client.get(QUERY, params={"v": 1, "timeframe": 60}, headers=bearer(token))
        assert ok.status_code == 200
        refused = client.get(
            QUERY,
            params={"v": 1, "timeframe": 60, "skillIds": "all", "agentIds": "all"},
            headers=bearer(token),
        )
        assert refused.status_code == 400
        names = {p["name"] for p in refused.json()["invalid_params"]}
        assert names == {"skillIds", "agentIds"}
        assert "2,401 metrics objects" in refused.json()["detail"]


@pytest.fixture(params=["one process", "two workers"])
def budgets(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Budget, Budget]]:
    """The large replies' memory budget as two workers see it: this process's own, or the
    one the workers of a server share (each attached in its own column, as two processes)."""
    if request.param == "one process":
        budget = MemoryBudget(global_bytes=10 * MIB, per_account_bytes=4 * MIB)
        yield budget, budget
        return
    name, lock = f"csatdist-test-{os.getpid()}-memory", tmp_path / "memory.lock"
    owner = SharedMemoryBudget(name, 10 * MIB, 4 * MIB, lock, smallest=MIB, create=True)
    first = SharedMemoryBudget(name, 10 * MIB, 4 * MIB, lock, smallest=MIB)
    first.slots._pids[first.slots.column] = 1  # as if another process (init, alive) held it
    second = SharedMemoryBudget(name, 10 * MIB, 4 * MIB, lock, smallest=MIB)
    assert second.slots.column != first.slots.column
    try:
        yield first, second
    finally:
        first.slots._close()
        second.slots._close()
        owner.unlink()


def test_memory_budget_per_account_and_in_all(budgets: tuple[Budget, Budget]) -> None:
    """With two workers, what one holds counts against what the other may take: the budget
    is the server's (two workers with one each held twice the memory allowed)."""
    one, two = budgets
    a = Reservation(one, "a", threshold=MIB)
    a.hold(3 * MIB)
    with pytest.raises(TooManyRequests, match="this account's large responses"):
        Reservation(two, "a", threshold=MIB).hold(2 * MIB)
    Reservation(two, "a", threshold=MIB).hold(MIB // 2)  # small replies hold nothing
    b, c = Reservation(two, "b", threshold=MIB), Reservation(one, "c", threshold=MIB)
    b.hold(4 * MIB)
    with pytest.raises(TooManyRequests, match="large responses in flight hold 7 MiB") as refused:
        c.hold(4 * MIB)
    assert refused.value.scope == "global-memory"
    a.hold(MIB)  # resized down: gives back 2 MiB
    c.hold(4 * MIB)
    for reservation in (a, b, c):
        reservation.release()
    assert one.held == two.held == 0
    alone = Reservation(two, "d", threshold=MIB)
    alone.hold(50 * MIB)  # one request larger than the budget still runs when alone
    with pytest.raises(TooManyRequests, match="hold 50 MiB"):
        Reservation(one, "e", threshold=MIB).hold(MIB)
    alone.release()


def _unread_request(url: str, path: str, token: str) -> socket.socket:
    """A connection that asks for ``path`` and reads nothing (a tiny receive buffer)."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((parts.hostname, parts.port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    return sock


@contextlib.contextmanager
def serve_bounded(app: Any, settings: Settings) -> Iterator[str]:
    """uvicorn with csatdist's protocol (what `csatdist serve` runs), on a thread."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=free_port(),
        log_config=None,
        http=bounded_protocol(
            settings.max_header_bytes,
            settings.header_timeout_seconds,
            settings.response_send_timeout_seconds,
        ),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive()
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.slow
def test_a_client_that_never_reads_holds_its_slot_until_it_is_cut_off(
    tmp_path: Path, clock: FakeClock
) -> None:
    store = SQLiteStore(tmp_path / "slow.db")
    seed_pairs(store, 25_000)
    token = add_key(store, "acme", "read")
    settings = make_settings(
        max_concurrent_requests=1,
        response_send_timeout_seconds=1.5,
        response_cache_mb=0,
        max_response_entries=1_000_000,
    )
    # ~18 MB: far more than the kernel's socket buffers (4 MiB at most here) can take.
    big = f"{QUERY}?v=1&timeframe=60&skillIds=all&agentIds=all&interval=5"
    try:
        with serve_bounded(create_app(settings, store=store, clock=clock), settings) as url:
            stalled = unread_request(url, big, token)
            time.sleep(0.5)
            busy = httpx.get(url + big, headers=bearer(token), timeout=10)
            assert busy.status_code == 429  # the unread reply still holds the account's slot
            started = time.monotonic()
            while (
                again := httpx.get(url + big, headers=bearer(token), timeout=30)
            ).status_code != 200:
                assert time.monotonic() - started < 10, again.text  # cut off after 1.5 s
                time.sleep(0.1)
            assert len(again.content) > 16 * MIB
            received = read_all(stalled)
            assert len(received) < len(again.content)  # the stalled reply never arrived whole
    finally:
        store.close()


def unread_request(url: str, path: str, token: str) -> socket.socket:
    """A connection that asks for ``path`` and reads nothing (a tiny receive buffer)."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((parts.hostname, parts.port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything a connection still delivers, until it is closed or reset."""
    received = b""
    with sock:
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except (TimeoutError, ConnectionResetError):
                return received
            if not chunk:
                return received
            received += chunk


# 6. an abandoned upload is the client's doing, not a server error ----------------------------


@pytest.mark.slow
def test_abandoned_uploads_are_recorded_as_499(
    store: Store, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    token = add_key(store, "acme", "write")
    routes = ("/api/account/{account_id}/csat/answers", "/api/account/{account_id}/login")
    with live_server(create_app(make_settings(), store=store, clock=clock)) as url:
        before = request_counts(url, routes)
        parts = urlsplit(url)
        for path, auth in ((INGEST, f"Authorization: Bearer {token}\r\n"), (routes[1], "")):
            with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
                sock.sendall(
                    f"POST {path.replace('{account_id}', 'acme')} HTTP/1.1\r\nHost: x\r\n{auth}"
                    "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
                )
                time.sleep(0.2)
        time.sleep(0.5)
        after = request_counts(url, routes)
    grown = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key)}
    assert grown == {(routes[0], "499"): 1, (routes[1], "499"): 1}
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def request_counts(url: str, routes: tuple[str, ...]) -> dict[tuple[str, str], float]:
    """csatdist_http_requests_total of POSTs to ``routes``, by (route, status)."""
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "csatdist_http_requests_total" and labels.get("route") in routes:
                counts[(labels["route"], labels["status"])] = sample.value
    return counts


# 8. smaller findings ---------------------------------------------------------------------------


def test_head_works_wherever_get_does(api: Api) -> None:
    params = {"v": 1, "timeframe": 60}
    head = api.client.head(api.query_url(), params=params, headers=api.read)
    get = api.client.get(api.query_url(), params=params, headers=api.read)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["ETag"] == get.headers["ETag"]
    assert api.client.head("/healthz").status_code == 200
    stream = f"/api/account/{api.account}/csat/stream"
    head_stream = api.client.head(stream, params={"timeframe": 60}, headers=api.read)
    assert head_stream.status_code == 200
    assert head_stream.headers["content-type"].startswith("text/event-stream")
    assert api.client.head(stream, params={"timeframe": 60}).status_code == 401


def test_times_with_more_than_nine_fractional_digits_are_accepted(api: Api) -> None:
    result = api.ingest([{"id": "frac", "time": "2026-11-27T13:21:00.123456789012Z", "score": 4}])
    assert result["accepted"] == 1


def test_redirects_never_name_the_requests_host(api: Api) -> None:
    for path in ("/", "/dashboard/"):
        response = api.client.get(path, headers={"Host": "evil.example"}, follow_redirects=False)
        assert response.status_code == 307
        assert response.headers["Location"] == "/dashboard"
    assert api.client.get("/healthz/", headers={"Host": "evil.example"}).status_code == 404


def test_a_server_hands_the_interpreter_over_sooner_than_pythons_default(store: Store) -> None:
    """While a server runs, a thread waiting for the GIL gets it after the switch interval
    (1 ms by default, Python's is 5 ms), and the process's own is back after shutdown."""
    before = sys.getswitchinterval()
    assert make_settings().switch_interval_ms == 1.0
    with TestClient(create_app(make_settings(switch_interval_ms=0.5), store=store)):
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    assert sys.getswitchinterval() == before


# 5. the single SQLite writer takes accounts in turn ------------------------------------------


class _Recorded:
    """Writer jobs that record the order they ran in; one made with ``block`` holds the writer
    until ``release`` is set."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.running = threading.Event()
        self.release = threading.Event()

    def work(self, name: str, block: bool = False) -> Any:
        def work(conn: Any) -> None:
            if block:
                self.running.set()
                self.release.wait(10)
            self.order.append(name)

        return work

    def run(self, store: SQLiteStore, jobs: list[tuple[list[Any], str]]) -> list[str]:
        """Submit ``jobs`` (parts, key) one by one, 50 ms apart, once the first (which blocks)
        holds the writer; release it; the order the parts ran in."""
        threads = []
        for number, (parts, key) in enumerate(jobs):
            thread = threading.Thread(target=store._writer.run_parts, args=(parts, key))
            thread.start()
            threads.append(thread)
            if number == 0:
                assert self.running.wait(10)
            else:
                time.sleep(0.05)
        self.release.set()
        for thread in threads:
            thread.join(10)
        return self.order


def test_the_sqlite_writer_serves_accounts_in_turn(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "turns.db")
    jobs = _Recorded()
    flood = [([jobs.work(f"flood-{n}", block=n == 1)], "flood") for n in range(1, 6)]
    try:  # the flooding account queues four more batches behind its first, then the victim
        order = jobs.run(store, [*flood, ([jobs.work("victim")], "victim")])
        # FIFO would run the victim last; in turn, it waits only for the batch running when it
        # arrived: the flooding account's turn ends with it, and its next batch waits behind
        # every account that arrived meanwhile.
        assert order == ["flood-1", "victim", "flood-2", "flood-3", "flood-4", "flood-5"]
    finally:
        store.close()


def _queued(store: SQLiteStore, key: str) -> None:
    """Wait until ``key`` has a job in the writer's line (no timing: the writer's own state)."""
    for _ in range(1000):
        with store._writer._wakeup:
            if key in store._writer._queues:
                return
        time.sleep(0.01)
    raise AssertionError(f"{key} never queued")


def _submit(store: SQLiteStore, parts: list[Any], key: str) -> threading.Thread:
    thread = threading.Thread(target=store._writer.run_parts, args=(parts, key))
    thread.start()
    _queued(store, key)
    return thread


class _Gated:
    """Writer jobs that record the order they ran in; a gated one holds the writer until its
    gate opens (``open``), and says when it started (``started``)."""

    def __init__(self, *gated: str) -> None:
        self.order: list[str] = []
        self.gates = {name: (threading.Event(), threading.Event()) for name in gated}

    def work(self, name: str) -> Any:
        def run(conn: Any) -> None:
            if name in self.gates:
                running, release = self.gates[name]
                running.set()
                release.wait(10)
            self.order.append(name)

        return run

    def started(self, name: str) -> None:
        assert self.gates[name][0].wait(10), self.order

    def open(self, name: str) -> None:
        self.gates[name][1].set()

    def open_all(self) -> None:
        for name in self.gates:
            self.open(name)


def test_an_arriving_sqlite_write_goes_ahead_of_floods_and_the_fold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that arrives waits for the turn running, not also for the turn of every key back
    in line for more: a flood whose job yielded, another whose next batch is queued, and the
    background fold. In plain rotation it came after all three (measured under bench/abuse.py's
    attack: the victim's one-answer write waited for a flood's turn and a fold step's, 75 ms
    median and 250 ms p99 of the writer's queue)."""
    from csatdist.store import sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "YIELD_AFTER_SECONDS", 0.0)  # every part may yield
    store = SQLiteStore(tmp_path / "arrivals.db")
    jobs = _Gated("flood-1", "bulk-1")
    threads = []
    try:
        threads.append(_submit(store, [jobs.work("flood-1"), jobs.work("flood-2")], "flood"))
        jobs.started("flood-1")
        threads.append(_submit(store, [jobs.work("bulk-1")], "bulk"))
        with store._writer._wakeup:  # bulk's next batch, queued behind its first
            store._writer._queues["bulk"].append(sqlite_module._Job([jobs.work("bulk-2")]))
        jobs.open("flood-1")  # flood yields after its part (bulk waits): back in line
        jobs.started("bulk-1")
        store._writer.submit(jobs.work("fold"), sqlite_module.FOLD_KEY)
        _queued(store, sqlite_module.FOLD_KEY)
        threads.append(_submit(store, [jobs.work("victim")], "victim"))
        jobs.open("bulk-1")
        for thread in threads:
            thread.join(10)
        store._writer.run(lambda conn: None, sqlite_module.FOLD_KEY)  # after the fold's job
        # Plain rotation: flood-1, bulk-1, flood-2, fold, victim, bulk-2.
        assert jobs.order == ["flood-1", "bulk-1", "victim", "flood-2", "fold", "bulk-2"]
    finally:
        jobs.open_all()
        store.close()


def test_an_sqlite_write_back_in_line_is_passed_a_bounded_number_of_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Arrivals go ahead of a key back in line for more at most MAX_OVERTAKES times: then it
    has its turn, however many accounts keep arriving."""
    from csatdist.store import sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "MAX_OVERTAKES", 2)
    monkeypatch.setattr(sqlite_module, "YIELD_AFTER_SECONDS", 0.0)  # no group commits
    store = SQLiteStore(tmp_path / "bounded.db")
    jobs = _Gated("flood-1", "first")
    threads = []
    try:
        threads.append(_submit(store, [jobs.work("flood-1")], "flood"))
        jobs.started("flood-1")
        with store._writer._wakeup:  # its next batch, queued while the first runs
            store._writer._queues["flood"].append(sqlite_module._Job([jobs.work("flood-2")]))
        threads.append(_submit(store, [jobs.work("first")], "first"))
        jobs.open("flood-1")  # flood goes back in line behind "first", which starts
        jobs.started("first")
        for name in ("a", "b", "c"):  # three accounts arrive meanwhile
            threads.append(_submit(store, [jobs.work(name)], name))
        jobs.open("first")
        for thread in threads:
            thread.join(10)
        store._writer.run(lambda conn: None, "flood")  # after flood's queued batch
        # Plain rotation: flood-2 before a, b and c; without a bound, after all three.
        assert jobs.order == ["flood-1", "first", "a", "b", "flood-2", "c"]
    finally:
        jobs.open_all()
        store.close()


@pytest.mark.parametrize("yield_after", [0.0, 3600.0])
def test_a_large_sqlite_ingest_commits_its_part_and_lets_a_waiting_account_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, yield_after: float
) -> None:
    """A job of several parts (a 10,000-answer ingest is 20) that has held the writer for
    YIELD_AFTER_SECONDS commits after the part that is running when another account's write
    arrives: the victim waits for one part, not for the whole batch, and finds that part
    durable. Before that time, the job keeps the writer (each commit rewrites its pages), and
    the victim's write joins its transaction: one commit for both, nothing of either visible
    to another connection before it."""
    from csatdist.store import sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "YIELD_AFTER_SECONDS", yield_after)
    store = SQLiteStore(tmp_path / "parts.db")
    order: list[str] = []
    seen_by_victim: list[int] = []
    running = threading.Event()
    release = threading.Event()
    store._writer.run(lambda conn: conn.execute("CREATE TABLE t (part TEXT)"))

    def part(name: str, block: bool = False) -> Any:
        def work(conn: Any) -> str:
            conn.execute("INSERT INTO t VALUES (?)", (name,))
            if block:
                running.set()
                release.wait(10)
            order.append(name)
            return name

        return work

    def victim(conn: Any) -> None:
        order.append("victim")
        other = sqlite3.connect(tmp_path / "parts.db")  # sees committed rows only
        seen_by_victim.append(other.execute("SELECT count(*) FROM t").fetchone()[0])
        other.close()

    results: list[list[str]] = []
    flood = threading.Thread(
        target=lambda: results.append(
            store._writer.run_parts([part("p1", block=True), part("p2"), part("p3")], "flood")
        )
    )
    try:
        flood.start()
        assert running.wait(10)
        late = threading.Thread(target=store._writer.run, args=(victim, "victim"))
        late.start()
        time.sleep(0.05)
        release.set()
        flood.join(10)
        late.join(10)
        if yield_after:
            assert order == ["p1", "p2", "p3", "victim"]
            assert seen_by_victim == [0]  # grouped: committed with the flood's parts
            with contextlib.closing(sqlite3.connect(tmp_path / "parts.db")) as after:
                assert after.execute("SELECT count(*) FROM t").fetchone()[0] == 3
        else:
            assert order == ["p1", "victim", "p2", "p3"]
            assert seen_by_victim == [1]  # p1 was committed before the victim's turn
        assert results == [["p1", "p2", "p3"]]
    finally:
        store.close()


def test_writes_waiting_for_the_sqlite_writer_share_one_commit(tmp_path: Path) -> None:
    """Accounts' writes that queued behind a running one are committed together, one sync of
    the WAL for all (a group commit), each acknowledged only once that commit is done; one that
    fails is rolled back alone and its caller gets the error, while the others are kept."""
    store = SQLiteStore(tmp_path / "group.db")
    commits: list[str] = []
    store._writer.run(lambda conn: conn.execute("CREATE TABLE t (name TEXT)"))
    store._writer.run(
        lambda conn: conn.set_trace_callback(
            lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None
        )
    )
    running, release = threading.Event(), threading.Event()
    outcomes: dict[str, object] = {}

    def write(name: str, block: bool = False, fail: bool = False) -> Any:
        def work(conn: Any) -> str:
            conn.execute("INSERT INTO t VALUES (?)", (name,))
            if block:
                running.set()
                release.wait(10)
            if fail:
                raise ValueError(f"{name} refused")
            return name

        return work

    def submit(name: str, **how: bool) -> threading.Thread:
        def call() -> None:
            try:
                outcomes[name] = store._writer.run(write(name, **how), key=name)
                with contextlib.closing(sqlite3.connect(tmp_path / "group.db")) as other:
                    names = {row[0] for row in other.execute("SELECT name FROM t")}
                outcomes[f"{name} durable"] = name in names  # acknowledged after the commit
            except ValueError as exc:
                outcomes[name] = str(exc)

        thread = threading.Thread(target=call)
        thread.start()
        return thread

    try:
        threads = [submit("first", block=True)]
        assert running.wait(10)
        commits.clear()
        threads += [submit(name, fail=name == "b") for name in ("a", "b", "c")]
        time.sleep(0.2)  # all three queued behind the first
        release.set()
        for thread in threads:
            thread.join(10)
        assert outcomes["first"] == "first"
        assert outcomes["a"] == "a"
        assert outcomes["b"] == "b refused"
        assert outcomes["c"] == "c"
        assert outcomes["a durable"] is True
        assert outcomes["c durable"] is True
        with contextlib.closing(sqlite3.connect(tmp_path / "group.db")) as other:
            kept = sorted(row[0] for row in other.execute("SELECT name FROM t"))
        assert kept == ["a", "c", "first"]
        # The three that waited share the first's commit (they join its transaction after it,
        # however long it ran), where each had one of its own.
        assert len(commits) == 1
    finally:
        store.close()


def test_a_yielding_sqlite_ingest_goes_behind_the_account_that_waited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flooding account with more batches queued does not get the writer back when its
    running batch yields: the waiting account goes first, once, and the flood's batches then
    run without yielding to each other (each commit rewrites pages)."""
    from csatdist.store import sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "YIELD_AFTER_SECONDS", 0.0)
    store = SQLiteStore(tmp_path / "behind.db")
    jobs = _Recorded()
    part = jobs.work
    try:
        order = jobs.run(
            store,
            [
                ([part("a1", block=True), part("a2"), part("a3")], "flood"),
                ([part("b1"), part("b2")], "flood"),
                ([part("victim")], "victim"),
            ],
        )
        assert order == ["a1", "victim", "a2", "a3", "b1", "b2"]
    finally:
        store.close()


def test_an_sqlite_job_alone_runs_its_parts_in_one_transaction(tmp_path: Path) -> None:
    """Nobody waiting: the parts share one transaction, so a failing part undoes the parts
    before it and the caller gets the error."""
    store = SQLiteStore(tmp_path / "alone.db")
    store._writer.run(lambda conn: conn.execute("CREATE TABLE t (part TEXT)"))
    visible: list[int] = []

    def insert(conn: Any) -> None:
        conn.execute("INSERT INTO t VALUES ('p1')")

    def look(conn: Any) -> None:
        other = sqlite3.connect(tmp_path / "alone.db")
        visible.append(other.execute("SELECT count(*) FROM t").fetchone()[0])
        other.close()

    def fail(conn: Any) -> None:
        raise RuntimeError("part 3 failed")

    try:
        with pytest.raises(RuntimeError, match="part 3 failed"):
            store._writer.run_parts([insert, look, fail], "alone")
        assert visible == [0]  # p1 not committed while p2 ran
        rows = store._writer.run(lambda conn: conn.execute("SELECT count(*) FROM t").fetchone())
        assert rows == (0,)  # and rolled back with p3
    finally:
        store.close()


@pytest.mark.parametrize("part_size", [1, 3, 10_000])
def test_an_sqlite_ingest_in_parts_reports_what_one_part_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, part_size: int
) -> None:
    """However a request is cut into parts, its outcome is the same: new, corrected,
    duplicate and erased answers, refusals with their own indexes, and the counts."""
    from csatdist.store import sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "INGEST_PART", part_size)
    store = SQLiteStore(tmp_path / f"parts-{part_size}.db")
    try:
        store.record_answers("acme", [_answer(0, "old", 2), _answer(1, "gone", 3)])
        store.erase_answers("acme", ["gone"], T_13_29)
        batch = [_answer(i, f"new{i}", 1 + i % 5) for i in range(7)]
        batch.insert(2, _answer(7, "old", 5, updated=1))  # a correction
        batch.insert(5, _answer(8, "gone", 4))  # erased: refused
        outcome = store.record_answers("acme", batch)
        assert (outcome.accepted, outcome.updated, outcome.duplicates) == (7, 1, 0)
        assert [(r.index, r.id) for r in outcome.refused] == [(8, "gone")]
        again = store.record_answers("acme", batch)
        assert (again.accepted, again.updated, again.duplicates) == (0, 0, 8)
        version, rows = store.account_snapshot("acme")  # the counters, and what they lack yet
        rows = [*rows, *store.account_changes("acme", version).rows]
        totals = [sum(row[3 + k] for row in rows) for k in range(5)]
        assert totals == [2, 2, 1, 1, 2]  # new0..6 scored 1,2,3,4,5,1,2; old corrected to 5
    finally:
        store.close()


def _answer(index: int, answer_id: str, score: int, updated: int = 0) -> Answer:
    return Answer(index, answer_id, T_13_29, 10, 7, score, updated_ms=T_13_29 + updated)


def test_the_failed_login_table_is_bounded_and_never_forgets_a_lockout() -> None:
    """100 names at most: while they are full of failures in the window, a name with none is
    refused (429) rather than counted in place of one, so a flood of names clears no lockout;
    names whose failures have left the window make room."""
    now = [0.0]
    throttle = LoginThrottle(
        max_failures=3, window_seconds=900, max_entries=100, monotonic=lambda: now[0]
    )
    for _ in range(50):  # one name failing again and again keeps only its last failures
        throttle.failed("acme", "target")
    assert len(throttle._failures[("acme", "target")]) == 3
    waits = []
    for n in range(1000):
        now[0] += 0.1
        try:
            throttle.failed("acme", f"random-{n}")
        except TooManyRequests as refused:
            waits.append(refused.retry_after)
    assert len(throttle) == 100
    # Each waits for the target's last failure (at 0 s) to leave: from 9.9 s on, 891 s to 801.
    assert len(waits) == 901
    assert (waits[0], waits[-1]) == (891, 801)
    assert waits == sorted(waits, reverse=True)
    with pytest.raises(TooManyRequests, match="too many failed logins"):
        throttle.check("acme", "target")
    with pytest.raises(TooManyRequests, match="too many user names failed to log in lately"):
        throttle.check("acme", "someone")
    now[0] = 900.5  # the target's failures have left the window
    throttle.check("acme", "someone")
    throttle.failed("acme", "someone")
    assert len(throttle) == 95  # the target and the 5 names failed by 0.5 s left; one came
    assert ("acme", "target") not in throttle._failures


def test_an_account_writes_at_its_rate_and_a_refused_batch_is_not_read(
    store: Store, clock: FakeClock
) -> None:
    """An account's answers a second are limited (10 here, bursts of one full batch of 20):
    past them its next request gets 429 with the wait before its body is read (garbage would
    otherwise be a 400), another account writes on, and after the wait the account again."""
    settings = make_settings(ingest_answers_per_second=10, max_ingest_answers=20)
    token, other = add_key(store, "acme", "write"), add_key(store, "other", "write")

    def batch(prefix: str, size: int) -> dict[str, Any]:
        return {
            "answers": [
                {"id": f"{prefix}-{n}", "time": T_13_29, "skillId": 1, "agentId": 2, "score": 5}
                for n in range(size)
            ]
        }

    def refusals(client: TestClient) -> float:
        found = re.search(
            r'csatdist_rate_limited_total\{limit="answers"\} (\S+)', client.get("/metrics").text
        )
        return float(found.group(1)) if found else 0.0

    with TestClient(create_app(settings, store=store, clock=clock)) as client:
        before = refusals(client)
        first = client.post(INGEST, json=batch("a", 20), headers=bearer(token))
        assert first.json()["accepted"] == 20
        refused = client.post(
            INGEST, content=b"not json", headers={**bearer(token), "Content-Type": "text/json"}
        )
        assert refused.status_code == 429, refused.text
        assert refused.headers["Retry-After"] == "1"
        assert "more than 10 answers a second" in refused.json()["detail"]
        elsewhere = client.post(
            "/api/account/other/csat/answers", json=batch("b", 20), headers=bearer(other)
        )
        assert elsewhere.json()["accepted"] == 20
        time.sleep(0.15)  # one answer's worth of the rate
        again = client.post(INGEST, json=batch("c", 20), headers=bearer(token))
        assert again.json()["accepted"] == 20  # admitted with one; the rest is owed
        assert client.post(INGEST, json=batch("d", 1), headers=bearer(token)).status_code == 429
        assert refusals(client) == before + 2
