"""Abuse: issue 14's attacks all at once against a real `csatdist serve`, while a victim account
keeps polling and ingesting. The issue's "done when".

    .venv/bin/python bench/abuse.py                      # large, SQLite, 45 s of attack
    .venv/bin/python bench/abuse.py --repeat 2 --backends sqlite,postgresql   # make bench-full
    .venv/bin/python bench/abuse.py --quick --output /tmp/abuse.json   # CI: guarantees only

From the ordinary credentials of ONE account (the dataset's, the attacker) plus unauthenticated
logins, at once:

1. garbage ingests: 10 MB NDJSON bodies of ``x\\n`` and of 5 M lines of ``1``, several at once;
2. a login flood: 40 concurrent logins with random user names (one in five 60 KB long);
3. sixty sockets each asking for a different large body (``skillIds=all&agentIds=all&interval=5``,
   different timeframes so no two share a cached response: half the finding's own 1440 minutes
   and its neighbours, half the largest bodies the entry cap admits) and never reading it, and a
   dozen clients reading large bodies normally;
4. an ingest flood: 8 clients posting batches of 10,000 valid, new answers in a loop.

Meanwhile a victim account (its own keys, a few thousand answers) has one client polling an
account-level and a ``skillIds=all`` query and one ingesting one answer at a time (unique ids,
the current time; an answer not acknowledged is sent again until it is; each request given 30 s
at most). Phases: baseline (the
victim alone), attack, recovery. Reported per phase: the victim's latencies (p50/p90/p99/max),
every client kind's statuses (and connection errors), the server's RSS and open descriptors
sampled every 100 ms from /proc, and its CPU time. At the end the victim's count must equal the
answers it got 200 for, read over HTTP and from the store directly.

Guarantees (exit 1 when one breaks): no 500 (clients, /metrics, error log), the victim's counts
exact, the server up and the victim always answered, RSS peak <= 1 GB, and the memory in use
back within 10 % of its start plus what the server keeps by design afterwards. That last
comparison is made like for like: the start (both accounts' counters loaded, just before the
baseline) and the end (after the recovery) are each read right after a full garbage collection
and a ``malloc_trim(0)`` called in the server through gdb — the server trims every 10 s on its
own, and one sample taken before or after that trim differed by 20-25 MB (SQLite, 167-168 MB
before, 143-147 after) with no leak — and each is RSS less the free memory CPython's
small-object allocator holds at that moment (``_PyObject_DebugMallocStats``, called through gdb
too): obmalloc gives a 1 MiB arena back only when every object in it is gone and keeps the freed
pools of the others resident, so after the attack's millions of short-lived objects it held
37-43 MB free in arenas pinned by a few MB of live ones (PostgreSQL, 4 MB at the start), which
no trim returns (docs/security.md). Both RSS readings are reported too. What the server keeps
by design is added to the start: the response
cache (it may hold the attacker's bodies; an account fills at most a quarter of its size, so two
accounts half of it), SQLite's writer page cache (``WRITER_CACHE_KIB``) and each open SQLite
reader connection's page cache (SQLite's default 2,000 KiB; one connection per worker thread
that read, counted from ``/proc/PID/fd`` at the end); and what the answers the flood added take
in the attacker's counters (data, not a leak: loaded the way a server loads them, in this
process under tracemalloc, before the attack and after). Without gdb, or where gdb cannot call a
function in a process and return from it cleanly (:func:`gdb_calls_work`, tried first on a
throwaway process: gdb 13 on Linux 6.18 fails to restore the registers after a call, and left the
server's supervisor holding its GIL for good, so no connection was accepted again), the first and
last samples are compared instead, and the check says so (``method``). Targets (reported as
met or not, they depend on the machine's load): victim query p99 <= 50 ms and victim ingest p99
<= 100 ms under attack.

SQLite runs start from a copy of a database loaded once through the store's direct path and
cached in ``~/.cache/csatdist-bench/`` (``--cache-dir``), rebuilt when older than
``--cache-max-age-hours``: the answers are timed relative to the build, and expire after a day.
PostgreSQL runs load the dataset into a fresh schema each time.

The attackers run in their own processes at ``nice 10`` (``--attacker-nice``), standing in for
clients on other machines: they take the CPU the server leaves, not the server's own. The victim
runs in this process, at normal priority. Writes bench/results/abuse.json (per backend: every
run, and medians with their spread).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import functools
import multiprocessing
import os
import random
import re
import resource
import shutil
import socket
import sqlite3
import statistics
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench.datasets import DATASETS, Dataset, answers  # noqa: E402

from csatdist.memo import ACCOUNT_SHARE  # noqa: E402
from csatdist.store.sqlite import WRITER_CACHE_KIB  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "csatdist-bench"
MIB = 1024 * 1024
VICTIM = "victim"
VICTIM_SEEDED = 5_000
#: The victim gives up on a request after this long: a hang, reported as such.
VICTIM_TIMEOUT_S = 30.0
#: The quick variant's data: few answers, but spread over as many agents and skills as
#: ``large``, so its ``skillIds=all&agentIds=all&interval=5`` bodies are megabytes too.
QUICK = Dataset("abuse-quick", 1, 2_000, 50, 30_000)
QUERY_TARGET_MS = 50.0
INGEST_TARGET_MS = 100.0
RSS_CEILING_MB = 1024.0
RSS_RECOVERY = 1.10
RSS_RECOVERY_CHECK = "memory in use back within 10 % of its start plus the bounded caches"
#: A SQLite reader connection's page cache at most: SQLite's default ``cache_size`` (-2000),
#: which the store leaves to its readers.
READER_CACHE_KIB = 2000
LOGIN_PASSWORD = "correct horse battery staple"  # noqa: S105 - the attacker's own user


# data ----------------------------------------------------------------------------------------


def _now_ms() -> int:
    return int(time.time() * 1000)


def _schema_version() -> int:
    from csatdist.store.migrations import migrations_for

    return migrations_for("sqlite")[-1].version


def load_dataset(url: str, dataset: Dataset, log: Callable[[str], None]) -> int:
    """Load ``dataset`` through the store's direct path (batches of 5,000, as bench/run.py);
    then drop the change log, as the server's own purge does an hour later (a copy used later
    would otherwise purge a million change rows in one transaction during the run)."""
    from csatdist.service import ingest_answers
    from csatdist.store import open_store

    store = open_store(url)
    total = 0
    try:
        now = _now_ms()
        for account, rows in answers(dataset, now):
            for start in range(0, len(rows), 5000):
                batch = enumerate(rows[start : start + 5000])
                total += ingest_answers(store, account, batch, now, 1445).accepted
                if start % 200_000 == 0:
                    log(f"  loaded {start + 5000:,} answers of {len(rows):,}")
        store.purge_changes(_now_ms() + 1)
    finally:
        store.close()
    return total


def cached_database(
    name: str, cache_dir: Path | None, max_age_hours: float, log: Callable[[str], None]
) -> tuple[Path, dict[str, Any]]:
    """The cached SQLite file of dataset ``name`` (built when missing or too old) and its
    description. Never used in place: runs work on a copy."""
    dataset = DATASETS.get(name, QUICK)
    directory = cache_dir or DEFAULT_CACHE
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"abuse-{dataset.name}-schema{_schema_version()}.db"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        meta: dict[str, Any] = orjson.loads(meta_path.read_bytes())
        age_h = (_now_ms() - meta["built_ms"]) / 3_600_000
        if age_h <= max_age_hours:
            return path, {**meta, "path": str(path), "age_minutes": round(age_h * 60, 1)}
        log(f"cached {path} is {age_h:.1f} h old (> {max_age_hours} h): rebuilding")
    for stale in directory.glob(path.name + "*"):
        stale.unlink()
    building = path.with_name(path.name + ".building")
    for leftover in directory.glob(building.name + "*"):
        leftover.unlink()
    log(f"building {path} ({dataset.total:,} answers, once)")
    started = time.perf_counter()
    built_ms = _now_ms()
    total = load_dataset(f"sqlite:///{building}", dataset, log)
    with contextlib.closing(sqlite3.connect(building)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    building.rename(path)
    meta = {
        "dataset": dataset.name,
        "answers": total,
        "built_ms": built_ms,
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    meta_path.write_bytes(orjson.dumps(meta))
    return path, {**meta, "path": str(path), "age_minutes": 0.0}


def copy_database(source: Path, target: Path) -> None:
    """A page-by-page copy (consistent even if a WAL were left beside the source)."""
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


@dataclass
class Prepared:
    url: str
    attacker: str
    tokens: dict[str, str]
    victim_seeded: int
    purged_answers: int
    writer_batch_ms: list[float]
    flood_template: list[tuple[int, int]]  # (skill, agent) pairs answers are drawn from


def flood_batch(tag: str, pairs: list[tuple[int, int]], now_ms: int, size: int) -> bytes:
    """``size`` valid new answers for the attacker's account: pairs of the account's own
    skills and agents, within the last hour (what a busy contact centre sends)."""
    rng = random.Random(tag)
    answers_ = []
    for i in range(size):
        skill, agent = pairs[rng.randrange(len(pairs))]
        answers_.append(
            {
                "id": f"{tag}-{i}",
                "time": now_ms - rng.randrange(0, 3_600_000),
                "skillId": skill,
                "agentId": agent,
                "score": rng.choice((5, 5, 5, 4, 4, 3, 2, 1, 1)),
            }
        )
    return orjson.dumps({"answers": answers_})


def prepare(url: str, dataset: Dataset, log: Callable[[str], None]) -> Prepared:
    """Keys, the attacker's login user, the victim's answers, expired data purged, and the
    writer's time for a flood batch measured directly (no HTTP, nothing else running)."""
    from csatdist.keys import issue_key
    from csatdist.service import ingest_answers
    from csatdist.store import open_store
    from csatdist.users import make_user

    attacker = "bench"
    store = open_store(url)
    try:
        now = _now_ms()
        purged = store.purge(now - 1445 * 60_000)
        tokens = {}
        for name, account, scopes in (
            ("attacker_read", attacker, "read"),
            ("attacker_write", attacker, "write"),
            ("victim_read", VICTIM, "read"),
            ("victim_write", VICTIM, "write"),
        ):
            issued = issue_key(account, frozenset({scopes}), "abuse", now)
            store.add_key(issued.key)
            tokens[name] = issued.token
        store.add_user(make_user(attacker, "agent-1", LOGIN_PASSWORD, now))
        rng = random.Random(7)
        seeded = [
            {
                "id": f"victim-seed-{i}",
                "time": now - rng.randrange(60_000, 12 * 3_600_000),  # well inside 1440 min
                "skillId": 1 + rng.randrange(5),
                "agentId": 1 + rng.randrange(20),
                "score": rng.choice((5, 5, 4, 3, 1)),
            }
            for i in range(VICTIM_SEEDED)
        ]
        report = ingest_answers(store, VICTIM, enumerate(seeded), now, 1445)
        assert report.accepted == VICTIM_SEEDED, report
        pairs = sorted(
            {
                (row["skillId"], row["agentId"])
                for _, rows in answers(
                    Dataset("pairs", 1, dataset.agents, dataset.skills, 20_000), now
                )
                for row in rows
            }
        )
        writer_ms = []
        for n in range(3):
            body = orjson.loads(flood_batch(f"writer-probe-{n}", pairs, _now_ms(), 10_000))
            started = time.perf_counter()
            ingest_answers(store, attacker, enumerate(body["answers"]), _now_ms(), 1445)
            writer_ms.append(round((time.perf_counter() - started) * 1000, 1))
        log(f"  a 10,000-answer batch, direct: {writer_ms} ms")
    finally:
        store.close()
    return Prepared(
        url=url,
        attacker=attacker,
        tokens=tokens,
        victim_seeded=VICTIM_SEEDED,
        purged_answers=purged.records,
        writer_batch_ms=writer_ms,
        flood_template=pairs,
    )


# HTTP ----------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    size: int


class Connection:
    """One keep-alive HTTP/1.1 connection, opened again after the server closes it."""

    def __init__(self, host: str, port: int, source: str | None = None) -> None:
        self.host, self.port, self.source = host, port, source
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None or self.writer.is_closing():
            self.close()
            local = (self.source, 0) if self.source else None
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, local_addr=local, limit=256 * 1024
            )
        return self.reader, self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, data: bytes, keep_body: bool = True) -> Reply:
        reader, writer = await self._open()
        try:
            writer.write(data)
            reply = await read_reply(reader, keep_body)
        except BaseException:
            self.close()
            raise
        if reply.headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return reply


async def read_reply(reader: asyncio.StreamReader, keep_body: bool) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0][9:12])
    headers = {}
    for line in lines[1:]:
        if b":" in line:
            name, value = line.split(b":", 1)
            headers[name.strip().lower()] = value.strip()
    parts: list[bytes] = []
    size = 0
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            length = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(length + 2)
            size += length
            if keep_body:
                parts.append(chunk[:-2])
            if length == 0:
                break
    else:
        remaining = int(headers.get(b"content-length", b"0"))
        while remaining:
            chunk = await reader.read(min(remaining, MIB))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", remaining)
            remaining -= len(chunk)
            size += len(chunk)
            if keep_body:
                parts.append(chunk)
    return Reply(status, headers, b"".join(parts), size)


def outcome_of(exc: BaseException) -> str:
    """A connection error's name in the tallies (next to the statuses)."""
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, asyncio.IncompleteReadError | asyncio.LimitOverrunError):
        return "closed"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    return f"error:{type(exc).__name__}"


def request_bytes(
    method: str, path: str, token: str | None = None, body: bytes = b"", content_type: str = ""
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    if method == "POST":
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def retry_after(reply: Reply) -> float:
    with contextlib.suppress(ValueError):
        return float(reply.headers.get(b"retry-after", b"1"))
    return 1.0


# statistics ----------------------------------------------------------------------------------


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {
        "count": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "max_ms": round(ordered[-1], 2),
    }


class Tally:
    """Outcomes (statuses, connection errors) and latencies of one kind of client."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.extra: Counter[str] = Counter()

    def add(self, outcome: str | int, ms: float | None = None) -> None:
        self.outcomes[str(outcome)] += 1
        if ms is not None:
            self.latencies[str(outcome)].append(ms)

    def summary(self, seconds: float) -> dict[str, Any]:
        total = sum(self.outcomes.values())
        return {
            "requests": total,
            "per_s": round(total / seconds, 1) if seconds else 0,
            "outcomes": dict(sorted(self.outcomes.items())),
            "latency_ms": {k: percentiles(v) for k, v in sorted(self.latencies.items())},
            **dict(self.extra),
        }


# the attackers -------------------------------------------------------------------------------


@dataclass
class AttackSpec:
    host: str
    port: int
    attacker: str
    read_token: str
    write_token: str
    kinds: dict[str, int]  # kind -> number of clients
    seconds: float
    nice: int
    big_paths: list[str]
    read_paths: list[str]
    flood_pairs: list[tuple[int, int]]
    login_sources: int
    process: int


def attack_process(spec: AttackSpec, inbox: Any, outbox: Any) -> None:
    """One attacker process: prepares, says ready, waits for the start time, attacks for
    ``spec.seconds`` and sends back its tallies."""
    with contextlib.suppress(OSError):
        os.nice(spec.nice)
    prepared = _Attack(spec)
    outbox.put(("ready", spec.process))
    start_at = inbox.get()
    outbox.put(("done", asyncio.run(prepared.run(start_at))))


class _Attack:
    def __init__(self, spec: AttackSpec) -> None:
        self.spec = spec
        self.tallies: dict[str, Tally] = {kind: Tally() for kind in spec.kinds}
        ingest = f"/api/account/{spec.attacker}/csat/answers"
        self.garbage = [
            request_bytes(
                "POST", ingest, spec.write_token, b"x\n" * 5_000_000, "application/x-ndjson"
            ),
            request_bytes(
                "POST", ingest, spec.write_token, b"1\n" * 5_000_000, "application/x-ndjson"
            ),
        ]

    async def run(self, start_at: float) -> dict[str, Any]:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        self.until = start_at + self.spec.seconds
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        workers = {
            "garbage_ingest": self.garbage_client,
            "login_flood": self.login_client,
            "stalled_reader": self.stalled_client,
            "big_reader": self.reader_client,
            "ingest_flood": self.flood_client,
        }
        tasks = [
            asyncio.create_task(workers[kind](n))
            for kind, clients in self.spec.kinds.items()
            for n in range(clients)
        ]
        await asyncio.sleep(max(0.0, self.until - time.monotonic()))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        used = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "cpu_s": round(used.ru_utime - cpu.ru_utime + used.ru_stime - cpu.ru_stime, 2),
            "tallies": {k: t.summary(self.spec.seconds) for k, t in self.tallies.items()},
        }

    async def _loop(
        self, tally: Tally, connection: Connection, make: Callable[[int], bytes], keep: bool = False
    ) -> None:
        """Send ``make(n)`` for n = 0, 1, … in a closed loop, at once after each reply."""
        n = 0
        try:
            while time.monotonic() < self.until:
                data = make(n)
                n += 1
                started = time.perf_counter()
                try:
                    reply = await connection.request(data, keep_body=keep)
                except asyncio.CancelledError:
                    tally.extra["abandoned_at_end"] += 1
                    raise
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                    tally.add(outcome_of(exc))
                    continue
                ms = (time.perf_counter() - started) * 1000
                tally.add(reply.status, ms)
                self.after(tally, reply)
        finally:
            connection.close()

    def after(self, tally: Tally, reply: Reply) -> None:
        if reply.status == 200 and reply.body.startswith(b'{"accepted"'):
            tally.extra["accepted"] += orjson.loads(reply.body)["accepted"]
        elif reply.status == 200:
            tally.extra["bytes_read"] += reply.size

    def _connection(self, source: str | None = None) -> Connection:
        return Connection(self.spec.host, self.spec.port, source)

    async def garbage_client(self, n: int) -> None:
        await self._loop(
            self.tallies["garbage_ingest"],
            self._connection(),
            lambda i: self.garbage[(i + n) % 2],
        )

    async def login_client(self, n: int) -> None:
        sources = self.spec.login_sources
        source = f"127.0.0.{2 + n % sources}" if sources > 1 else None
        path = f"/api/account/{self.spec.attacker}/login?v=1.3"

        def make(i: int) -> bytes:
            name = uuid.uuid4().hex
            if (i + n) % 5 == 0:
                name = "u" * 60_000 + name
            body = orjson.dumps({"username": name, "password": "not the password"})
            return request_bytes("POST", path, None, body, "application/json")

        await self._loop(self.tallies["login_flood"], self._connection(source), make)

    async def reader_client(self, n: int) -> None:
        paths = self.spec.read_paths
        await self._loop(
            self.tallies["big_reader"],
            self._connection(),
            lambda i: request_bytes("GET", paths[(n + i * 12) % len(paths)], self.spec.read_token),
        )

    async def flood_client(self, n: int) -> None:
        tag = f"flood-{self.spec.process}-{n}-{uuid.uuid4().hex[:8]}"
        path = f"/api/account/{self.spec.attacker}/csat/answers"

        def make(i: int) -> bytes:
            body = flood_batch(f"{tag}-{i}", self.spec.flood_pairs, _now_ms(), 10_000)
            return request_bytes("POST", path, self.spec.write_token, body, "application/json")

        await self._loop(self.tallies["ingest_flood"], self._connection(), make, keep=True)

    async def stalled_client(self, n: int) -> None:
        """Ask for a large body and never read it (a 4 KiB receive buffer): only the status
        line is read. Held until the server cuts it off; then again, with another body."""
        tally = self.tallies["stalled_reader"]
        loop = asyncio.get_running_loop()
        paths = self.spec.big_paths
        i = 0
        while time.monotonic() < self.until:
            path = paths[(n + i * 60) % len(paths)]
            i += 1
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            started = time.monotonic()
            holding = False
            try:
                await loop.sock_connect(sock, (self.spec.host, self.spec.port))
                await loop.sock_sendall(sock, request_bytes("GET", path, self.spec.read_token))
                head = b""
                while b"\r\n" not in head:
                    chunk = await loop.sock_recv(sock, 64)
                    if not chunk:
                        raise asyncio.IncompleteReadError(head, None)
                    head += chunk
                status = int(head[9:12])
                if status != 200:
                    tally.add(status)
                    sock.close()
                    await asyncio.sleep(0.5)
                    continue
                tally.add(200)
                holding = True
                while True:
                    await asyncio.sleep(0.25)
                    if _tcp_state(sock) != 1:  # no longer ESTABLISHED: the server ended it
                        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        how = "cut_off_reset" if err == errno.ECONNRESET else "cut_off_closed"
                        tally.add(how, (time.monotonic() - started) * 1000)
                        holding = False
                        break
            except asyncio.CancelledError:
                if holding:
                    tally.extra["held_to_end"] += 1
                raise
            except (OSError, asyncio.IncompleteReadError) as exc:
                tally.add(outcome_of(exc))
            finally:
                sock.close()


def _tcp_state(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    return struct.unpack("B", info[:1])[0]


# the victim ----------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float
    kind: str
    outcome: str
    ms: float | None


@dataclass
class Victim:
    host: str
    port: int
    read_token: str
    write_token: str
    query_pause: float = 0.02
    ingest_pause: float = 0.05
    samples: list[Sample] = field(default_factory=list)
    acknowledged: set[str] = field(default_factory=set)
    mismatched_replies: int = 0
    #: An answer sent again and again for 60 s without a 200 (the ingest loop stops there).
    given_up: str | None = None

    async def _request(self, connection: Connection, data: bytes) -> Reply:
        return await asyncio.wait_for(connection.request(data), VICTIM_TIMEOUT_S)

    async def run(self, until: float) -> None:
        await asyncio.gather(self.poll(until), self.ingest(until))

    async def poll(self, until: float) -> None:
        base = f"/operations/api/account/{VICTIM}/msgcsatdistribution?v=1&timeframe=1440"
        shapes = {"account": base, "skills_all": base + "&skillIds=all"}
        connection = Connection(self.host, self.port)
        n = 0
        while time.monotonic() < until:
            kind, path = list(shapes.items())[n % 2]
            n += 1
            at = time.monotonic()
            started = time.perf_counter()
            try:
                reply = await self._request(connection, request_bytes("GET", path, self.read_token))
            except (OSError, asyncio.IncompleteReadError) as exc:
                self.samples.append(Sample(at, "query_" + kind, outcome_of(exc), None))
                await asyncio.sleep(0.1)
                continue
            ms = (time.perf_counter() - started) * 1000
            self.samples.append(Sample(at, "query_" + kind, str(reply.status), ms))
            await asyncio.sleep(retry_after(reply) if reply.status == 429 else self.query_pause)
        connection.close()

    async def ingest(self, until: float) -> None:
        """One new answer at a time; one not acknowledged is sent again (same id) until it is,
        so the account's count must equal the acknowledged ids exactly."""
        path = f"/api/account/{VICTIM}/csat/answers"
        connection = Connection(self.host, self.port)
        n = 0
        while time.monotonic() < until:
            answer_id = f"victim-live-{n}"
            body = orjson.dumps(
                {
                    "answers": [
                        {
                            "id": answer_id,
                            "time": _now_ms(),
                            "skillId": 1 + n % 5,
                            "agentId": 1 + n % 20,
                            "score": 1 + n % 5,
                        }
                    ]
                }
            )
            data = request_bytes("POST", path, self.write_token, body, "application/json")
            n += 1
            deadline = time.monotonic() + 60
            while True:
                at = time.monotonic()
                started = time.perf_counter()
                try:
                    reply = await self._request(connection, data)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    self.samples.append(Sample(at, "ingest", outcome_of(exc), None))
                    wait = 0.1
                else:
                    ms = (time.perf_counter() - started) * 1000
                    self.samples.append(Sample(at, "ingest", str(reply.status), ms))
                    if reply.status == 200:
                        report = orjson.loads(reply.body)
                        if report["accepted"] + report["duplicates"] != 1:
                            self.mismatched_replies += 1
                        self.acknowledged.add(answer_id)
                        break
                    wait = retry_after(reply) if reply.status in (429, 503) else 0.1
                if time.monotonic() > deadline:
                    self.given_up = answer_id
                    connection.close()
                    return
                await asyncio.sleep(wait)
            await asyncio.sleep(self.ingest_pause)
        connection.close()


def victim_phase(samples: list[Sample], start: float, end: float) -> dict[str, Any]:
    chosen = [s for s in samples if start <= s.at < end]
    result: dict[str, Any] = {}
    for name, kinds in (
        ("query", ("query_account", "query_skills_all")),
        ("query_account", ("query_account",)),
        ("query_skills_all", ("query_skills_all",)),
        ("ingest", ("ingest",)),
    ):
        picked = [s for s in chosen if s.kind in kinds]
        outcomes = Counter(s.outcome for s in picked)
        ok = [s.ms for s in picked if s.outcome == "200" and s.ms is not None]
        every = [s.ms for s in picked if s.ms is not None]
        result[name] = {
            "outcomes": dict(sorted(outcomes.items())),
            "latency_200": percentiles(ok),
            "latency_all": percentiles(every),
        }
    return result


# the server's resources ----------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a ``serve --workers N``'s workers), from /proc."""
    pids = [pid]
    for parent in pids:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{parent}/task"):
                with contextlib.suppress(OSError):
                    children = Path(f"/proc/{parent}/task/{task}/children").read_text()
                    pids += [int(child) for child in children.split()]
    return pids


def workers_of(pid: int) -> list[int]:
    """The processes that serve requests: the workers under a supervisor (not the helper
    process multiprocessing starts to track shared memory), else ``pid``."""
    workers = []
    for child in process_tree(pid)[1:]:
        with contextlib.suppress(OSError):
            if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
    return workers or [pid]


class Sampler(threading.Thread):
    """RSS, open descriptors and CPU time of the server (summed over its processes: the
    supervisor and its workers, each worker's memory its own), every ``period`` seconds."""

    def __init__(self, pid: int, period: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.points: list[tuple[float, float, int, float]] = []  # at, rss MB, fds, cpu s
        self._stop_event = threading.Event()
        self._ticks = os.sysconf("SC_CLK_TCK")
        #: Each process's RSS at the sample with the highest sum: pid -> its anonymous,
        #: file-backed and shared-memory parts (MB). Shared pages (the workers' shared
        #: segments, the libraries) count once per process that maps them, as in the sum.
        self.peak_parts: dict[int, dict[str, float]] = {}
        self._parts: dict[int, dict[str, float]] = {}
        self._peak = 0.0

    def read(self) -> tuple[float, float, int, float]:
        rss, fds, cpu = 0.0, 0, 0.0
        self._parts = {}
        for pid in process_tree(self.pid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                one = self.read_one(pid)
                rss, fds, cpu = rss + one[0], fds + one[1], cpu + one[2]
        return time.monotonic(), rss, fds, cpu

    def read_one(self, pid: int) -> tuple[float, int, float]:
        """RSS (MB), open descriptors, CPU seconds of one process."""
        status = Path(f"/proc/{pid}/status").read_text()
        rss = int(status.split("VmRSS:")[1].split()[0]) / 1024
        self._parts[pid] = {
            part: round(int(status.split(f"{field}:")[1].split()[0]) / 1024, 1)
            for part, field in (("anon", "RssAnon"), ("file", "RssFile"), ("shmem", "RssShmem"))
        }
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / self._ticks  # utime, stime
        return rss, fds, cpu

    def run(self) -> None:
        while not self._stop_event.is_set():
            with contextlib.suppress(OSError, IndexError, ValueError):
                point = self.read()
                if point[1] > self._peak:
                    self._peak, self.peak_parts = point[1], self._parts
                self.points.append(point)
            self._stop_event.wait(self.period)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def window(self, start: float, end: float) -> dict[str, Any]:
        points = [p for p in self.points if start <= p[0] < end]
        if not points:
            return {}
        seconds = points[-1][0] - points[0][0]
        cpu = points[-1][3] - points[0][3]
        return {
            "rss_mb": {
                "start": round(points[0][1], 1),
                "peak": round(max(p[1] for p in points), 1),
                "end": round(points[-1][1], 1),
            },
            "open_fds": {
                "start": points[0][2],
                "peak": max(p[2] for p in points),
                "end": points[-1][2],
            },
            "cpu_s": round(cpu, 2),
            "cpu_share": round(cpu / seconds, 2) if seconds else None,
        }


# one run -------------------------------------------------------------------------------------


def big_paths(attacker: str, quick: bool) -> tuple[list[str], list[str]]:
    """Large bodies, each different: 60 for the stalled sockets, 12+ for the readers."""
    base = f"/operations/api/account/{attacker}/msgcsatdistribution?v=1&skillIds=all&agentIds=all"
    if quick:
        stalled = [f"{base}&interval=5&timeframe={1440 - 5 * i}" for i in range(60)]
        readers = [f"{base}&interval=5&timeframe={1140 - 5 * i}" for i in range(24)]
        return stalled, readers
    # The finding's own query (interval=5 over 1440 minutes) and its neighbours are over the
    # 250,000-entry cap on large (a 400, once the sums are done); up to about 6 h they are
    # admitted, 18-31 MB each. Half the sockets ask for each.
    stalled = [
        f"{base}&interval=5&timeframe={1440 - 5 * (i // 2)}"
        if i % 2 == 0
        else f"{base}&interval=5&timeframe={355 - 5 * (i // 2)}"
        for i in range(60)
    ]
    readers = [
        f"{base}&interval=60&timeframe={1440 - 60 * i}"
        if i % 2 == 0
        else f"{base}&timeframe={1440 - 5 * i}"
        for i in range(24)
    ]
    return stalled, readers


#: Every attack and its number of clients (sockets for the stalled readers).
ATTACKS = {
    "garbage_ingest": 4,
    "login_flood": 40,
    "stalled_reader": 60,
    "big_reader": 12,
    "ingest_flood": 8,
}


def attack_plan(processes: int, chosen: list[str]) -> list[dict[str, int]]:
    """The attacks each attacker process runs (two: the request floods apart from the uploads)."""
    kinds = {kind: ATTACKS[kind] for kind in chosen}
    groups = (
        [kinds]
        if processes == 1
        else [
            {
                k: v
                for k, v in kinds.items()
                if k in ("login_flood", "stalled_reader", "big_reader")
            },
            {k: v for k, v in kinds.items() if k in ("garbage_ingest", "ingest_flood")},
        ]
    )
    return [group for group in groups if group]


def metrics_of(url: str) -> dict[str, Any]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    statuses: Counter[str] = Counter()
    limited: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name == "csatdist_http_requests_total":
                statuses[sample.labels["status"]] += int(sample.value)
            elif sample.name == "csatdist_rate_limited_total":
                limited[sample.labels["limit"]] = sample.value
    return {"requests_by_status": dict(sorted(statuses.items())), "rate_limited": limited}


def victim_total(url: str, token: str) -> dict[str, int]:
    import httpx

    path = f"{url}/operations/api/account/{VICTIM}/msgcsatdistribution"
    headers = {"Authorization": f"Bearer {token}"}
    account = httpx.get(path, params={"v": 1, "timeframe": 1440}, headers=headers, timeout=60)
    skills = httpx.get(
        path, params={"v": 1, "timeframe": 1440, "skillIds": "all"}, headers=headers, timeout=60
    )
    assert account.status_code == skills.status_code == 200, (account.text, skills.text)
    return {
        "account_level": account.json()["metricsTotals"]["total_answers"],
        "skills_all": skills.json()["skillsMetricsPerAgent"]["metricsTotals"]["total_answers"],
    }


def store_total(url: str, account: str) -> int:
    from csatdist.query import parse_query
    from csatdist.service import query_distribution
    from csatdist.store import open_store

    store = open_store(url)
    try:
        body = query_distribution(
            store, account, parse_query({"v": "1", "timeframe": "1440"}), _now_ms()
        ).body
    finally:
        store.close()
    return int(body["metricsTotals"]["total_answers"])


def error_log_lines(log_path: Path) -> list[str]:
    lines = log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if '"level":"error"' in line or "Traceback" in line]


def one_run(
    args: argparse.Namespace, url: str, dataset: Dataset, tmp: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    from tests.helpers import start_server

    prepared = prepare(url, dataset, log)
    tokens = prepared.tokens
    env = {}
    if args.quick:  # a cut-off within a short attack
        env["CSATDIST_RESPONSE_SEND_TIMEOUT_SECONDS"] = "3"
    env["CSATDIST_WORKERS"] = str(args.workers)
    env.update(item.split("=", 1) for item in args.server_env)
    log_path = tmp / "server.log"
    server = start_server(url, log_path, "--log-level", "warning", env=env)
    pid = server.process.pid
    host, port = server.url.removeprefix("http://").split(":")
    result: dict[str, Any] = {
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "writer_batch_10000_direct_ms": prepared.writer_batch_ms,
        "purged_before_start": prepared.purged_answers,
        "server_env": env,
        "response_cache_mb": int(env.get("CSATDIST_RESPONSE_CACHE_MB", "64")),
        # SQLite's writer keeps up to this many pages of a batch in memory, by design.
        "store_cache_mb": WRITER_CACHE_KIB // 1024 if url.startswith("sqlite") else 0,
    }
    sampler = Sampler(pid)
    context = multiprocessing.get_context("spawn")
    processes = []
    try:
        import httpx

        # Warm: both accounts' counters loaded (what any first query of theirs does) in every
        # worker, so the start RSS already holds what stays resident whatever happens next.
        # Each client's connection stays open while the next opens: a new connection goes to
        # the worker with the fewest, so each client reaches another worker.
        started = time.perf_counter()
        workers = workers_of(pid)
        result["server_workers"] = len(workers)
        clients = [httpx.Client(timeout=120) for _ in workers]
        try:
            for client in clients:
                for token, account in (
                    (tokens["attacker_read"], prepared.attacker),
                    (tokens["victim_read"], VICTIM),
                ):
                    warm = client.get(
                        f"{server.url}/operations/api/account/{account}/msgcsatdistribution",
                        params={"v": 1, "timeframe": 1440, "skillIds": "all"},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    assert warm.status_code == 200, warm.text
        finally:
            for client in clients:
                client.close()
        result["warm_seconds"] = round(time.perf_counter() - started, 2)
        attacker_before = store_total(url, prepared.attacker)
        result["attacker_counters_mb"] = {"start": counters_mb(url, prepared.attacker)}

        stalled, readers = big_paths(prepared.attacker, args.quick)
        inboxes, outbox = [], context.Queue()
        for number, kinds in enumerate(attack_plan(args.attack_processes, args.attacks)):
            spec = AttackSpec(
                host=host,
                port=int(port),
                attacker=prepared.attacker,
                read_token=tokens["attacker_read"],
                write_token=tokens["attacker_write"],
                kinds=kinds,
                seconds=args.seconds,
                nice=args.attacker_nice,
                big_paths=stalled,
                read_paths=readers,
                flood_pairs=prepared.flood_template,
                login_sources=args.login_sources,
                process=number,
            )
            inbox = context.Queue()
            process = context.Process(target=attack_process, args=(spec, inbox, outbox))
            process.start()
            processes.append(process)
            inboxes.append(inbox)
        for _ in processes:
            assert outbox.get(timeout=120)[0] == "ready"
        # Seconds after the warm-up (the attackers' processes start meanwhile): its garbage
        # freed, the idle fold done, as at the end after the recovery.
        result["rss_trimmed_start"] = rss_after_trim(pid, tmp)

        sampler.start()
        time.sleep(0.5)
        begin = time.monotonic()
        attack_start = begin + args.baseline
        attack_end = attack_start + args.seconds
        end = attack_end + args.recovery
        for inbox in inboxes:
            inbox.put(attack_start)
        profiler = start_profiler(args, pid, attack_start)
        victim = Victim(host, int(port), tokens["victim_read"], tokens["victim_write"])
        written_before = disk_writes_mb(pid)
        asyncio.run(victim.run(end))
        result["server_disk_writes_mb"] = round(disk_writes_mb(pid) - written_before, 1)
        attack_results = [outbox.get(timeout=120)[1] for _ in processes]
        if profiler is not None:
            profiler.wait(timeout=60)
        time.sleep(0.3)
        sampler.stop()
        result["load_after"] = [round(x, 2) for x in os.getloadavg()]

        phases = {
            "baseline": (begin, attack_start),
            "attack": (attack_start, attack_end),
            "recovery": (attack_end, end),
        }
        result["phases"] = {
            name: {
                "seconds": round(b - a, 1),
                "victim": victim_phase(victim.samples, a, b),
                "server": sampler.window(a, b + (0.5 if name == "recovery" else 0)),
            }
            for name, (a, b) in phases.items()
        }
        attackers: dict[str, Any] = {}
        for part in attack_results:
            attackers.update(part["tallies"])
        result["phases"]["attack"]["attackers"] = attackers
        result["attacker_cpu_s"] = [part["cpu_s"] for part in attack_results]
        everything = sampler.window(begin - 1, end + 1)
        result["resources"] = {
            "rss_start_mb": everything["rss_mb"]["start"],
            "rss_peak_mb": everything["rss_mb"]["peak"],
            "rss_end_mb": everything["rss_mb"]["end"],
            "rss_peak_parts_mb": {str(pid): parts for pid, parts in sampler.peak_parts.items()},
            "fds_start": everything["open_fds"]["start"],
            "fds_peak": everything["open_fds"]["peak"],
            "fds_end": everything["open_fds"]["end"],
            "timeline_1s": [
                [round(p[0] - begin, 1), round(p[1], 1), p[2], round(p[3], 2)]
                for p in sampler.points[::10]
            ],
        }
        alive = server.process.poll() is None
        health = httpx.get(server.url + "/healthz", timeout=10).status_code if alive else None
        result["server_alive"] = alive and health == 200
        result["metrics"] = metrics_of(server.url)
        counted = victim_total(server.url, tokens["victim_read"])
        result["rss_trimmed_end"] = rss_after_trim(pid, tmp) if alive else None
        database = url.removeprefix("sqlite:///") if url.startswith("sqlite") else None
        # Every connection but the writer's is a reader, its page cache kept while it is open.
        result["sqlite_readers_end"] = (
            max(0, sqlite_connections(pid, database) - len(workers)) if database and alive else 0
        )
        if args.inspect_memory:
            result["memory_after"] = inspect_memory(workers[0])  # the first worker only
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        server.stop()
    expected = prepared.victim_seeded + len(victim.acknowledged)
    result["victim_counts"] = {
        "seeded": prepared.victim_seeded,
        "acknowledged": len(victim.acknowledged),
        "expected": expected,
        "http_account_level": counted["account_level"],
        "http_skills_all": counted["skills_all"],
        "store": store_total(url, VICTIM),
        "replies_not_counting_one": victim.mismatched_replies,
        "given_up": victim.given_up,
    }
    result["attacker_counters_mb"]["end"] = counters_mb(url, prepared.attacker)
    accepted = attackers.get("ingest_flood", {}).get("accepted", 0)
    result["attacker_counts"] = {
        "before": attacker_before,
        "accepted_in_200_replies": accepted,
        "after": store_total(url, prepared.attacker),
    }
    errors = error_log_lines(log_path)
    result["server_error_log"] = {"lines": len(errors), "first": errors[:5]}
    result["verdict"] = verdict(result)
    return result


def disk_writes_mb(pid: int) -> float:
    """What the server's processes have caused to be written to storage so far
    (``/proc/PID/io``), MB."""
    written = 0
    for one in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{one}/io").read_text().splitlines():
                if line.startswith("write_bytes:"):
                    written += int(line.split()[1])
    return written / MIB


@functools.cache
def gdb_calls_work() -> bool:
    """Whether gdb can call functions in a Python process here and leave it running: tried on
    a throwaway interpreter (taking and giving back its GIL, as the memory readings do), which
    must then still answer. A call whose registers gdb cannot restore ("Couldn't write
    extended state status", gdb 13 on Linux 6.18) leaves the process holding its GIL, and a
    server so treated accepts no connection again."""
    import subprocess

    gdb = shutil.which("gdb")
    if gdb is None:
        return False
    probe = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.readline(); print('alive', flush=True)"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)  # the interpreter is up and waiting on its stdin
        called = subprocess.run(
            [
                gdb,
                "-p",
                str(probe.pid),
                "-batch",
                *("-ex", "call (int) PyGILState_Ensure()"),
                *("-ex", "call (void) PyGILState_Release($1)"),
                *("-ex", "call (int) getpid()"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        clean = (
            called.returncode == 0
            and re.search(rf"^\$2 = {probe.pid}$", called.stdout, re.MULTILINE) is not None
            and "Couldn't" not in called.stderr + called.stdout
        )
        assert probe.stdin is not None
        probe.stdin.write("\n")
        probe.stdin.flush()
        answered, _ = probe.communicate(timeout=5)
        return clean and answered.strip() == "alive"
    except (subprocess.TimeoutExpired, OSError):
        return False
    finally:
        probe.kill()
        probe.wait()


def rss_after_trim(pid: int, tmp: Path) -> dict[str, float] | None:
    """:func:`rss_after_trim_one` summed over the server's processes (each worker, and the
    supervisor of several); None when one reading fails."""
    readings = [rss_after_trim_one(one, tmp) for one in process_tree(pid)]
    if any(reading is None for reading in readings):
        return None
    return {
        key: round(sum(reading[key] for reading in readings if reading), 1)
        for key in ("rss_mb", "obmalloc_free_mb", "in_use_mb")
    }


def rss_after_trim_one(pid: int, tmp: Path) -> dict[str, float] | None:
    """The process's RSS (MB) right after a full garbage collection and glibc's
    ``malloc_trim(0)``, called in it through gdb, and what CPython's small-object allocator
    holds free in it then (``obmalloc_free_mb``): garbage in reference cycles (a refused
    request's exception and its traceback) waits for the collector's rare full passes, and
    freed memory the heaps keep waits for the server's own trim every 10 s; both done first.
    obmalloc's free memory cannot be given back that way: it returns a 1 MiB arena only once
    every object in it is freed, and keeps the freed 16 KiB pools of the arenas still in use,
    resident (read from ``_PyObject_DebugMallocStats``: its unused pools and available
    blocks). ``in_use_mb`` is RSS less that, what two readings compare. None when gdb is
    missing, fails, or cannot be trusted here (:func:`gdb_calls_work`)."""
    import subprocess

    gdb = shutil.which("gdb")
    if gdb is None or not gdb_calls_work():
        return None
    stats = tmp / f"obmalloc-{time.monotonic_ns()}.txt"
    try:
        called = subprocess.run(
            [
                gdb,
                "-p",
                str(pid),
                "-batch",
                *("-ex", "call (int) PyGILState_Ensure()"),
                *("-ex", "call (long) PyGC_Collect()"),
                *("-ex", f'call (void *) fopen("{stats}", "w")'),
                *("-ex", "call (int) _PyObject_DebugMallocStats($3)"),
                *("-ex", "call (int) fclose($3)"),
                *("-ex", "call (void) PyGILState_Release($1)"),
                *("-ex", "call (int) malloc_trim(0)"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    if called.returncode != 0 or not re.search(r"^\$6 = [01]$", called.stdout, re.MULTILINE):
        return None
    rss = Sampler(pid).read_one(pid)[0]
    free = obmalloc_free_mb(stats.read_text()) if stats.exists() else None
    if free is None:
        return None
    return {
        "rss_mb": round(rss, 1),
        "obmalloc_free_mb": round(free, 1),
        "in_use_mb": round(rss - free, 1),
    }


def obmalloc_free_mb(stats: str) -> float | None:
    """The free memory CPython's small-object allocator holds in its arenas (MB), from the
    text of ``_PyObject_DebugMallocStats``: unused pools and available blocks in used ones."""
    pools = re.search(r"^\d+ unused pools \* \d+ bytes\s+=\s+([\d,]+)$", stats, re.MULTILINE)
    blocks = re.search(r"^# bytes in available blocks\s+=\s+([\d,]+)$", stats, re.MULTILINE)
    if pools is None or blocks is None:
        return None
    return (int(pools[1].replace(",", "")) + int(blocks[1].replace(",", ""))) / MIB


def counters_mb(url: str, account: str) -> float:
    """Memory (MB) ``account``'s counters take once loaded, as a server loads them (an
    :class:`~csatdist.aggregates.AggregateCache`), here under tracemalloc: what a server keeps
    of the account's data, which grows with the answers the attacker's flood adds."""
    import tracemalloc

    from csatdist.aggregates import AggregateCache
    from csatdist.store import open_store

    store = open_store(url)
    try:
        cache = AggregateCache(store)
        tracemalloc.start()
        try:
            with cache.current(account, _now_ms()):
                size = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    finally:
        store.close()
    return round(size / MIB, 1)


def sqlite_connections(pid: int, database: str) -> int:
    """Connections the server's processes have open on the SQLite file ``database`` (one
    descriptor each)."""
    target = os.path.realpath(database)
    count = 0
    for one in process_tree(pid):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{one}/fd"):
                with contextlib.suppress(OSError):
                    count += os.readlink(f"/proc/{one}/fd/{fd}") == target
    return count


def smaps_summary(pid: int) -> dict[str, float]:
    """Resident MB of the process by kind of mapping: the main heap, glibc's per-thread
    arenas (64 MiB reservations), 1 MiB anonymous maps (CPython's object arenas), other
    anonymous maps (large buffers: NumPy arrays, bodies), and files."""
    sizes: Counter[str] = Counter()
    kind = "file"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            size_kb = (end - start) // 1024
            name = fields[5] if len(fields) > 5 else ""
            if name == "[heap]":
                kind = "heap"
            elif name:
                kind = "file" if name.startswith("/") else "other"
            elif size_kb == 1024:
                kind = "anon_1MiB"
            elif size_kb in (65536, 131072) or size_kb % 65536 == 0:
                kind = "anon_64MiB_aligned"
            else:
                kind = "anon_other"
        elif fields[0] == "Rss:":
            sizes[kind] += int(fields[1])
    return {k: round(v / 1024, 1) for k, v in sorted(sizes.items())}


def inspect_memory(pid: int) -> dict[str, Any]:
    """Where the server's resident memory is after the run, and how much of it glibc gives
    back when asked (``malloc_trim(0)`` through gdb): freed but retained memory versus live
    objects."""
    import subprocess

    before = smaps_summary(pid)
    rss_before = Sampler(pid).read()[1]
    if not gdb_calls_work():
        return {"rss_mb_before_trim": round(rss_before, 1), "by_mapping_before_trim": before}
    trim = subprocess.run(
        ["gdb", "-p", str(pid), "-batch", "-ex", "call (int) malloc_trim(0)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    time.sleep(0.5)
    return {
        "rss_mb_before_trim": round(rss_before, 1),
        "by_mapping_before_trim": before,
        "rss_mb_after_malloc_trim": round(Sampler(pid).read()[1], 1),
        "by_mapping_after_trim": smaps_summary(pid),
        "gdb": trim.stdout.strip().splitlines()[-1:]
        if trim.returncode == 0
        else trim.stderr[-300:],
    }


def start_profiler(args: argparse.Namespace, pid: int, at: float) -> Any:
    """py-spy sampling the server through the attack phase (``--profile DIR``), in the
    background; it writes a flame graph and raw stacks with thread ids (for grouping)."""
    if args.profile is None:
        return None
    import subprocess

    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    args.profile.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%H%M%S")
    mode = ["--gil"] if args.profile_gil else []
    if len(process_tree(pid)) > 1:
        mode.append("--subprocesses")  # the workers, under their supervisor
    name = f"attack-{stamp}{'-gil' if args.profile_gil else ''}"
    command = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(args.seconds) - 2),
        "--rate",
        "50",
        "--nonblocking",
        "--threads",
        *mode,
        "--format",
        "raw",
        "-o",
        str(args.profile / f"{name}.txt"),
    ]
    delay = max(0.0, at + 1 - time.monotonic())
    return subprocess.Popen(["sh", "-c", f'sleep {delay:.2f}; exec "$0" "$@"', *command])


def recovery_check(result: dict[str, Any]) -> dict[str, Any]:
    """Memory in use at the end within 10 % of the start plus what is kept by design (see the
    module's docstring): each read right after a collection and a trim, less what CPython's
    small-object allocator holds free then, when gdb can call them; else RSS samples."""
    resources = result["resources"]
    trimmed = (result.get("rss_trimmed_start"), result.get("rss_trimmed_end"))
    method = "in use: RSS after malloc_trim less obmalloc's free memory"
    if trimmed[0] is not None and trimmed[1] is not None:
        start, end = trimmed[0]["in_use_mb"], trimmed[1]["in_use_mb"]
    else:
        start, end, method = resources["rss_start_mb"], resources["rss_end_mb"], "samples"
    # The response cache may keep up to its size of the attacker's bodies (a quarter per
    # account), SQLite's writer a page cache filled by their batches, each reader its own:
    # all bounded by the code, and counted as part of the start; and the attacker's counters
    # hold the answers its flood added (measured by loading them before and after).
    readers_mb = round(result.get("sqlite_readers_end", 0) * READER_CACHE_KIB / 1024, 1)
    counters = result.get("attacker_counters_mb", {})
    grown_mb = round(max(0.0, counters.get("end", 0.0) - counters.get("start", 0.0)), 1)
    # Two accounts (the attacker's and the victim's) hold responses, each at most its share.
    responses_mb = min(result["response_cache_mb"], 2 * result["response_cache_mb"] / ACCOUNT_SHARE)
    # Each worker has its own response cache, writer and copy of the counters.
    workers = result.get("server_workers", 1)
    kept = workers * (responses_mb + result["store_cache_mb"] + grown_mb) + readers_mb
    return {
        "kind": "guarantee",
        "holds": end <= RSS_RECOVERY * (start + kept),
        "measured": {
            "method": method,
            "start": start,
            "end": end,
            "response_cache_mb": result["response_cache_mb"],
            "responses_two_accounts_mb": responses_mb,
            "store_cache_mb": result["store_cache_mb"],
            "sqlite_readers": result.get("sqlite_readers_end", 0),
            "sqlite_readers_cache_mb": readers_mb,
            "attacker_counters_grown_mb": grown_mb,
            "server_workers": workers,
            "untrimmed_start_end": [resources["rss_start_mb"], resources["rss_end_mb"]],
            # RSS as the system sees it, and obmalloc's free part of it, at each reading.
            "trimmed_start": trimmed[0],
            "trimmed_end": trimmed[1],
        },
    }


def verdict(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Guarantees hold or not (``holds``: exit 1 when one is False); targets are ``met`` or
    not, reported only."""
    client_5xx: Counter[str] = Counter()
    for phase in result["phases"].values():
        tallies = [phase["victim"][kind]["outcomes"] for kind in ("query", "ingest")]
        tallies += [t["outcomes"] for t in phase.get("attackers", {}).values()]
        for outcomes in tallies:
            for outcome, count in outcomes.items():
                if outcome.startswith("5") and outcome != "503":
                    client_5xx[outcome] += count
    metrics_500 = result["metrics"]["requests_by_status"].get("500", 0)
    timeouts = sum(
        phase["victim"][kind]["outcomes"].get("timeout", 0)
        for phase in result["phases"].values()
        for kind in ("query", "ingest")
    )
    counts = result["victim_counts"]
    resources = result["resources"]
    attack = result["phases"]["attack"]["victim"]
    query_p99 = attack["query"]["latency_200"].get("p99_ms")
    ingest_p99 = attack["ingest"]["latency_200"].get("p99_ms")
    return {
        "no 500 responses": {
            "kind": "guarantee",
            "holds": not client_5xx
            and metrics_500 == 0
            and not result["server_error_log"]["lines"],
            "measured": {
                "clients_5xx": dict(client_5xx),
                "metrics_500": metrics_500,
                "error_log_lines": result["server_error_log"]["lines"],
            },
        },
        "victim counts exact": {
            "kind": "guarantee",
            "holds": counts["expected"]
            == counts["http_account_level"]
            == counts["http_skills_all"]
            == counts["store"]
            and counts["replies_not_counting_one"] == 0,
            "measured": {k: counts[k] for k in ("expected", "http_account_level", "store")},
        },
        "server stays up and answers the victim": {
            "kind": "guarantee",
            "holds": result["server_alive"] and not timeouts and counts["given_up"] is None,
            "measured": {"victim_timeouts": timeouts, "answer_given_up": counts["given_up"]},
        },
        "RSS peak <= 1 GB": {
            "kind": "guarantee",
            "holds": resources["rss_peak_mb"] <= RSS_CEILING_MB,
            "measured": resources["rss_peak_mb"],
        },
        RSS_RECOVERY_CHECK: recovery_check(result),
        "victim query p99 <= 50 ms under attack": {
            "kind": "target",
            "met": query_p99 is not None and query_p99 <= QUERY_TARGET_MS,
            "measured": query_p99,
        },
        "victim ingest p99 <= 100 ms under attack": {
            "kind": "target",
            "met": ingest_p99 is not None and ingest_p99 <= INGEST_TARGET_MS,
            "measured": ingest_p99,
        },
    }


@contextlib.contextmanager
def run_database(
    args: argparse.Namespace,
    backend: str,
    dataset: Dataset,
    tmp: Path,
    log: Callable[[str], None],
) -> Iterator[tuple[str, dict[str, Any]]]:
    if backend == "sqlite":
        cached, meta = cached_database(dataset.name, args.cache_dir, args.cache_max_age_hours, log)
        target = tmp / "abuse.db"
        started = time.perf_counter()
        copy_database(cached, target)
        meta["copy_seconds"] = round(time.perf_counter() - started, 1)
        yield f"sqlite:///{target}", meta
        return
    from tests.helpers import postgres_schema

    with postgres_schema() as url:
        started = time.perf_counter()
        total = load_dataset(url, dataset, log)
        yield (
            url,
            {
                "dataset": dataset.name,
                "answers": total,
                "load_seconds": round(time.perf_counter() - started, 1),
            },
        )


# reporting -----------------------------------------------------------------------------------


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs, with the spread (min, max), of the figures that matter."""
    figures: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for phase, data in run["phases"].items():
            for kind in ("query", "ingest"):
                latency = data["victim"][kind]["latency_200"]
                for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
                    if key in latency:
                        figures[f"{phase}.victim_{kind}.{key}"].append(latency[key])
            if data["server"]:
                figures[f"{phase}.server_cpu_share"].append(data["server"]["cpu_share"])
        for key in ("rss_start_mb", "rss_peak_mb", "rss_end_mb", "fds_peak"):
            figures[key].append(run["resources"][key])
        flood = run["phases"]["attack"]["attackers"].get("ingest_flood", {})
        if "200" in flood.get("latency_ms", {}):
            figures["attack.ingest_flood_200.p50_ms"].append(flood["latency_ms"]["200"]["p50_ms"])
            figures["attack.ingest_flood_200.p99_ms"].append(flood["latency_ms"]["200"]["p99_ms"])
        figures["writer_batch_10000_direct_ms"].append(
            statistics.median(run["writer_batch_10000_direct_ms"])
        )
    return {
        name: {"median": round(statistics.median(v), 2), "min": min(v), "max": max(v)}
        for name, v in figures.items()
    }


def print_run(run: dict[str, Any], number: int) -> None:
    print(f"\n== run {number}: load {run['load_before']} -> {run['load_after']}")
    query, ingest = "victim query p50/p90/p99/max ms", "victim ingest p50/p90/p99/max ms"
    print(f"{'phase':9} {query:34} {ingest:34} server cpu  RSS start/peak/end MB")
    for name, phase in run["phases"].items():
        cells = []
        for kind in ("query", "ingest"):
            lat = phase["victim"][kind]["latency_200"]
            cells.append(
                "/".join(
                    f"{lat.get(k, float('nan')):.1f}"
                    for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")
                )
                + f" (n={lat.get('count', 0)})"
            )
        server = phase["server"]
        print(
            f"{name:9} {cells[0]:34} {cells[1]:34} {server.get('cpu_share', 0):>10} "
            f" {server['rss_mb']['start']}/{server['rss_mb']['peak']}/{server['rss_mb']['end']}"
        )
    for name, phase in run["phases"].items():
        victim = {k: phase["victim"][k]["outcomes"] for k in ("query", "ingest")}
        print(f"  {name:9} victim statuses {victim}")
    for kind, tally in run["phases"]["attack"].get("attackers", {}).items():
        lat = tally["latency_ms"].get("200", {})
        extra = {
            k: v
            for k, v in tally.items()
            if k not in ("requests", "per_s", "outcomes", "latency_ms")
        }
        print(
            f"  attacker {kind:15} {tally['per_s']:>7}/s {tally['outcomes']}"
            + (
                f" 200: p50 {lat['p50_ms']} p99 {lat['p99_ms']} max {lat['max_ms']} ms"
                if lat
                else ""
            )
            + (f" {extra}" if extra else "")
        )
    print(f"  victim counts {run['victim_counts']}")
    print(f"  attacker counts {run['attacker_counts']}; attacker CPU s {run['attacker_cpu_s']}")
    print(f"  writer, one 10,000-answer batch direct: {run['writer_batch_10000_direct_ms']} ms")
    print(f"  server's disk writes over the phases: {run.get('server_disk_writes_mb')} MB")
    for name, check in run["verdict"].items():
        if check["kind"] == "guarantee":
            state = "holds" if check["holds"] else "BROKEN"
        else:
            state = "met" if check["met"] else "NOT MET"
        print(f"  [{state:7}] {name}: {check.get('measured', '')}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="large", choices=("small", "large"))
    parser.add_argument(
        "--backends", default="sqlite", help="Comma-separated: sqlite, postgresql, or both."
    )
    parser.add_argument("--seconds", type=float, default=45, help="Attack phase.")
    parser.add_argument("--baseline", type=float, default=12)
    parser.add_argument("--recovery", type=float, default=15)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI: a 30,000-answer dataset, 8 s of attack, guarantees only.",
    )
    parser.add_argument("--attack-processes", type=int, default=2, choices=(1, 2))
    parser.add_argument(
        "--attacks",
        default=",".join(ATTACKS),
        help="Comma-separated subset of the attacks, to find which one costs the victim what.",
    )
    parser.add_argument("--attacker-nice", type=int, default=10)
    parser.add_argument(
        "--login-sources",
        type=int,
        default=1,
        help="Source addresses (127.0.0.2…) the login flood spreads over; 1 = 127.0.0.1.",
    )
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--cache-max-age-hours", type=float, default=3.0)
    parser.add_argument("--output", type=Path, default=RESULTS / "abuse.json")
    parser.add_argument(
        "--append",
        action="store_true",
        help="Add these runs to those of the same backend in --output (same settings).",
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="Record the server with py-spy into DIR."
    )
    parser.add_argument("--profile-gil", action="store_true", help="Only samples holding the GIL.")
    parser.add_argument(
        "--inspect-memory",
        action="store_true",
        help="After the run: the server's memory by mapping, and after glibc's malloc_trim (gdb).",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="Worker processes of the server (CSATDIST_WORKERS): 0, serve's default, is one "
        "per CPU core; memory is summed over them, and what each keeps by design counted once "
        "per worker.",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="An environment variable for the server (experiments: MALLOC_ARENA_MAX=2, …).",
    )
    args = parser.parse_args()
    args.attacks = args.attacks.split(",")
    if bad := set(args.backends.split(",")) - {"sqlite", "postgresql"}:
        parser.error(f"unknown backends: {', '.join(sorted(bad))}")
    if unknown := set(args.attacks) - set(ATTACKS):
        parser.error(f"unknown attacks: {', '.join(sorted(unknown))}; known: {', '.join(ATTACKS)}")
    if args.quick:
        args.seconds, args.baseline, args.recovery = min(args.seconds, 8), 3, 4
    dataset = QUICK if args.quick else DATASETS[args.dataset]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    from bench.run import machine

    broken: list[str] = []
    for backend in args.backends.split(","):
        runs = []
        for number in range(1, args.repeat + 1):
            log(f"== run {number}/{args.repeat}: {dataset.name} on {backend}")
            with tempfile.TemporaryDirectory() as tmp_dir:
                tmp = Path(tmp_dir)
                with run_database(args, backend, dataset, tmp, log) as (url, database):
                    run = one_run(args, url, dataset, tmp, log)
            run["database"] = database
            runs.append(run)
            print_run(run, number)
            broken += [
                f"{backend} run {number}: {name}"
                for name, check in run["verdict"].items()
                if check["kind"] == "guarantee" and not check["holds"]
            ]
        write_result(args, backend, dataset, runs, machine())
    if broken:
        print("guarantees broken: " + "; ".join(broken), file=sys.stderr)
        sys.exit(1)


def write_result(
    args: argparse.Namespace,
    backend: str,
    dataset: Dataset,
    runs: list[dict[str, Any]],
    machine: dict[str, Any],
) -> None:
    """The runs of one backend, with their medians, into ``--output`` (other backends kept)."""
    result = {
        "dataset": dataset.name,
        "backend": backend,
        "machine": machine,
        "config": {
            "seconds": {
                "baseline": args.baseline,
                "attack": args.seconds,
                "recovery": args.recovery,
            },
            "attackers": attack_plan(1, args.attacks)[0],
            "attack_processes": args.attack_processes,
            "attacker_nice": args.attacker_nice,
            "login_sources": args.login_sources,
            "victim_seeded": VICTIM_SEEDED,
            "server_env": dict(item.split("=", 1) for item in args.server_env),
        },
        "runs": runs,
        "summary": summarise(runs),
    }
    previous: dict[str, Any] = {}
    if args.output.exists() and not args.quick:
        with contextlib.suppress(orjson.JSONDecodeError):
            previous = orjson.loads(args.output.read_bytes())
    if args.append and backend in previous:  # earlier runs kept: medians over all of them
        result["runs"] = previous[backend]["runs"] + runs
        result["summary"] = summarise(result["runs"])
    previous[backend] = result
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(previous, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {args.output} ({backend})")


if __name__ == "__main__":
    main()
