"""Several real `csatdist serve` replicas on one PostgreSQL and one Redis; PostgreSQL restarts
(a private PostgreSQL of the test's own: tests/services.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.helpers import (
    POSTGRES_URL,
    ServerProcess,
    bearer,
    create_key,
    postgres_schema,
    start_server,
)
from tests.services import PrivateServer, private_postgres

pytestmark = [pytest.mark.slow, pytest.mark.postgresql, pytest.mark.redis]

QUERY = "/operations/api/account/acme/msgcsatdistribution"
INGEST = "/api/account/acme/csat/answers"


@pytest.fixture
def shared(redis_url: str) -> Iterator[tuple[str, str]]:
    with postgres_schema() as url:
        yield url, redis_url


def batch(number: int, size: int = 100) -> list[dict[str, Any]]:
    """Batches overlap by half with the next one, so replicas see each other's ids."""
    now = int(time.time() * 1000)
    first = number * size // 2
    return [
        {
            "id": f"r-{i}",
            "time": now - (i % 500) * 1000,
            "skillId": i % 9,
            "agentId": i % 17,
            "score": 1 + i % 5,
        }
        for i in range(first, first + size)
    ]


def distinct_ids(numbers: set[int]) -> int:
    return len({a["id"] for n in numbers for a in batch(n)})


def body(server: ServerProcess, token: str, **params: Any) -> Any:
    response = httpx.get(
        server.url + QUERY,
        params={"v": 1, "timeframe": 1440, **params},
        headers=bearer(token),
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_three_replicas_one_database(shared: tuple[str, str], tmp_path: Path) -> None:
    database, redis_url = shared
    token = create_key(database, "acme", "read,write")
    args = ("--redis-url", redis_url, "--max-concurrent-requests", "2", "--log-level", "warning")
    replicas = [start_server(database, tmp_path / f"r{i}.log", *args) for i in range(3)]
    try:
        # 1. Concurrent ingest through all three, with duplicates across replicas.
        sent: set[int] = set()

        def feed(replica: ServerProcess, numbers: range) -> None:
            with httpx.Client(timeout=30) as client:
                for number in numbers:
                    while True:  # over the account's ingest limit (2 at once): retry, as told
                        response = client.post(
                            replica.url + INGEST,
                            json={"answers": batch(number)},
                            headers=bearer(token),
                        )
                        if response.status_code != 429:
                            break
                        time.sleep(float(response.headers["Retry-After"]) / 10)
                    assert response.status_code == 200, response.text
                    sent.add(number)

        threads = [
            threading.Thread(target=feed, args=(r, range(i, 60, 2))) for i, r in enumerate(replicas)
        ]  # replicas 0 and 2 send the same batches
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert body(replicas[0], token)["metricsTotals"]["total_answers"] == distinct_ids(sent)

        # 2. An answer acknowledged by one replica is in the very next query on every other.
        total = distinct_ids(sent)
        for step in range(6):
            fresh = {"id": f"fresh-{step}", "time": int(time.time() * 1000), "score": 4}
            response = httpx.post(
                replicas[step % 3].url + INGEST, json={"answers": [fresh]}, headers=bearer(token)
            )
            assert response.json()["accepted"] == 1
            total += 1
            for other in (replicas[(step + 1) % 3], replicas[(step + 2) % 3]):
                assert body(other, token)["metricsTotals"]["total_answers"] == total

        # 3. Every replica returns the same body for the same query.
        shapes = [{}, {"skillIds": "all", "agentIds": "all"}, {"agentIds": "1,2,3", "interval": 60}]
        for params in shapes:
            bodies = [body(r, token, **params) for r in replicas]
            assert bodies[0] == bodies[1] == bodies[2]

        # 4. A limit of 2 holds across replicas: hold 2 queries (the table is locked), a third
        #    on another replica is refused at once.
        schema = database.rsplit("search_path%3D", 1)[1]
        with psycopg.connect(POSTGRES_URL) as locker:
            locker.execute(f"LOCK TABLE {schema}.account_versions IN ACCESS EXCLUSIVE MODE")
            holder = locker.info.backend_pid
            with ThreadPoolExecutor(2) as pool:
                held = [
                    pool.submit(
                        httpx.get,
                        replicas[i].url + QUERY,
                        params={"v": 1, "timeframe": 60},
                        headers=bearer(token),
                        timeout=60,
                    )
                    for i in (0, 1)
                ]
                deadline = time.monotonic() + 20
                while waiting_on(holder) < 2:
                    assert time.monotonic() < deadline, "queries never blocked"
                    time.sleep(0.05)
                refused = httpx.get(
                    replicas[2].url + QUERY,
                    params={"v": 1, "timeframe": 60},
                    headers=bearer(token),
                    timeout=10,
                )
                assert refused.status_code == 429
                assert refused.headers["Retry-After"] == "1"
                locker.rollback()  # release the lock: the held queries complete
                assert [f.result().status_code for f in held] == [200, 200]

        # 5. kill -9 one replica mid-ingest; retry what it did not acknowledge on another.
        acknowledged: set[int] = set()
        attempted: set[int] = set()

        def feed_until_killed() -> None:
            with httpx.Client(timeout=30) as client:
                for number in range(100, 400):
                    attempted.add(number)
                    try:
                        response = client.post(
                            replicas[1].url + INGEST,
                            json={"answers": batch(number)},
                            headers=bearer(token),
                        )
                    except httpx.TransportError:
                        return
                    assert response.status_code == 200
                    acknowledged.add(number)

        writer = threading.Thread(target=feed_until_killed)
        writer.start()
        while len(acknowledged) < 20:
            time.sleep(0.005)
        replicas[1].kill()
        writer.join(timeout=30)
        with httpx.Client(timeout=30) as client:
            for number in sorted(attempted - acknowledged):
                response = client.post(
                    replicas[2].url + INGEST, json={"answers": batch(number)}, headers=bearer(token)
                )
                assert response.status_code == 200
        expected = distinct_ids(sent | attempted) + 6
        assert body(replicas[0], token)["metricsTotals"]["total_answers"] == expected
        assert body(replicas[2], token)["metricsTotals"]["total_answers"] == expected
    finally:
        for replica in replicas:
            replica.stop()


def waiting_on(holder: int) -> int:
    """Sessions blocked by the lock the backend ``holder`` holds (only this test's: the server
    is shared with other test runs)."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
            (holder,),
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def own_postgres() -> Iterator[PrivateServer]:
    """A PostgreSQL of this test's own, to stop and start."""
    with private_postgres() as server:
        yield server


def test_postgres_restart_gives_503_then_recovers(
    own_postgres: PrivateServer, tmp_path: Path
) -> None:
    database = own_postgres.url
    token = create_key(database, "acme", "read,write")
    server = start_server(database, tmp_path / "s.log", "--log-level", "warning")
    statuses: list[int] = []
    acknowledged: set[int] = set()
    stop = threading.Event()

    def traffic() -> None:
        number = 0
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                number += 1
                now = int(time.time() * 1000)
                answers = [
                    {
                        "id": f"o-{number}-{i}",
                        "time": now,
                        "skillId": 1000 + number,
                        "agentId": i,
                        "score": 5,
                    }
                    for i in range(40)
                ]
                response = client.post(
                    server.url + INGEST, json={"answers": answers}, headers=bearer(token)
                )
                statuses.append(response.status_code)
                if response.status_code == 200:
                    acknowledged.add(number)
                else:
                    assert response.headers.get("Retry-After"), response.text
                query = client.get(
                    server.url + QUERY, params={"v": 1, "timeframe": 60}, headers=bearer(token)
                )
                statuses.append(query.status_code)
        traffic.last = number  # type: ignore[attr-defined]

    worker = threading.Thread(target=traffic)
    try:
        worker.start()
        while len(acknowledged) < 5:
            time.sleep(0.01)
        own_postgres.stop()  # this test's private server only: a fast shutdown, as in a real outage
        try:
            deadline = time.monotonic() + 60
            while 503 not in statuses:  # the outage is seen as 503, not 500 or a hang
                assert time.monotonic() < deadline, "no 503 while PostgreSQL was down"
                time.sleep(0.05)
        finally:
            own_postgres.start()
        before = len(acknowledged)
        deadline = time.monotonic() + 60
        while len(acknowledged) < before + 5:  # recovers by itself
            assert time.monotonic() < deadline, f"no recovery: {statuses[-10:]}"
            time.sleep(0.05)
        stop.set()
        worker.join(timeout=120)
        assert set(statuses) <= {200, 503}, statuses
        # No partial batch: each batch has its own skill, fully counted or not at all.
        per_skill = body(server, token, skillIds="all")["skillsMetricsPerAgent"]["metricsPerSkill"]
        for skill, entry in per_skill.items():
            assert entry["metricsTotals"]["total_answers"] == 40, skill
        for number in acknowledged:
            assert str(1000 + number) in per_skill
    finally:
        stop.set()
        server.stop()
