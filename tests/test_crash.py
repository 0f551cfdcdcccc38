"""Crash safety: kill -9 the server mid-ingest; nothing acknowledged is lost or doubled."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import bearer, create_key, start_server

pytestmark = pytest.mark.slow

BATCH = 200
BATCHES = 400


def batch_answers(number: int) -> list[dict[str, object]]:
    # Consecutive batches overlap by half, so every resend also carries real duplicates.
    now = int(time.time() * 1000)
    first = number * BATCH // 2
    return [
        {
            "id": f"ans-{i}",
            "time": now - (i % 600) * 1000,
            "skillId": i % 7,
            "agentId": i % 13,
            "score": 1 + i % 5,
        }
        for i in range(first, first + BATCH)
    ]


def test_sigkill_mid_stream_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    database = tmp_path / "crash.db"
    token = create_key(database, "acme", "read,write")
    headers = bearer(token)
    server = start_server(database, tmp_path / "server.log")
    acknowledged: set[int] = set()
    sent: set[int] = set()
    stop = threading.Event()

    def ingest_loop(url: str) -> None:
        with httpx.Client(timeout=10) as client:
            for number in range(BATCHES):
                if stop.is_set():
                    return
                sent.add(number)
                try:
                    response = client.post(
                        f"{url}/api/account/acme/csat/answers",
                        json={"answers": batch_answers(number)},
                        headers=headers,
                    )
                except httpx.TransportError:
                    return  # the server died under us: this batch's reply was never seen
                assert response.status_code == 200, response.text
                acknowledged.add(number)

    try:
        writer = threading.Thread(target=ingest_loop, args=(server.url,))
        writer.start()
        while len(acknowledged) < 40:
            time.sleep(0.005)
        server.kill()  # SIGKILL, mid-stream
        writer.join(timeout=30)
        assert 40 <= len(acknowledged) < BATCHES, "the kill must land mid-stream"

        server = start_server(database, tmp_path / "server.log")
        with httpx.Client(timeout=30) as client:
            for number in sorted(sent - acknowledged):
                response = client.post(
                    f"{server.url}/api/account/acme/csat/answers",
                    json={"answers": batch_answers(number)},
                    headers=headers,
                )
                assert response.status_code == 200
            body = client.get(
                f"{server.url}/operations/api/account/acme/msgcsatdistribution",
                params={"v": 1, "timeframe": 1440},
                headers=headers,
            ).json()
        distinct = {a["id"] for n in sent for a in batch_answers(n)}
        assert body["metricsTotals"]["total_answers"] == len(distinct)
        by_score = [0] * 5
        for i in (int(x.removeprefix("ans-")) for x in distinct):
            by_score[i % 5] += 1
        assert [body["metricsTotals"][f"csat_score{s}_answers"] for s in range(1, 6)] == by_score
    finally:
        stop.set()
        server.stop()
