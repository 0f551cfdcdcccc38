"""Faults of the environment: the SQLite disk fills up or turns read-only, the clock jumps back.

(Process kills, PostgreSQL and NATS restarts and Redis outages have their own tests:
test_crash.py, test_replicas.py, test_stream.py, test_redis.py.)
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from csatdist.http import create_app
from csatdist.store import open_store
from tests.conftest import Api, add_key, make_settings
from tests.helpers import T_13_29, FakeClock, bearer, csatdist_cli, require_service

QUERY = "/operations/api/account/acme/msgcsatdistribution"
INGEST = "/api/account/acme/csat/answers"


def batch(prefix: str, count: int, minutes_ago: float = 1) -> list[dict[str, object]]:
    return [
        {
            "id": f"{prefix}-{i}-" + "x" * 60,  # long ids: each answer costs index space
            "time": T_13_29 - int(minutes_ago * 60_000),
            "skillId": i % 50,
            "agentId": i,
            "score": i % 5 + 1,
        }
        for i in range(count)
    ]


@contextlib.contextmanager
def small_disk(size: str = "3m") -> Iterator[Path]:
    """A tmpfs of its own, so it can be filled or made read-only without touching the host."""
    if os.geteuid() != 0:
        require_service("a mountable tmpfs", False, "these tests run as root (CI does)")
    mount_point = Path(f"/tmp/csatdist-disk-{uuid.uuid4().hex[:8]}")
    mount_point.mkdir()
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            require_service("a mountable tmpfs", False, result.stderr.decode().strip())
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        mount_point.rmdir()


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def totals(client: TestClient, headers: dict[str, str]) -> int:
    reply = client.get(QUERY, params={"v": 1, "timeframe": 60}, headers=headers)
    assert reply.status_code == 200, reply.text
    count: int = reply.json()["metricsTotals"]["total_answers"]
    return count


@pytest.mark.sqlite
def test_a_full_disk_gives_503_loses_nothing_and_recovers() -> None:
    with small_disk() as disk:
        store = open_store(f"sqlite:///{disk / 'c.db'}")
        headers = bearer(add_key(store, "acme", "read,write"))
        clock = FakeClock()
        with TestClient(create_app(make_settings(), store=store, clock=clock)) as client:
            first = client.post(INGEST, json={"answers": batch("a", 200)}, headers=headers)
            assert first.json()["accepted"] == 200
            filler = fill(disk)
            refused = client.post(INGEST, json={"answers": batch("b", 3000)}, headers=headers)
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"]
            assert refused.json()["type"] == "urn:csatdist:problem:store-unavailable"
            assert "full" in refused.json()["detail"]
            assert totals(client, headers) == 200  # reads go on; nothing of "b" counted

            filler.unlink()  # space returns
            again = client.post(INGEST, json={"answers": batch("b", 3000)}, headers=headers)
            assert again.status_code == 200
            assert again.json()["accepted"] == 3000  # none was half-written before
            assert totals(client, headers) == 3200
        store.close()
        with sqlite3.connect(disk / "c.db") as check:
            assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest.mark.sqlite
def test_a_read_only_disk_is_reported_clearly_and_recovers() -> None:
    """A disk remounted read-only (as after an I/O error) under a stopped server: starting
    fails with a clear message, not a traceback; once writable again, all data is there."""
    with small_disk("16m") as disk:
        database = disk / "c.db"
        store = open_store(f"sqlite:///{database}")
        headers = bearer(add_key(store, "acme", "read,write"))
        with TestClient(create_app(make_settings(), store=store, clock=FakeClock())) as client:
            reply = client.post(INGEST, json={"answers": batch("a", 50)}, headers=headers)
            assert reply.json()["accepted"] == 50
        store.close()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        try:
            result = csatdist_cli(
                "query", "--account", "acme", "--timeframe", "60", "--database", str(database)
            )
            assert result.returncode == 2, result.stderr
            assert "Traceback" not in result.stderr
            assert "mounted read-only" in result.stderr
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        store = open_store(f"sqlite:///{database}")
        with TestClient(create_app(make_settings(), store=store, clock=FakeClock())) as client:
            assert totals(client, headers) == 50
            reply = client.post(INGEST, json={"answers": batch("b", 50)}, headers=headers)
            assert reply.json()["accepted"] == 50
        store.close()
        with sqlite3.connect(database) as check:
            assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_backwards_clock_jump_neither_doubles_nor_loses(api: Api) -> None:
    sent = batch("j", 20, minutes_ago=2)
    assert api.ingest(sent)["accepted"] == 20
    api.clock.advance(-30)  # the host clock is set back half an hour
    again = api.ingest(sent)  # a client retries after the jump
    assert again["accepted"] == 0
    # answers now 28 minutes "in the future" are refused with the reason, not silently dropped
    assert len(again["rejected"]) + again["duplicates"] == 20  # type: ignore[arg-type]
    fresh = batch("k", 5, minutes_ago=1)  # stamped by the clock as it is now
    fresh = [{**a, "time": api.clock() - 60_000} for a in fresh]
    assert api.ingest(fresh)["accepted"] == 5
    api.clock.advance(30)  # the clock is put right
    assert api.ingest(sent)["duplicates"] == 20
    totals_now = api.query(timeframe=60)["metricsTotals"]  # type: ignore[index]
    assert totals_now["total_answers"] == 25  # type: ignore[index]


def test_purge_under_a_clock_jump_keeps_what_is_still_in_retention(api: Api) -> None:
    assert api.ingest(batch("p", 10, minutes_ago=60))["accepted"] == 10
    api.clock.advance(-120)
    api.store.purge(api.clock() - 1445 * 60_000)  # the purge sees an earlier "now"
    api.clock.advance(120)
    assert api.ingest(batch("p", 10, minutes_ago=60))["duplicates"] == 10  # keys kept
    assert api.query(timeframe=120)["metricsTotals"]["total_answers"] == 10  # type: ignore[index]
