"""Health, readiness, metrics, request ids, logs, and the demo."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import httpx
import orjson
import pytest

from csatdist.buckets import MINUTE_MS
from csatdist.http.middleware import new_request_id
from tests.conftest import Api
from tests.helpers import LATEST_SCHEMA, T_13_29, bearer, start_server


def test_health_and_readiness(api: Api) -> None:
    assert api.client.get("/healthz").json()["status"] == "ok"
    ready = api.client.get("/readyz").json()
    assert ready == {"status": "ready", "schema_version": LATEST_SCHEMA}


def test_readiness_fails_with_503_when_the_store_is_gone(api: Api) -> None:
    api.store.close()
    response = api.client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"


def test_metrics_count_requests_answers_and_limits(api: Api) -> None:
    api.ingest(
        [
            {"id": "a", "time": T_13_29, "score": 5},
            {"id": "a", "time": T_13_29, "score": 5},
            {"id": "b", "time": T_13_29, "score": 0},
        ]
    )
    api.query(timeframe=60)
    text = api.client.get("/metrics").text
    assert 'csatdist_answers_total{outcome="accepted"}' in text
    assert 'csatdist_answers_total{outcome="duplicate"}' in text
    assert "csatdist_queries_in_flight" in text
    assert "csatdist_rate_limited_total" in text
    assert (
        'csatdist_http_requests_total{method="GET",'
        'route="/operations/api/account/{account_id}/msgcsatdistribution",status="200"}'
    ) in text
    assert "csatdist_http_request_duration_seconds_bucket" in text


def test_request_id_is_echoed_or_made(api: Api) -> None:
    given = api.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = api.client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert len(made.headers["x-request-id"]) == 32
    others = {api.client.get("/healthz").headers["x-request-id"] for _ in range(50)}
    assert len(others | {made.headers["x-request-id"]}) == 51
    assert all(len(one) == 32 and int(one, 16) >= 0 for one in others)


def test_a_forked_process_makes_request_ids_of_its_own() -> None:
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(writing, new_request_id().encode())
        os._exit(0)
    os.waitpid(child, 0)
    theirs = os.read(reading, 64).decode()
    os.close(reading)
    os.close(writing)
    ours = new_request_id()
    assert len(theirs) == len(ours) == 32
    assert theirs[:16] != ours[:16]  # the random half, drawn again in the child


def test_access_log_is_structured_and_carries_the_request_id(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="csatdist"):
        api.client.get(
            api.query_url() + "?v=1&timeframe=5", headers={**api.read, "X-Request-ID": "r1"}
        )
    records = [r for r in caplog.records if r.getMessage() == "request"]
    fields = records[-1].fields  # type: ignore[attr-defined]
    assert fields["status"] == 200
    assert fields["account"] == "acme"
    assert fields["route"].endswith("/msgcsatdistribution")
    assert "Bearer" not in caplog.text


def test_no_500_for_garbage_paths(api: Api) -> None:
    for path in (
        "/operations/api/account//msgcsatdistribution?v=1&timeframe=5",
        "/api/account/%ff/csat/answers",
    ):
        response = api.client.get(path, headers=api.read)
        assert response.status_code < 500


@pytest.mark.slow
def test_demo_server_serves_moving_numbers(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    server = start_server(tmp_path / "demo.db", log, "--demo", "--json")
    try:
        info = orjson.loads(log.read_text().splitlines()[0])
        url = f"{server.url}/operations/api/account/demo/msgcsatdistribution"
        params = {"v": 1, "timeframe": 1440}
        headers = bearer(info["read_token"])
        seeded = httpx.get(url, params=params, headers=headers).json()["metricsTotals"]
        assert seeded["total_answers"] == info["seeded_answers"] > 1000
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the feed adds answers every few seconds
            now = httpx.get(url, params=params, headers=headers).json()["metricsTotals"]
            if now["total_answers"] > seeded["total_answers"]:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the demo feed added no answers")
        mine = {"id": "mine", "time": int(time.time() * 1000) - MINUTE_MS, "score": 4}
        ingest = httpx.post(
            info["ingest_url"], headers=bearer(info["write_token"]), json={"answers": [mine]}
        )
        assert ingest.json()["accepted"] == 1
    finally:
        server.stop()


def test_readiness_waits_for_the_counters_to_be_warm(tmp_path: Path) -> None:
    """After a restart, /readyz is 503 until the busiest accounts' counters are loaded, and
    the first query after it is answered from memory."""
    import threading

    from fastapi.testclient import TestClient

    from csatdist.http import create_app
    from csatdist.store.sqlite import SQLiteStore
    from tests.conftest import add_key, make_settings
    from tests.helpers import FakeClock

    class SlowStore(SQLiteStore):
        """Counts the accounts whose snapshots are read, alone or several together (the
        warm-up's way), each read held until the gate opens."""

        gate = threading.Event()
        snapshots = 0

        def account_snapshot(self, account_id: str) -> object:  # type: ignore[override]
            self.gate.wait(10)
            SlowStore.snapshots += 1
            return super().account_snapshot(account_id)

        def account_snapshots(self, account_ids: object, max_rows: int) -> object:  # type: ignore[override]
            self.gate.wait(10)
            read = super().account_snapshots(account_ids, max_rows)  # type: ignore[arg-type]
            SlowStore.snapshots += len(read)
            return read

    store = SlowStore(tmp_path / "warm.db")
    from csatdist.service import ingest_answers

    for account in ("big", "small"):
        ingest_answers(
            store, account, enumerate([{"id": "a", "time": T_13_29, "score": 5}]), T_13_29, 1445
        )
    token = bearer(add_key(store, "big", "read"))
    try:
        with TestClient(create_app(make_settings(), store=store, clock=FakeClock())) as client:
            waiting = client.get("/readyz")
            assert waiting.status_code == 503
            assert waiting.json()["status"] == "warming up"
            assert waiting.headers["Retry-After"] == "1"
            SlowStore.gate.set()
            deadline = time.monotonic() + 10
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert SlowStore.snapshots == 2
            url = "/operations/api/account/big/msgcsatdistribution"
            assert (
                client.get(url, params={"v": 1, "timeframe": 60}, headers=token).status_code == 200
            )
            assert SlowStore.snapshots == 2  # answered from the warm counters
    finally:
        store.close()


def test_the_warm_up_loads_every_planned_account_with_few_reads(tmp_path: Path) -> None:
    """Hundreds of small accounts are warmed a batch at a time, many with one store read, each
    read once; /readyz turns ready only once every planned account is in memory."""
    from fastapi.testclient import TestClient

    from csatdist.http import create_app
    from csatdist.http.background import WARM_UP_BATCH
    from csatdist.service import ingest_answers
    from csatdist.store.sqlite import SQLiteStore
    from tests.conftest import make_settings
    from tests.helpers import FakeClock

    class CountingStore(SQLiteStore):
        reads: list[list[str]] = []  # noqa: RUF012 (one instance, one test)

        def account_snapshot(self, account_id: str) -> object:  # type: ignore[override]
            CountingStore.reads.append([account_id])
            return super().account_snapshot(account_id)

        def account_snapshots(self, account_ids: object, max_rows: int) -> object:  # type: ignore[override]
            read = super().account_snapshots(account_ids, max_rows)  # type: ignore[arg-type]
            CountingStore.reads.append(sorted(read))
            return read

    store = CountingStore(tmp_path / "many.db")
    accounts = [f"t{n:03d}" for n in range(2 * WARM_UP_BATCH + 50)]
    for n, account in enumerate(accounts):
        answer = {"id": "a", "time": T_13_29 - n * MINUTE_MS, "score": 1 + n % 5}
        ingest_answers(store, account, enumerate([answer]), T_13_29, 1445)
    store.close()  # a restart: the counters hold every answer (closing and opening fold)
    store = CountingStore(tmp_path / "many.db")
    try:
        with TestClient(create_app(make_settings(), store=store, clock=FakeClock())) as client:
            deadline = time.monotonic() + 30
            while (ready := client.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            runtime = client.app.state.runtime  # type: ignore[attr-defined]
            assert (runtime.warm_up.loaded, runtime.warm_up.planned) == (250, 250)
            assert all(runtime.aggregates.loaded_version(a) == 1 for a in accounts)
            read = [account for part in CountingStore.reads for account in part]
            assert sorted(read) == accounts  # every account once
            assert len(CountingStore.reads) == 3  # a store read per batch of 100
            assert ready.json()["status"] == "ready"
    finally:
        store.close()
