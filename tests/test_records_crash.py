"""kill -9 of a server while a client streams corrections and erasures (EXTENSIONS.md section 6:
corrections and erasures are exact across crashes, like ingest; CONTRACT.md section 3: durable
before the reply).

One client sends numbered operations in order: corrections of many ids at once (operation ``k``
carries version ``k`` of each, so a later operation is always a later ``updatedAt``) and now and
then an erasure. The server is killed with SIGKILL mid-stream three times and restarted. After
each restart the operation that was in flight is found either wholly applied or not at all,
every acknowledged one exactly as its reply said, and the listing and the distribution agree
with that history (records, and the counts they make, per skill and agent).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from csatdist.store import open_store
from tests.conftest import add_key
from tests.helpers import (
    SCORE_KEYS,
    ServerProcess,
    assert_invariant,
    bearer,
    list_records,
    start_server,
)

pytestmark = pytest.mark.slow

ACCOUNT = "acme"
INGEST = f"/api/account/{ACCOUNT}/csat/answers"
ERASE = f"/api/account/{ACCOUNT}/csat/erasures"
POOL = [f"c{i}" for i in range(400)]
PER_CORRECTION = 120
KILLS = 3
QUERIES: list[dict[str, object]] = [
    {"timeframe": 1440, "skillIds": "all", "agentIds": "all"},
    {"timeframe": 1440, "agentIds": "-1,20"},
    {"timeframe": 120, "skillIds": "2,3"},
    {"timeframe": 15},
]


def version(answer_id: str, number: int, base: int) -> dict[str, Any]:
    """Version ``number`` of an answer (made by operation ``number``; 0 is the original)."""
    rng = random.Random(f"{answer_id}/{number}")
    minutes = rng.choice([rng.randrange(0, 20 * 60), rng.randrange(0, 30)])
    return {
        "id": answer_id,
        "time": base - minutes * 60_000 - rng.randrange(60_000),
        "skillId": rng.choice([None, 1, 2, 3]),
        "agentId": rng.choice([None, 20, 21]),
        "score": rng.randint(1, 5),
        "updatedAt": base - 3_600_000 + number * 1000,
        "comment": f"v{number}",
    }


@dataclass
class History:
    """The records as the acknowledged operations left them: id -> version number, or None
    once erased."""

    base: int
    records: dict[str, int | None] = field(default_factory=dict)
    #: The next operation's number; the operation in flight when a server died, if any.
    next_number: int = 1
    in_doubt: tuple[int, str, list[str]] | None = None
    acknowledged: int = 0
    #: How long each acknowledged request took, in seconds.
    durations: list[float] = field(default_factory=list)

    def operation(self, number: int) -> tuple[str, list[str]]:
        rng = random.Random(number)
        if number % 5 == 0:
            return "erase", rng.sample(POOL, 6)
        return "correct", rng.sample(POOL, PER_CORRECTION)

    def expected_reply(self, kind: str, ids: list[str]) -> dict[str, Any]:
        if kind == "erase":
            return {"erased": len(ids), "unknown": []}  # erased again is still "erased"
        refused = [
            {"index": n, "id": i, "reason": "erased"}
            for n, i in enumerate(ids)
            if self.records[i] is None
        ]
        return {
            "accepted": 0,
            "updated": len(ids) - len(refused),
            "duplicates": 0,
            "rejected": refused,
        }

    def apply(self, number: int, kind: str, ids: list[str]) -> None:
        for answer_id in ids:
            if kind == "erase":
                self.records[answer_id] = None
            elif self.records[answer_id] is not None:
                self.records[answer_id] = number

    def expected_listing(self) -> dict[str, dict[str, Any]]:
        return {
            answer_id: shown(version(answer_id, number, self.base))
            for answer_id, number in self.records.items()
            if number is not None
        }


def shown(answer: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": answer["id"],
        "time": answer["time"],
        "skillId": -1 if answer["skillId"] is None else answer["skillId"],
        "agentId": -1 if answer["agentId"] is None else answer["agentId"],
        "score": answer["score"],
        "conversationId": None,
        "comment": answer["comment"],
        "channel": None,
        "updatedAt": answer["updatedAt"],
        "skillName": None,
        "agentName": None,
    }


def send(server: ServerProcess, headers: dict[str, str], history: History, stop: int) -> None:
    """Send operations in order until ``stop`` or until the server dies under one."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while history.next_number < stop:
            number = history.next_number
            kind, ids = history.operation(number)
            body: dict[str, Any]
            if kind == "erase":
                path, body = ERASE, {"ids": ids}
            else:
                path, body = INGEST, {"answers": [version(i, number, history.base) for i in ids]}
            started = time.monotonic()
            try:
                response = client.post(path, json=body, headers=headers)
            except httpx.TransportError:
                history.in_doubt = (number, kind, ids)
                history.next_number += 1
                return
            assert response.status_code == 200, response.text
            assert response.json() == history.expected_reply(kind, ids), number
            history.apply(number, kind, ids)
            history.durations.append(time.monotonic() - started)
            history.acknowledged += 1
            history.next_number += 1


def settle_in_doubt(history: History, listed: dict[str, dict[str, Any]]) -> bool | None:
    """Whether the operation in flight at the kill was applied; it must be all or nothing."""
    if history.in_doubt is None:
        return None
    number, kind, ids = history.in_doubt
    history.in_doubt = None
    live = [i for i in ids if history.records[i] is not None]
    if kind == "erase":
        gone = [i not in listed for i in live]
    else:
        gone = [listed[i]["comment"] == f"v{number}" for i in live]
    assert all(gone) or not any(gone), f"operation {number} ({kind}) was half applied"
    applied = all(gone) and bool(live)
    if applied:
        history.apply(number, kind, ids)
    return applied


def check_state(server: ServerProcess, headers: dict[str, str], history: History) -> bool | None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        listed = {r["id"]: r for r in list_records(client, ACCOUNT, headers, timeframe=1440)}
        applied = settle_in_doubt(history, listed)
        assert listed == history.expected_listing()
        for params in QUERIES:
            body, records = assert_invariant(client, ACCOUNT, headers, **params)
            check_breakdown(body, records)
    return applied


def check_breakdown(body: dict[str, Any], records: list[dict[str, Any]]) -> None:
    def per_score(subset: list[dict[str, Any]]) -> list[int]:
        counts = Counter(r["score"] for r in subset)
        return [counts[n] for n in range(1, 6)]

    for skill, entry in body.get("skillsMetricsPerAgent", {}).get("metricsPerSkill", {}).items():
        for agent, metrics in entry["metricsPerAgent"].items():
            mine = [r for r in records if str(r["skillId"]) == skill and str(r["agentId"]) == agent]
            assert [metrics[k] for k in SCORE_KEYS] == per_score(mine), (skill, agent)
    for agent, metrics in body.get("agentsMetrics", {}).get("metricsPerAgent", {}).items():
        mine = [r for r in records if str(r["agentId"]) == agent]
        assert [metrics[k] for k in SCORE_KEYS] == per_score(mine), agent


def test_sigkill_mid_corrections_and_erasures_applies_each_operation_whole(
    database_url: str, tmp_path: Path
) -> None:
    setup = open_store(database_url)
    headers = bearer(add_key(setup, ACCOUNT, "read,write"))
    setup.close()
    history = History(base=int(time.time() * 1000))
    log = tmp_path / "server.log"
    server = start_server(database_url, log, "--log-level", "warning")
    pool = ThreadPoolExecutor(1)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            seed = [version(i, 0, history.base) for i in POOL]
            reply = client.post(INGEST, json={"answers": seed}, headers=headers).json()
            assert reply["accepted"] == len(POOL)
        history.records = dict.fromkeys(POOL, 0)

        rng = random.Random(7)
        for _ in range(KILLS):
            target = history.acknowledged + 6
            sender = pool.submit(send, server, headers, history, 10**6)
            while history.acknowledged < target:
                if sender.done():
                    sender.result()  # its failure, if it failed
                    pytest.fail("the client stopped before the kill")
                time.sleep(0.001)
            typical = sorted(history.durations)[len(history.durations) // 2]
            time.sleep(rng.uniform(0, typical))  # anywhere in the next request
            server.kill()
            sender.result(timeout=30)
            server = start_server(database_url, log, "--log-level", "warning")
            check_state(server, headers, history)

        send(server, headers, history, history.next_number + 6)  # and it goes on normally
        assert check_state(server, headers, history) is None
        assert history.acknowledged >= KILLS * 6 + 6
        assert None in history.records.values(), "erasures must have happened"
    finally:
        server.stop()
        pool.shutdown()
