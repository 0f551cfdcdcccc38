"""A pytest plugin that fails the run if a server shared with others changed while it ran.

The suite must never stop, restart, kill or flush the machine's own PostgreSQL, Redis or NATS:
on a developer's laptop or a CI host other people and other runs use them. Tests that need a
server broken start their own (tests/services.py); this plugin checks that none of them, nor
anything else in the run, touched a shared one. At the start of the session it notes what
identifies each shared server process (PostgreSQL's postmaster start time and pid, Redis's
run_id and pid, NATS's server_id); when the session finishes it looks again, and a server
restarted or gone since is an error of the run (pytest exits 1), naming the server.

Guarded: the machine's services on their standard ports, and the servers named by
CSATDIST_TEST_POSTGRES_URL / _REDIS_URL / _NATS_URL. CSATDIST_TEST_GUARDED_URLS (comma-separated
URLs) replaces that list; tests/test_service_guard.py uses it to prove the check fails a run.
A server not answering when the run starts is not guarded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.services import identity

MACHINE_SERVERS = (
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "redis://127.0.0.1:6379/0",
    "nats://127.0.0.1:4222",
)
_DEFAULT_PORTS = {"postgresql": 5432, "redis": 6379, "nats": 4222}

_IDENTITIES = pytest.StashKey[dict[str, str | None]]()


def guarded_urls() -> list[str]:
    """One URL per shared server, machine's first."""
    configured = os.environ.get("CSATDIST_TEST_GUARDED_URLS")
    if configured is not None:
        return [url.strip() for url in configured.split(",") if url.strip()]
    named = (os.environ.get(f"CSATDIST_TEST_{kind}_URL") for kind in ("POSTGRES", "REDIS", "NATS"))
    servers: dict[tuple[str, str, int], str] = {}
    for url in (*MACHINE_SERVERS, *(url for url in named if url)):
        servers.setdefault(_server_of(url), url)
    return list(servers.values())


def service_name(url: str) -> str:
    kind = _server_of(url)[0]
    return {"postgresql": "PostgreSQL", "redis": "Redis", "nats": "NATS"}[kind]


def _server_of(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    if parts.scheme.startswith("postgres"):
        kind = "postgresql"
    elif parts.scheme.startswith("redis"):
        kind = "redis"
    else:
        kind = "nats"
    return kind, parts.hostname or "127.0.0.1", parts.port or _DEFAULT_PORTS[kind]


def _where(url: str) -> str:
    _, host, port = _server_of(url)
    return f"{host}:{port}"


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_IDENTITIES] = {url: identity(url) for url in guarded_urls()}


def pytest_report_header(config: pytest.Config) -> list[str]:
    identities = config.stash.get(_IDENTITIES, {})
    lines = ["shared servers guarded (a restart during the run fails it):"]
    for url, seen in identities.items():
        state = seen or "not answering, not guarded"
        lines.append(f"  {service_name(url)} {_where(url)}: {state}")
    return lines


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> Iterator[None]:
    # A wrapper inside the terminal reporter's: it looks after every fixture is torn down
    # (even if a teardown raised), and its error is in the summary like a test's.
    try:
        yield
    finally:
        changed = _changes(session.config.stash.get(_IDENTITIES, {}))
        if changed:
            _report_error(session, changed)


def _changes(identities: dict[str, str | None]) -> list[str]:
    """One line for each guarded server restarted or gone since the run started."""
    changed = []
    for url, before in identities.items():
        if before is None:
            continue
        after = identity(url)
        if after != before:
            now = after or "not answering (stopped or killed)"
            changed.append(f"{service_name(url)} at {_where(url)}: was {before}; now {now}")
    return changed


def _report_error(session: pytest.Session, changed: list[str]) -> None:
    message = (
        "a server shared with others changed during this test run (restarted or stopped). "
        "The tests must never touch one: a test that needs a server stopped or restarted "
        "starts its own (tests/services.py). If someone else restarted it, run again.\n  "
        + "\n  ".join(changed)
    )
    report = pytest.TestReport(
        nodeid="shared servers",
        location=(__file__, None, "shared servers unchanged"),
        keywords={},
        outcome="failed",
        longrepr=message,
        when="teardown",
    )
    session.config.hook.pytest_runtest_logreport(report=report)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
