"""Shared test helpers: a settable clock, live servers (in-thread and as real processes)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from csatdist.buckets import MINUTE_MS

#: 2026-11-27 13:29:00 UTC, the original document's "now is 13:29".
T_13_29 = 1_795_786_140_000


class FakeClock:
    def __init__(self, now_ms: int = T_13_29) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, minutes: float) -> None:
        self.now_ms += int(minutes * MINUTE_MS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a thread; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def csatdist_cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
    """Run the CLI as a real process; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "csatdist", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def create_key(database: Path | str, account: str, scopes: str = "read,write") -> str:
    result = csatdist_cli(
        "keys",
        "create",
        "--account",
        account,
        "--scopes",
        scopes,
        "--json",
        "--database",
        str(database),
    )
    assert result.returncode == 0, result.stderr
    token: str = orjson.loads(result.stdout)["token"]
    return token


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def consume_command(database_url: str, *extra: str) -> list[str]:
    """`csatdist consume` creating what it needs and logging JSON (its "consuming" line tells
    a test or benchmark that it is ready)."""
    command = [sys.executable, "-m", "csatdist", "consume", "--create", "--json"]
    return [*command, "--database", database_url, *extra]


def start_server(
    database: Path | str, log_path: Path, *extra: str, env: dict[str, str] | None = None
) -> ServerProcess:
    """Start ``csatdist serve`` as a real process and wait until /healthz answers. One worker
    process unless ``extra`` (or ``env``) says how many: a test that kills the server then
    kills what serves."""
    port = free_port()
    command = [sys.executable, "-m", "csatdist", "serve", "--database", str(database)]
    if "--workers" not in extra and "CSATDIST_WORKERS" not in (env or {}):
        command += ["--workers", "1"]
    with log_path.open("ab") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [*command, "--port", str(port), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return ServerProcess(process, url, log_path)
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"server did not start: {log_path.read_text()[-2000:]}")
        time.sleep(0.05)


def change_log_reads(store: Any) -> list[int]:
    """The versions ``store.account_changes`` is asked for from now on (it is wrapped): how
    often, and from where, a cache reads the change log."""
    reads: list[int] = []
    real = store.account_changes

    def counted(account_id: str, since_version: int) -> Any:
        reads.append(since_version)
        return real(account_id, since_version)

    store.account_changes = counted
    return reads


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _latest_schema() -> int:
    from csatdist.store.migrations import migrations_for

    return migrations_for("sqlite")[-1].version


LATEST_SCHEMA = _latest_schema()


#: Tests that only use PostgreSQL share this server: each gets a new schema in it
#: (postgres_schema), so none sees or changes anyone else's tables, and nothing stops or
#: reconfigures the server. The test that stops PostgreSQL starts its own (tests/services.py).
POSTGRES_URL = os.environ.get(
    "CSATDIST_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
#: Redis and NATS: by default each test session starts a private server (tests/conftest.py).
#: Set, these name a server to use instead; see the README's "Development" section.
REDIS_URL = os.environ.get("CSATDIST_TEST_REDIS_URL")
NATS_URL = os.environ.get("CSATDIST_TEST_NATS_URL")


def require_service(
    name: str, reachable: bool, how: str, problem: str = "is not reachable"
) -> None:
    """Skip when a service is missing on a developer machine; in CI a missing one fails."""
    if reachable:
        return
    message = f"{name} {problem} ({how})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " — CI must provide it")
    pytest.skip(message)


def _postgres_reachable() -> bool:
    import psycopg

    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def with_search_path(url: str, schema: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL whose connections use a new, empty schema; dropped afterwards."""
    import psycopg

    require_service(
        "PostgreSQL", _postgres_reachable(), f"CSATDIST_TEST_POSTGRES_URL={POSTGRES_URL}"
    )
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(POSTGRES_URL, schema)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def execute_sql(database_url: str, sql: str) -> None:
    """Run one statement against a test database directly, bypassing the store."""
    if database_url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.encode())
        return
    import sqlite3

    with contextlib.closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as conn:
        conn.execute(sql)
        conn.commit()


# --- answer records (EXTENSIONS.md section 6) ---------------------------------------------------

SCORE_KEYS = tuple(f"csat_score{n}_answers" for n in range(1, 6))


def list_records(
    client: httpx.Client, account: str, headers: dict[str, str], **params: object
) -> list[dict[str, Any]]:
    """Every record of a listing, a page at a time (``limit`` 1000 unless given); fails if an
    id comes twice."""
    query: dict[str, Any] = {"limit": 1000, **params}
    listed: list[dict[str, Any]] = []
    while True:
        response = client.get(f"/api/account/{account}/csat/answers", params=query, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        listed += page["answers"]
        if page["next"] is None:
            break
        query["cursor"] = page["next"]
    ids = [record["id"] for record in listed]
    assert len(set(ids)) == len(ids), "an id was listed twice"
    return listed


def assert_invariant(
    client: httpx.Client, account: str, headers: dict[str, str], **params: object
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The distribution for ``params`` (timeframe, skillIds, agentIds) and the records listed
    over its window with the same filters, after checking that counting the records per score
    gives the distribution's counts (the invariant of EXTENSIONS.md section 6)."""
    query: dict[str, Any] = {"v": 1, **params}
    response = client.get(
        f"/operations/api/account/{account}/msgcsatdistribution", params=query, headers=headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    window = {"from": response.headers["X-CSAT-Window-Start"]}
    window["to"] = response.headers["X-CSAT-Window-End"]
    filters = {k: v for k, v in params.items() if k in ("skillIds", "agentIds")}
    listed = list_records(client, account, headers, **window, **filters)
    section = body.get("skillsMetricsPerAgent", body.get("agentsMetrics", body))
    counted = [sum(1 for r in listed if r["score"] == n) for n in range(1, 6)]
    assert counted == [section["metricsTotals"][key] for key in SCORE_KEYS], (params, window)
    return body, listed
