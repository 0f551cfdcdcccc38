"""PostgreSQL point reads on the event loop (csatdist.store.pg_async): a query whose aggregate and
response are in memory takes no worker thread, and is still exact and still refused as soon as
its key is revoked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from csatdist.http import create_app
from csatdist.http.deps import runtime
from csatdist.keys import issue_key
from csatdist.store import Store, open_store
from csatdist.store.postgres import PostgresStore
from tests.conftest import make_settings
from tests.helpers import FakeClock, bearer, change_log_reads, postgres_schema

pytestmark = pytest.mark.postgresql

QUERY = "/operations/api/account/acme/msgcsatdistribution"
INGEST = "/api/account/acme/csat/answers"


@pytest.fixture
def url() -> Iterator[str]:
    with postgres_schema() as schema_url:
        yield schema_url


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The functions the query path sends to a worker thread."""
    from csatdist.http import deps
    from csatdist.http.routes import distribution

    sent: list[str] = []
    for module in (deps, distribution):
        real = module.run_in_threadpool

        async def counted(func: Callable[..., Any], *args: Any, real: Any = real) -> Any:
            named = getattr(func, "func", func)  # a functools.partial: the function it calls
            sent.append(getattr(named, "__name__", repr(named)))
            return await real(func, *args)

        monkeypatch.setattr(module, "run_in_threadpool", counted)
    return sent


def answer(number: int, score: int = 5) -> dict[str, object]:
    return {
        "id": f"a-{number}",
        "time": int(time.time() * 1000) - 60_000,
        "skillId": 1,
        "agentId": 1,
        "score": score,
    }


def total(client: TestClient, token: str) -> int:
    response = client.get(QUERY, params={"v": 1, "timeframe": 60}, headers=bearer(token))
    assert response.status_code == 200, response.text
    return int(response.json()["metricsTotals"]["total_answers"])


def add_key(store: Store, scopes: str) -> tuple[str, str]:
    issued = issue_key("acme", frozenset(scopes.split(",")), "test", 0)
    store.add_key(issued.key)
    return issued.key.key_id, issued.token


def test_a_query_answered_from_memory_takes_no_worker_thread(url: str, hops: list[str]) -> None:
    store = open_store(url)
    _, token = add_key(store, "read,write")
    app = create_app(make_settings(auth_cache_seconds=0), store=store)
    try:
        with TestClient(app) as client:
            assert runtime_of(client).point_reads is not None
            assert client.post(INGEST, json={"answers": [answer(1)]}, headers=bearer(token))
            assert total(client, token) == 1  # loads the aggregate: a worker thread
            hops.clear()
            for _ in range(5):  # the key and the version are each read every time
                assert total(client, token) == 1
            assert hops == []
    finally:
        store.close()


def test_a_revoked_key_is_refused_on_the_event_loop_path(url: str, hops: list[str]) -> None:
    store = open_store(url)
    key_id, token = add_key(store, "read")
    app = create_app(make_settings(auth_cache_seconds=0), store=store, clock=FakeClock())
    try:
        with TestClient(app) as client:
            assert total(client, token) == 0
            hops.clear()
            store.revoke_key(key_id, 1)
            response = client.get(QUERY, params={"v": 1}, headers=bearer(token))
            assert response.status_code == 401
            assert "revoked" in response.json()["detail"]
            assert hops == []  # decided on the event loop
    finally:
        store.close()


def test_a_revocation_is_seen_within_the_key_cache_time(url: str) -> None:
    store = open_store(url)
    key_id, token = add_key(store, "read")
    app = create_app(make_settings(auth_cache_seconds=0.5), store=store, clock=FakeClock())
    try:
        with TestClient(app) as client:
            assert total(client, token) == 0
            store.revoke_key(key_id, 1)
            time.sleep(0.6)
            response = client.get(QUERY, params={"v": 1}, headers=bearer(token))
            assert response.status_code == 401
    finally:
        store.close()


def test_a_commit_by_another_replica_is_in_the_next_query(url: str, hops: list[str]) -> None:
    """Replica A answers from memory; every answer B acknowledges is in A's next query."""
    store_a, store_b = open_store(url), open_store(url)
    _, token = add_key(store_a, "read,write")
    settings = make_settings()
    try:
        with (
            TestClient(create_app(settings, store=store_a)) as a,
            TestClient(create_app(settings, store=store_b)) as b,
        ):
            assert total(a, token) == 0  # loaded: from here on, caught up
            reads_a = change_log_reads(store_a)
            for number in range(1, 6):
                assert total(a, token) == number - 1  # reused: no change since
                response = b.post(INGEST, json={"answers": [answer(number)]}, headers=bearer(token))
                assert response.status_code == 200
                assert response.json()["accepted"] == 1
                assert total(a, token) == number
            assert "render_distribution" in hops  # a change is caught up on a worker thread
            # ... from the changes read with the version on the event loop, not read again
            assert reads_a == []
    finally:
        store_a.close()
        store_b.close()


def test_point_reads_replace_a_connection_the_server_closed(url: str) -> None:
    store = open_store(url)
    assert isinstance(store, PostgresStore)
    add_key(store, "read")

    async def scenario() -> None:
        reads = store.point_reads()
        await reads.open()
        try:
            assert (await reads.account_changes("acme", 0)).version == 0
            async with reads._pool.connection() as conn:  # the one idle connection
                pid = conn.info.backend_pid
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            assert (await reads.account_changes("acme", 0)).version == 0
            assert await reads.find_key("acme", "nope") is None
        finally:
            await reads.close()

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def runtime_of(client: TestClient) -> Any:
    class _Request:
        app = client.app

    return runtime(_Request())  # type: ignore[arg-type]
