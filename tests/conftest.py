from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from csatdist.http import create_app
from csatdist.keys import issue_key
from csatdist.settings import Settings
from csatdist.store import Store, open_store
from tests.helpers import (
    NATS_URL,
    REDIS_URL,
    FakeClock,
    bearer,
    postgres_schema,
    require_service,
)
from tests.services import identity, private_nats, private_redis

#: Fails the run if a server shared with others was restarted or stopped while it ran.
pytest_plugins = ["tests.service_guard"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of every backend: a SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'csat.db'}"
        return
    with postgres_schema() as url:
        yield url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """Every store backend; the same contract tests run against each."""
    backend = open_store(database_url)
    yield backend
    backend.close()


def add_key(store: Store, account: str, scopes: str, now_ms: int = 0) -> str:
    issued = issue_key(account, frozenset(scopes.split(",")), "test", now_ms)
    store.add_key(issued.key)
    return issued.token


@dataclass
class Api:
    """An in-process client with a read key and a write key for account ``acme``."""

    client: TestClient
    store: Store
    clock: FakeClock
    read: dict[str, str]
    write: dict[str, str]
    account: str = "acme"

    def query_url(self, account: str | None = None) -> str:
        return f"/operations/api/account/{account or self.account}/msgcsatdistribution"

    def ingest_url(self, account: str | None = None) -> str:
        return f"/api/account/{account or self.account}/csat/answers"

    def ingest(
        self, answers: list[dict[str, object]], account: str | None = None
    ) -> dict[str, object]:
        response = self.client.post(
            self.ingest_url(account), json={"answers": answers}, headers=self.write
        )
        assert response.status_code == 200, response.text
        result: dict[str, object] = response.json()
        return result

    def query(self, **params: object) -> dict[str, object]:
        response = self.client.get(self.query_url(), params={"v": 1, **params}, headers=self.read)
        assert response.status_code == 200, response.text
        result: dict[str, object] = response.json()
        return result


def make_settings(**overrides: object) -> Settings:
    return Settings(**{"purge_interval_seconds": 3600, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def api(store: Store, clock: FakeClock) -> Iterator[Api]:
    app = create_app(make_settings(), store=store, clock=clock)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(
            client=client,
            store=store,
            clock=clock,
            read=bearer(add_key(store, "acme", "read")),
            write=bearer(add_key(store, "acme", "write")),
        )


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """The Redis of this test session: a private server, unless CSATDIST_TEST_REDIS_URL names one.

    Private rather than the machine's: the tests empty their database between tests, and the
    limiter's keys have fixed names ({csatdist}:inflight:global), so in a shared Redis they
    would count everyone else's slots and wipe them.
    """
    if REDIS_URL is not None:
        require_service(
            "Redis", identity(REDIS_URL) is not None, f"CSATDIST_TEST_REDIS_URL={REDIS_URL}"
        )
        yield REDIS_URL
        return
    with private_redis() as server:
        yield server.url


@pytest.fixture
def redis_url(redis_server_url: str) -> Iterator[str]:
    """This session's Redis database, emptied before and after each test."""
    client = redis.Redis.from_url(redis_server_url, socket_connect_timeout=1)
    client.flushdb()
    yield redis_server_url
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """The NATS of this test session: a private server with JetStream, unless
    CSATDIST_TEST_NATS_URL names one.

    Private, so no test run leaves streams on, or fills, the machine's server. A named server is
    safe to share: each test creates streams, subjects and a consumer under a random name of
    its own and deletes them afterwards, and touches no other.
    """
    if NATS_URL is not None:
        require_service(
            "NATS", identity(NATS_URL) is not None, f"CSATDIST_TEST_NATS_URL={NATS_URL}"
        )
        yield NATS_URL
        return
    with private_nats() as server:
        yield server.url
