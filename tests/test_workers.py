"""``csatdist serve --workers N``: the supervisor hands each new connection to the worker holding
the fewest; the workers share, through shared memory, the per-account limits and the OAuth
nonces; a worker killed with slots held gives them back when it is replaced; killing the
supervisor takes its workers with it, stopping it stops them. Both stores."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from requests_oauthlib import OAuth1

from csatdist.shared import SharedLimiter
from tests.helpers import (
    ServerProcess,
    bearer,
    create_key,
    csatdist_cli,
    free_port,
    start_server,
)

STREAM = "/api/account/acme/csat/stream"


def workers_of(server: ServerProcess) -> list[int]:
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    pids = [int(p) for p in children.read_text().split()]
    return [p for p in pids if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]


def running(pid: int) -> bool:
    """Alive, not a zombie waiting to be reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def open_stream(url: str, token: str) -> tuple[socket.socket, bytes]:
    """A push stream held open; its reply's head."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.sendall(
        f"GET {STREAM}?timeframe=60 HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    return sock, head


def client_ports(server: ServerProcess) -> dict[int, set[int]]:
    """Each worker's established connections to the server's port, by the client's port (from
    /proc: which worker holds which socket)."""
    port = int(server.url.rsplit(":", 1)[1])
    owner = {}
    workers = workers_of(server)
    for pid in workers:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owner[int(target[8:-1])] = pid
    held: dict[int, set[int]] = {pid: set() for pid in workers}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            if int(local.rsplit(":", 1)[1], 16) == port and state == "01" and inode in owner:
                held[owner[inode]].add(int(remote.rsplit(":", 1)[1], 16))
    return held


def kept_alive(server: ServerProcess, count: int) -> list[socket.socket]:
    """``count`` connections opened at once, each answered once and kept open."""
    parts = urlsplit(server.url)
    opened = [
        socket.create_connection((parts.hostname, parts.port), timeout=10) for _ in range(count)
    ]
    for sock in opened:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    for sock in opened:
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert b" 200 " in head.split(b"\r\n")[0]
    return opened


def settled(server: ServerProcess, expected: list[int]) -> dict[int, set[int]]:
    """The connections per worker once their counts (sorted) are ``expected``."""
    deadline = time.monotonic() + 10
    seen = []
    while True:
        held = client_ports(server)
        counts = sorted(len(ports) for ports in held.values())
        if counts == expected:
            return held
        seen.append(counts)
        assert time.monotonic() < deadline, f"connections per worker: {seen[0]} … {seen[-1]}"
        time.sleep(0.05)


@pytest.mark.slow
def test_each_new_connection_goes_to_the_worker_holding_the_fewest(server: ServerProcess) -> None:
    deadline = time.monotonic() + 30
    while True:  # until both workers serve: one still starting is handed nothing
        pair = kept_alive(server, 2)
        held = client_ports(server)
        for sock in pair:
            sock.close()
        settled(server, [0, 0])
        time.sleep(1)  # the workers' reports of the closes reach the supervisor
        if sorted(len(ports) for ports in held.values()) == [1, 1]:
            break
        assert time.monotonic() < deadline, "a worker never started serving"
    # Accepting on one shared socket, the first worker to wake took most of a burst (8
    # connections split 2/6 in half of the trials): three bursts in a row split 4/4 here.
    for _ in range(3):
        opened = kept_alive(server, 8)
        settled(server, [4, 4])
        for sock in opened:
            sock.close()
        settled(server, [0, 0])
        time.sleep(1)  # the workers' reports of the closes reach the supervisor
    # Closed connections are counted back: a worker left with fewer gets the next ones.
    opened = kept_alive(server, 8)
    held = settled(server, [4, 4])
    lighter = next(iter(held))
    for sock in opened:
        if sock.getsockname()[1] in list(held[lighter])[:3]:
            sock.close()
    settled(server, [1, 4])
    time.sleep(1)  # the worker's report of the closes reaches the supervisor
    opened += kept_alive(server, 2)
    held = settled(server, [3, 4])
    assert len(held[lighter]) == 3, "the new connections went to the busier worker"
    for sock in opened:
        sock.close()


@pytest.mark.slow
def test_stopping_the_supervisor_stops_its_workers(server: ServerProcess) -> None:
    workers = workers_of(server)
    open_connection = kept_alive(server, 1)[0]  # an idle kept-alive connection does not hold
    server.process.terminate()  # the stop up
    assert server.process.wait(timeout=30) == 0
    assert not any(running(pid) for pid in workers)
    while open_connection.recv(4096):  # the rest of its reply, then closed by its worker
        pass
    open_connection.close()


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> ServerProcess:
    process = start_server(
        database_url,
        tmp_path / "workers.log",
        "--workers",
        "2",
        env={
            "CSATDIST_MAX_STREAMS_PER_ACCOUNT": "3",
            "CSATDIST_SECRET_KEY_FILE": str(tmp_path / "k"),
        },
    )
    deadline = time.monotonic() + 30
    while len(workers_of(process)) < 2 or httpx.get(process.url + "/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    yield process
    process.stop()


@pytest.mark.slow
def test_a_per_account_limit_holds_across_workers_and_a_dead_worker_gives_its_slots_back(
    server: ServerProcess, database_url: str
) -> None:
    token = create_key(database_url, "acme", "read")
    held = [open_stream(server.url, token) for _ in range(3)]
    assert all(b" 200 " in head.split(b"\r\n")[0] for _, head in held)
    for _ in range(6):  # whichever worker a new connection reaches, the fourth is refused
        refused = httpx.get(server.url + STREAM, params={"timeframe": 60}, headers=bearer(token))
        assert refused.status_code == 429, refused.text
        assert "3 open streams" in refused.json()["detail"]
    victim = workers_of(server)[0]
    os.kill(victim, signal.SIGKILL)  # with, perhaps, some of the three streams
    for sock, _ in held:
        sock.close()
    deadline = time.monotonic() + 30
    while True:  # the replacement worker zeroes the dead one's column; the others close
        workers = workers_of(server)
        if len(workers) == 2 and victim not in workers:
            opened = [open_stream(server.url, token) for _ in range(3)]
            ok = all(b" 200 " in head.split(b"\r\n")[0] for _, head in opened)
            for sock, _ in opened:
                sock.close()
            if ok:
                break
        assert time.monotonic() < deadline, "slots stayed held after the worker died"
        time.sleep(0.3)


def scraped(url: str) -> dict[str, float]:
    """One /metrics scrape of the server, as {series with labels: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", headers={"Connection": "close"}).text
    return {
        f"{sample.name}{sorted(sample.labels.items())}": sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


HEALTHZ = (
    "csatdist_http_requests_total[('method', 'GET'), ('route', '/healthz'), ('status', '200')]"
)


@pytest.mark.slow
def test_metrics_count_every_worker_whichever_answers_the_scrape(
    server: ServerProcess, database_url: str
) -> None:
    before = scraped(server.url).get(HEALTHZ, 0.0)  # the start-up's own checks
    for _ in range(40):  # new connections: spread over both workers
        assert httpx.get(server.url + "/healthz", headers={"Connection": "close"}).is_success
    token = create_key(database_url, "acme", "read")
    stream, head = open_stream(server.url, token)
    assert b" 200 " in head.split(b"\r\n")[0]
    scrapes = [scraped(server.url) for _ in range(12)]
    assert [s[HEALTHZ] for s in scrapes] == [before + 40] * 12
    assert [s["csatdist_open_streams[]"] for s in scrapes] == [1.0] * 12
    assert not any(name.startswith("process_") for name in scrapes[0])  # one worker's, not ours

    old = workers_of(server)
    for pid in old:  # no chance to take their live gauges out of the sum
        os.kill(pid, signal.SIGKILL)
    stream.close()
    deadline = time.monotonic() + 30
    while len(workers := workers_of(server)) < 2 or set(workers) & set(old):
        assert time.monotonic() < deadline, "the workers were not replaced"
        time.sleep(0.2)
    while httpx.get(server.url + "/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    after = scraped(server.url)
    assert after["csatdist_open_streams[]"] == 0.0  # the dead workers' stream is not counted
    assert after[HEALTHZ] == before + 40  # their counters are: totals never go back


@pytest.mark.slow
def test_an_oauth_nonce_used_on_one_worker_is_refused_on_every_other(
    server: ServerProcess, database_url: str, tmp_path: Path
) -> None:
    created = csatdist_cli(
        "keys",
        "create",
        "--account",
        "acme",
        "--scopes",
        "read",
        "--oauth1",
        "--json",
        "--database",
        database_url,
        env={"CSATDIST_SECRET_KEY_FILE": str(tmp_path / "k")},
    )
    assert created.returncode == 0, created.stderr
    import orjson

    secrets = orjson.loads(created.stdout)
    url = server.url + "/operations/api/account/acme/msgcsatdistribution?v=1&timeframe=60"
    signed = OAuth1(
        secrets["consumer_key"],
        secrets["consumer_secret"],
        secrets["token"],
        secrets["token_secret"],
        signature_method="HMAC-SHA1",
    )
    import requests

    prepared = requests.Request("GET", url, auth=signed).prepare()
    statuses = []
    for _ in range(8):  # new connections: spread over both workers
        with requests.Session() as session:
            statuses.append(session.send(prepared).status_code)
    assert statuses[0] == 200
    assert statuses[1:] == [401] * 7


@pytest.mark.slow
def test_the_workers_die_with_their_supervisor(server: ServerProcess) -> None:
    workers = workers_of(server)
    server.kill()  # SIGKILL: no chance to stop them itself
    deadline = time.monotonic() + 10
    while any(running(pid) for pid in workers):
        assert time.monotonic() < deadline, "workers outlived their supervisor"
        time.sleep(0.1)
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/healthz", timeout=2)


def test_workers_still_starting_die_with_a_supervisor_killed_before_they_were_ready(
    tmp_path: Path,
) -> None:
    """Killed -9 while its workers import the app (before they could ask the kernel to kill
    them with it): they notice the parent is gone and exit instead of serving the port."""
    command = [sys.executable, "-m", "csatdist", "serve", "--workers", "2", "--port"]
    with (tmp_path / "early.log").open("ab") as log:
        process = subprocess.Popen(
            [*command, str(free_port()), "--database", str(tmp_path / "early.db")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    supervisor = ServerProcess(process, "", tmp_path / "early.log")
    try:
        deadline = time.monotonic() + 30
        while len(workers := workers_of(supervisor)) < 2:
            assert time.monotonic() < deadline, "no workers started"
            time.sleep(0.005)
    finally:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 30
    while alive := [pid for pid in workers if running(pid)]:
        if time.monotonic() > deadline:
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):  # it may end just now
                    os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"workers {alive} outlived their supervisor")
        time.sleep(0.1)


def test_shared_limiter_columns_belong_to_live_processes(tmp_path: Path) -> None:
    name = f"csatdist-test-{os.getpid()}"
    owner = SharedLimiter(name, 2, 4, tmp_path / "l.lock", create=True)
    try:
        worker = SharedLimiter(name, 2, 4, tmp_path / "l.lock")
        assert worker.column == 0
        worker.take("a")
        worker.take("a")
        with pytest.raises(Exception, match="this account already has 2"):
            worker.take("a")
        worker.take("b")
        worker.take("c")
        with pytest.raises(Exception, match="the service has 4"):
            worker.take("d")
        worker.give_back("a")
        worker.take("d")
        assert worker.in_flight_for("a") == 1
        worker._pids[0] = 2**31 - 7  # a pid that no longer runs: its column is reclaimed
        again = SharedLimiter(name, 2, 4, tmp_path / "l.lock")
        assert again.column == 0
        assert again.in_flight_for("a") == 0
        for account in ("a", "a", "x", "y"):  # the dead worker's 4 slots count nowhere now
            again.take(account)
        with pytest.raises(Exception, match="the service has 4"):
            again.take("z")
    finally:
        owner.unlink()


async def failing_lifespan_app(scope: dict[str, object], receive: Any, send: Any) -> None:
    """An app whose start-up fails (``tests.test_workers:failing_lifespan_app``)."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no"})


def test_a_worker_whose_start_up_fails_stops_the_supervisor_with_its_status() -> None:
    """uvicorn's status for a failed start-up (3), not workers started again and again."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from csatdist.http.workers import Supervisor

    config = uvicorn.Config(
        "tests.test_workers:failing_lifespan_app", port=free_port(), lifespan="on", log_config=None
    )
    # Were the workers started again and again, SIGTERM after 60 s: then the status is 0.
    previous = signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    signal.alarm(60)
    try:
        assert Supervisor(config, 2).run() == STARTUP_FAILURE
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
