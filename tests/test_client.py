"""The Python client against a real HTTP server: typed results, credentials, batching, retries."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from csatdist.client import (
    AsyncClient,
    BadRequest,
    Client,
    OAuth1Auth,
    RateLimited,
    RetryPolicy,
    Unauthorized,
)
from csatdist.http import create_app
from csatdist.keys import issue_oauth_key
from csatdist.sealing import load_secret_box
from csatdist.store import Store
from csatdist.users import make_user
from tests.conftest import add_key, make_settings
from tests.helpers import T_13_29, FakeClock, free_port, live_server
from tests.test_limits import GatedStore

ANSWERS = [
    {"id": "c1", "time": T_13_29 - 60_000, "skillId": 4, "agentId": 17, "score": 5},
    {"id": "c2", "time": T_13_29 - 120_000, "skillId": 4, "agentId": 18, "score": 2},
    {"id": "c3", "time": T_13_29 - 20 * 60_000, "skillId": None, "agentId": 17, "score": 4},
    {"id": "c4", "time": T_13_29 - 50 * 60_000, "skillId": 9, "agentId": None, "score": 1},
]


@contextlib.contextmanager
def server(store: Store, tmp_path: Path, **settings: object) -> Iterator[str]:
    config = make_settings(secret_key_file=str(tmp_path / "server.key"), **settings)
    with live_server(create_app(config, store=store, clock=FakeClock())) as url:
        yield url


@pytest.fixture
def served(store: Store, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(url, a read+write key) of a server holding ANSWERS for account acme."""
    token = add_key(store, "acme", "read,write")
    with server(store, tmp_path) as url:
        with Client(url, "acme", token=token) as client:
            assert client.ingest(ANSWERS).accepted == 4
        yield url, token


def test_results_are_typed_and_equal_to_the_raw_body(served: tuple[str, str]) -> None:
    url, token = served
    with Client(url, "acme", token=token) as client:
        dist = client.distribution(60, skills="all", agents="all", interval=15)
    raw = httpx.get(
        f"{url}/operations/api/account/acme/msgcsatdistribution",
        params={"v": 1, "timeframe": 60, "skillIds": "all", "agentIds": "all", "interval": 15},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert dist.raw == raw.json()
    assert dist.totals.scores == (1, 1, 0, 1, 1)
    assert dist.totals.total == 4
    assert dist.totals.positive == 2
    assert dist.totals.percent == 50.0
    assert dist.skills is not None
    assert dist.agents is not None
    assert sorted(dist.skills) == [-1, 4, 9]
    assert dist.skills[4].agents[17].scores == (0, 0, 0, 0, 1)
    assert dist.skills[4].totals.total == 2
    assert dist.agents[-1].total == 1
    # 12:25-13:30 in 15-minute intervals ending 12:30 (clipped), 12:45, 13:00, 13:15, 13:30
    assert [i.distribution.totals.total for i in dist.intervals] == [0, 1, 0, 1, 2]
    assert dist.window is not None
    assert dist.window.start_ms == int(raw.headers["x-csat-window-start"])
    assert dist.window.end_ms - dist.window.start_ms == 65 * 60_000
    with Client(url, "acme", token=token) as client:
        picked = client.distribution(60, agents=[17, 99])
    assert picked.agents is not None
    assert sorted(picked.agents) == [17]
    assert picked.skills is None


def test_ingest_batches_and_reports_rejections_by_their_index(served: tuple[str, str]) -> None:
    url, token = served
    sent: list[int] = []

    def count(request: httpx.Request) -> None:
        sent.append(len(request.content.splitlines()))

    answers = [
        {"id": f"b{i}", "time": T_13_29 - 60_000, "score": 6 if i in (3, 11) else 5}
        for i in range(12)
    ] + [ANSWERS[0]]
    transport = httpx.HTTPTransport()
    with Client(url, "acme", token=token, transport=transport) as client:
        client._http.event_hooks["request"] = [count]
        result = client.ingest(answers, batch_size=5)
    assert sent == [5, 5, 3]
    assert result.accepted == 10
    assert result.duplicates == 1  # c1 was already counted
    assert [(r.index, r.id) for r in result.rejected] == [(3, "b3"), (11, "b11")]
    assert "score" in result.rejected[0].reason


def test_errors_are_typed_with_the_problem_detail(served: tuple[str, str]) -> None:
    url, token = served
    unknown = "csd_0000000000000000_" + "x" * 43
    with Client(url, "acme", token=unknown) as client, pytest.raises(Unauthorized) as unauthorized:
        client.distribution(60)
    assert unauthorized.value.status == 401
    assert unauthorized.value.problem["type"].endswith("unauthorized")
    with Client(url, "acme", token=token) as client, pytest.raises(BadRequest) as bad:
        client.distribution(60, interval=7)
    assert "interval" in str(bad.value)


def test_login_gives_a_read_only_client(store: Store, tmp_path: Path) -> None:
    store.add_user(make_user("acme", "supervisor", "correct horse battery", 0))
    with server(store, tmp_path) as url:
        with Client.login(url, "acme", "supervisor", "correct horse battery") as client:
            assert client.distribution(60).totals.total == 0
        with pytest.raises(Unauthorized):
            Client.login(url, "acme", "supervisor", "wrong")


def test_oauth1_app_keys_sign_each_attempt(store: Store, tmp_path: Path) -> None:
    box = load_secret_box(None, tmp_path / "server.key")
    issued = issue_oauth_key("acme", frozenset({"read", "write"}), "t", 0, box)
    store.add_key(issued.key)
    with server(store, tmp_path) as url:
        three_legged = OAuth1Auth(
            issued.consumer_key, issued.consumer_secret, issued.token, issued.token_secret
        )
        with Client(url, "acme", auth=three_legged) as client:
            assert client.ingest(ANSWERS[:2]).accepted == 2
            assert client.distribution(60).totals.total == 2
            assert client.distribution(60).totals.total == 2  # a fresh nonce each time
        two_legged = OAuth1Auth(issued.consumer_key, issued.consumer_secret)
        with Client(url, "acme", auth=two_legged) as client:
            assert client.distribution(60).totals.total == 2


@contextlib.contextmanager
def at_its_limit(store: Store, tmp_path: Path, token: str) -> Iterator[tuple[str, GatedStore]]:
    """A real server with a limit of 1 whose only slot is held by a query waiting at the
    store's gate (opened when the block ends, if not before)."""
    gated = GatedStore(store)
    with server(gated, tmp_path, max_concurrent_requests=1) as url:  # type: ignore[arg-type]

        def hold() -> None:
            with Client(url, "acme", token=token) as client:
                client.distribution(60)

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        while gated.waiting == 0:
            time.sleep(0.01)
        try:
            yield url, gated
        finally:
            gated.gate.set()
            holder.join(10)


def test_429_is_retried_after_retry_after(store: Store, tmp_path: Path) -> None:
    token = add_key(store, "acme", "read")
    retries: list[tuple[int, float, str]] = []
    with at_its_limit(store, tmp_path, token) as (url, gated):
        threading.Timer(0.3, gated.gate.set).start()  # the slot frees after 0.3 s
        started = time.monotonic()
        with Client(url, "acme", token=token, on_retry=lambda *a: retries.append(a)) as client:
            dist = client.distribution(60)
        waited = time.monotonic() - started
    assert dist.totals.total == 0
    assert retries[0][2] == "HTTP 429"
    assert retries[0][1] >= 1.0  # the server said Retry-After: 1
    assert waited >= 1.0


def test_429_after_every_attempt_raises_rate_limited(store: Store, tmp_path: Path) -> None:
    token = add_key(store, "acme", "read")
    retries: list[tuple[int, float, str]] = []
    policy = RetryPolicy(attempts=2, max_delay=0.2)
    with (
        at_its_limit(store, tmp_path, token) as (url, _),
        Client(
            url, "acme", token=token, retry=policy, on_retry=lambda *a: retries.append(a)
        ) as client,
        pytest.raises(RateLimited) as limited,
    ):
        client.distribution(60)
    assert len(retries) == 1
    assert retries[0][1] == 0.2  # Retry-After asked 1 s; max_delay caps it
    assert "in flight" in limited.value.detail


def test_a_dead_server_is_retried_then_reported() -> None:
    retries: list[tuple[int, float, str]] = []
    url = f"http://127.0.0.1:{free_port()}"
    policy = RetryPolicy(attempts=3, base=0.01)
    with (
        Client(url, "acme", token="t", retry=policy, on_retry=lambda *a: retries.append(a)) as c,
        pytest.raises(httpx.ConnectError),
    ):
        c.distribution(60)
    assert [r[2] for r in retries] == ["ConnectError", "ConnectError"]


def test_async_client_reads_ingests_and_retries(store: Store, tmp_path: Path) -> None:
    token = add_key(store, "acme", "read,write")
    gated = GatedStore(store)
    gated.gate.set()

    async def go(url: str) -> tuple[int, int, list[str]]:
        retries: list[str] = []
        async with AsyncClient(
            url, "acme", token=token, on_retry=lambda a, d, r: retries.append(r)
        ) as client:
            accepted = (await client.ingest(ANSWERS, batch_size=3)).accepted
            gated.gate.clear()
            holder = asyncio.create_task(client.distribution(60))
            while gated.waiting == 0:
                await asyncio.sleep(0.01)
            asyncio.get_running_loop().call_later(0.3, gated.gate.set)
            dist = await client.distribution(60, skills=[4])
            await holder
        return accepted, dist.totals.total, retries

    with server(gated, tmp_path, max_concurrent_requests=1) as url:  # type: ignore[arg-type]
        accepted, total, retries = asyncio.run(go(url))
    assert accepted == 4
    assert total == 2
    assert retries == ["HTTP 429"]
