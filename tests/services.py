"""Servers of the tests' own, and what identifies a running server.

A test that stops, restarts, fills or breaks a server starts a private one: a child process on a
free port of 127.0.0.1 with its data in a new temporary directory, stopped and removed afterwards
(also when the test fails). Stopping or restarting it cannot reach the PostgreSQL, Redis or NATS
that the machine runs for everyone else.

``identity(url)`` names the server process behind a URL (it changes when that process restarts);
``tests/service_guard.py`` uses it to fail a run that restarted a shared server.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from tests.helpers import free_port, require_service

#: Where Debian keeps servers; a developer's PATH often lacks /usr/sbin (nats-server lives there).
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


class PrivateServer:
    """One server process owned by a test: ``stop``, ``start`` and ``restart`` touch only it."""

    def __init__(
        self,
        name: str,
        command: list[str],
        *,
        url: str,
        directory: Path,
        stop_signal: int = signal.SIGTERM,
        user: str | None = None,
    ) -> None:
        self.name = name
        self.command = command
        self.url = url
        self.directory = directory
        self.stop_signal = stop_signal
        self.user = user
        self.log_path = directory / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        """Start it and wait until it answers."""
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                **_as_user(self.user),
            )
        deadline = time.monotonic() + timeout
        while identity(self.url) is None:
            if self.process.poll() is not None:
                raise RuntimeError(f"private {self.name} exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"private {self.name} did not start: {self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 60) -> None:
        """Shut it down as an operator would (SIGTERM; for PostgreSQL SIGINT, the fast
        shutdown `pg_ctl stop` sends) and wait until it has exited."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def restart(self, down_seconds: float = 0.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@contextlib.contextmanager
def private_redis() -> Iterator[PrivateServer]:
    """A Redis of the caller's own that keeps nothing on disk."""
    binary = _binary("redis-server", "Redis")
    port = free_port()
    with _temporary_directory("redis") as directory:
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
        command += ["--save", "", "--appendonly", "no"]
        server = PrivateServer(
            "Redis",
            command,
            url=f"redis://127.0.0.1:{port}/0",
            directory=directory,
        )
        with _running(server):
            yield server


@contextlib.contextmanager
def private_nats() -> Iterator[PrivateServer]:
    """A NATS server with JetStream of the caller's own; its streams survive a ``restart``."""
    binary = _binary("nats-server", "NATS")
    port = free_port()
    with _temporary_directory("nats") as directory:
        command = [binary, "-js", "-sd", str(directory / "jetstream")]
        command += ["-a", "127.0.0.1", "-p", str(port)]
        server = PrivateServer(
            "NATS",
            command,
            url=f"nats://127.0.0.1:{port}",
            directory=directory,
        )
        with _running(server):
            yield server


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivateServer]:
    """A PostgreSQL cluster of the caller's own (initdb in a temporary directory).

    initdb and postgres refuse to run as root, and the tests and CI run as root: then the
    cluster belongs to the `postgres` OS user and runs as it. (pytest-postgresql's process
    fixture would do this job, but it runs pg_ctl as the current user and so fails as root.)
    """
    bindir = _postgres_bindir()
    user = _postgres_os_user()
    port = free_port()
    with _temporary_directory("postgres", owner=user) as directory:
        data = directory / "data"
        command = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        command += ["-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]
        initdb = subprocess.run(
            command,
            cwd=directory,
            capture_output=True,
            text=True,
            check=False,
            **_as_user(user),
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed: {initdb.stdout}{initdb.stderr}")
        # Its socket goes in its own directory too: nothing of it lands in /var/run/postgresql.
        command = [str(bindir / "postgres"), "-D", str(data), "-p", str(port)]
        command += ["-k", str(directory), "-c", "listen_addresses=127.0.0.1"]
        server = PrivateServer(
            "PostgreSQL",
            command,
            url=f"postgresql://postgres@127.0.0.1:{port}/postgres",
            directory=directory,
            stop_signal=signal.SIGINT,
            user=user,
        )
        with _running(server):
            yield server


@contextlib.contextmanager
def _running(server: PrivateServer) -> Iterator[None]:
    server.start()
    try:
        yield
    finally:
        server.stop()


@contextlib.contextmanager
def _temporary_directory(kind: str, owner: str | None = None) -> Iterator[Path]:
    # Directly under the temporary directory, not in pytest's tmp_path: that is private to
    # root (0700), and a server running as another user must reach its own files.
    directory = Path(tempfile.mkdtemp(prefix=f"csatdist-{kind}-"))
    try:
        if owner is not None:
            account = pwd.getpwnam(owner)
            os.chown(directory, account.pw_uid, account.pw_gid)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _as_user(user: str | None) -> dict[str, Any]:
    """subprocess arguments that run a child as ``user`` (None: as ourselves)."""
    if user is None:
        return {}
    account = pwd.getpwnam(user)
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _binary(name: str, service: str) -> str:
    path = shutil.which(name, path=_SEARCH_PATH)
    variable = f"CSATDIST_TEST_{service.upper()}_URL"
    require_service(
        f"{name} (for a private {service} server)",
        path is not None,
        f"install it, or set {variable} to a server the tests may use",
        problem="is not installed",
    )
    return path or name


def _postgres_bindir() -> Path:
    """initdb's directory: from PATH, else the newest Debian/Ubuntu /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb", path=_SEARCH_PATH)
    candidates = [Path(found).resolve().parent] if found else []  # through a symlink on PATH
    debian = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    debian.sort(key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0)
    candidates += [Path(path).parent for path in reversed(debian)]
    require_service(
        "initdb (for a private PostgreSQL server)",
        bool(candidates),
        "install the PostgreSQL server package",
        problem="is not installed",
    )
    return candidates[0]


def _postgres_os_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        require_service(
            "the 'postgres' OS user (to run a private PostgreSQL: it refuses to run as root)",
            False,
            "the PostgreSQL server package creates it",
            problem="does not exist",
        )
    return "postgres"


# --- what identifies a running server ---------------------------------------------------------


def identity(url: str) -> str | None:
    """What tells this server process from its next start, or None when it does not answer."""
    scheme = urlsplit(url).scheme
    if scheme.startswith("postgres"):
        return _postgres_identity(url)
    if scheme.startswith("redis"):
        return _redis_identity(url)
    if scheme in {"nats", "tls"}:
        return _nats_identity(url)
    raise ValueError(f"no identity probe for {url!r}")


def _postgres_identity(url: str) -> str | None:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
            row = conn.execute("SELECT pg_postmaster_start_time()::text").fetchone()
            started = row[0] if row else "?"
            try:  # the postmaster's pid, where this role may read the data directory
                row = conn.execute(
                    r"SELECT split_part(pg_read_file('postmaster.pid'), E'\n', 1)"
                ).fetchone()
                pid = f" (pid {row[0]})" if row else ""
            except psycopg.Error:
                pid = ""
    except psycopg.Error:
        return None
    return f"postmaster started {started}{pid}"


def _redis_identity(url: str) -> str | None:
    import redis

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2) as client:
            info = client.info("server")
    except redis.RedisError:
        return None
    return f"run_id {info['run_id']} (pid {info['process_id']})"


def _nats_identity(url: str) -> str | None:
    """The server_id in the INFO line a NATS server sends first (new at every start); reading it
    without a CONNECT leaves nothing behind on the server."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 4222), timeout=2) as sock:
            line = sock.makefile("rb").readline(65536)
    except OSError:
        return None
    if not line.startswith(b"INFO "):
        return None
    info = orjson.loads(line[5:])
    return f"server_id {info['server_id']}"
