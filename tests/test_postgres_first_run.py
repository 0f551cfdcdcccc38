"""The first run against PostgreSQL: a missing database is created, or the one line that says
what to do; nothing permanent is retried. Against the real server (CSATDIST_TEST_POSTGRES_URL),
with databases and a role made for each test and dropped after it."""

from __future__ import annotations

import shlex
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg
import pytest
from psycopg import sql

from csatdist.store import DatabaseMisconfigured
from csatdist.store.postgres import (
    START_WAIT_SECONDS,
    _target,
    explain_failure,
    is_transient,
    prepare_database,
)
from tests.helpers import (
    LATEST_SCHEMA,
    POSTGRES_URL,
    csatdist_cli,
    free_port,
    require_service,
    start_server,
)

pytestmark = pytest.mark.postgresql

SERVER = urlsplit(POSTGRES_URL)
WHERE = f"{SERVER.hostname}:{SERVER.port or 5432}"


def url_for(database: str, user: str | None = None, port: int | None = None) -> str:
    """The test server's URL with another database, role or port."""
    user = user or SERVER.username or "postgres"
    netloc = f"{user}@{SERVER.hostname}:{port or SERVER.port or 5432}"
    return urlunsplit((SERVER.scheme, netloc, f"/{database}", "", ""))


def admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3)


@pytest.fixture
def new_name() -> Iterator[str]:
    """A database name no one uses (with a quote and a capital, so it must be quoted), dropped
    afterwards if a test created it."""
    try:
        admin().close()
    except psycopg.OperationalError:
        require_service("PostgreSQL", False, f"CSATDIST_TEST_POSTGRES_URL={POSTGRES_URL}")
    name = f"csatdist_T'{uuid.uuid4().hex[:10]}"
    yield name
    with admin() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def role_without_createdb() -> Iterator[str]:
    """A login role that may connect but not create databases; dropped afterwards."""
    name = f"csatdist_nocreate_{uuid.uuid4().hex[:8]}"
    with admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOCREATEDB").format(sql.Identifier(name)))
    yield name
    with admin() as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def exists(name: str) -> bool:
    with admin() as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return found is not None


def test_migrate_creates_a_missing_database_and_says_so_once(new_name: str) -> None:
    url = url_for(new_name)
    first = csatdist_cli("migrate", "--json", "--database", url)
    assert first.returncode == 0, first.stderr
    assert orjson.loads(first.stdout) == {"schema_version": LATEST_SCHEMA}
    assert first.stderr == f'created PostgreSQL database "{new_name}" on {WHERE}\n'
    assert exists(new_name)
    again = csatdist_cli("migrate", "--database", url)
    assert (again.returncode, again.stdout, again.stderr) == (
        0,
        f"schema is at version {LATEST_SCHEMA}\n",
        "",
    )


def test_replicas_creating_the_database_at_once_all_start(new_name: str) -> None:
    url, notices, failures = url_for(new_name), [], []
    start = threading.Barrier(4)

    def replica() -> None:
        start.wait()
        try:
            prepare_database(url, connect_timeout=5, notice=notices.append)
        except Exception as exc:  # the assertion below shows it
            failures.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert notices == [f'created PostgreSQL database "{new_name}" on {WHERE}']


@pytest.mark.slow
def test_serve_creates_the_database_then_serves(new_name: str, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    server = start_server(url_for(new_name), log)  # returns once /healthz answers 200
    server.stop()
    assert f'created PostgreSQL database "{new_name}" on {WHERE}' in log.read_text()
    assert "error connecting" not in log.read_text()


def test_a_role_that_may_not_create_it_gets_one_line_with_the_command(
    new_name: str, role_without_createdb: str
) -> None:
    role = role_without_createdb
    started = time.monotonic()
    result = csatdist_cli("migrate", "--database", url_for(new_name, user=role))
    assert time.monotonic() - started < START_WAIT_SECONDS  # not retried
    assert result.returncode == 2
    assert result.stdout == ""
    port = SERVER.port or 5432
    assert result.stderr == (
        f'error: PostgreSQL database "{new_name}" does not exist on {WHERE} and role "{role}" '
        "may not create it (no CREATEDB privilege); ask a role that may to create it, e.g.: "
        f"createdb -h {SERVER.hostname} -p {port} -U postgres -O {role} {shlex.quote(new_name)}\n"
    )
    assert not exists(new_name)


def test_a_refused_connection_is_retried_briefly_and_said_so() -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    result = csatdist_cli("migrate", "--database", url_for("csat", port=port))
    elapsed = time.monotonic() - started
    assert START_WAIT_SECONDS <= elapsed < START_WAIT_SECONDS + 5
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"PostgreSQL on {SERVER.hostname}:{port} is not accepting connections yet (Connection "
        f"refused); retrying for up to {START_WAIT_SECONDS:g} s",
        f"error: cannot reach PostgreSQL on {SERVER.hostname}:{port}: Connection refused "
        f"(retried for {START_WAIT_SECONDS:g} s); check that the server is running and accepts "
        "connections there",
    ]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql://postgres@nonexistent.invalid/csat",
            "error: unknown PostgreSQL host 'nonexistent.invalid' (failed to resolve host "
            "'nonexistent.invalid': [Errno -2] Name or service not known): check the host in the "
            "database URL (--database or CSATDIST_DATABASE_URL)\n",
        ),
        (
            "postgresql://postgres@127.0.0.1/csat?sslmod=require",
            'error: invalid PostgreSQL URL: invalid URI query parameter: "sslmod"; expected '
            "postgresql://user[:password]@host[:port]/database\n",
        ),
        (
            "postgresql://postgres@127.0.0.1:54x2/csat",
            'error: invalid PostgreSQL URL: invalid integer value "54x2" for connection option '
            '"port"; expected postgresql://user[:password]@host[:port]/database\n',
        ),
    ],
)
def test_permanent_errors_are_one_line_and_never_retried(url: str, message: str) -> None:
    started = time.monotonic()
    result = csatdist_cli("migrate", "--database", url)
    assert time.monotonic() - started < START_WAIT_SECONDS
    assert (result.returncode, result.stdout, result.stderr) == (2, "", message)


def test_an_unknown_role_is_an_authentication_error_not_retried(new_name: str) -> None:
    role = f"nobody_{uuid.uuid4().hex[:6]}"
    result = csatdist_cli("migrate", "--database", url_for(new_name, user=role))
    assert result.returncode == 2
    assert result.stderr == (
        f'error: PostgreSQL on {WHERE} refused role "{role}": role "{role}" does not exist; '
        "check the user and password in the database URL (--database or "
        "CSATDIST_DATABASE_URL)\n"
    )


# What the server at hand cannot show (it trusts every local role, and it is up): the server's
# and libpq's words for the other failures, as psycopg reports them.
FAILED = 'connection failed: connection to server at "10.0.0.5", port 5432 failed: '


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        ("FATAL:  the database system is starting up", True),
        ("FATAL:  the database system is shutting down", True),
        ("FATAL:  sorry, too many clients already", True),
        ("timeout expired", True),
        ('FATAL:  password authentication failed for user "csat"', False),
        ('FATAL:  database "csat" does not exist', False),
        ('FATAL:  no pg_hba.conf entry for host "10.0.0.9", user "csat", database "csat"', False),
        ("fe_sendauth: no password supplied", False),
    ],
)
def test_which_failures_pass_by_themselves(message: str, transient: bool) -> None:
    assert is_transient(psycopg.OperationalError(FAILED + message)) is transient


def test_a_failed_password_names_the_role_and_the_fix() -> None:
    target = _target("postgresql://csat:wrong@10.0.0.5/csat")
    error = psycopg.OperationalError(
        FAILED + 'FATAL:  password authentication failed for user "csat"'
    )
    assert explain_failure(target, error) == (
        'PostgreSQL on 10.0.0.5:5432 refused role "csat": password authentication failed for '
        'user "csat"; check the user and password in the database URL (--database or '
        "CSATDIST_DATABASE_URL)"
    )
    assert "wrong" not in explain_failure(target, error)  # never the password


def test_a_missing_database_without_a_maintenance_database_says_what_to_run() -> None:
    target = _target("postgresql://csat@10.0.0.5:5433/csat")
    error = psycopg.OperationalError(FAILED + 'FATAL:  database "csat" does not exist')
    assert explain_failure(target, error) == (
        'PostgreSQL database "csat" does not exist on 10.0.0.5:5433, and no maintenance '
        'database (postgres, template1) accepted role "csat" to create it; create it with: '
        "createdb -h 10.0.0.5 -p 5433 -U csat csat"
    )


def test_a_bad_url_is_refused_before_any_connection() -> None:
    with pytest.raises(DatabaseMisconfigured, match="invalid PostgreSQL URL"):
        prepare_database("postgresql://x@h/db?nope=1", connect_timeout=1, notice=print)
