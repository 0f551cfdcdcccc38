"""Replicas racing on the same answer ids (EXTENSIONS.md section 6: corrections are "exact under
concurrent replicas").

Clients send many versions of the same ids to two servers sharing one database at once, and
erase some ids meanwhile. Every version is a pure function of (id, updatedAt), so whichever
order the replicas commit in, the record of an id must end as the version with the greatest
``updatedAt`` sent; for a few ids, clients send *different* content under the same
``updatedAt`` one answer per request, and exactly one of those requests may report it applied
(strictly later replaces, equal is a duplicate), and that one must be the record. Erased ids are
absent and refused afterwards, and the distribution equals the records counted per score.

PostgreSQL: two real ``csatdist serve`` processes. SQLite: docs/deployment.md runs one server per
file, so two stores (each with its own writer connection, as two processes would have) serve
two in-process apps on the same file.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from csatdist.http import create_app
from csatdist.store import open_store
from tests.conftest import add_key, make_settings
from tests.helpers import (
    SCORE_KEYS,
    assert_invariant,
    bearer,
    list_records,
    live_server,
    postgres_schema,
    start_server,
)

ACCOUNT = "acme"
INGEST = f"/api/account/{ACCOUNT}/csat/answers"
ERASE = f"/api/account/{ACCOUNT}/csat/erasures"
CLIENTS = 4
POOL = [f"x{i}" for i in range(120)]
#: Erased while the others are being corrected: three per client.
ERASED = POOL[: 3 * CLIENTS]
#: Ids whose competing versions share an updatedAt (content differs per client).
TIES = [f"t{i}" for i in range(8)]
VERSIONS = range(1, 9)
LIMITS = {
    "max_concurrent_ingest": 32,
    "max_concurrent_ingest_global": 64,
    "max_concurrent_requests": 32,
    "max_concurrent_requests_global": 64,
}
QUERIES: list[dict[str, object]] = [
    {"timeframe": 1440},
    {"timeframe": 1440, "skillIds": "all", "agentIds": "all"},
    {"timeframe": 1440, "skillIds": "1,2"},
    {"timeframe": 1440, "agentIds": "-1,10"},
    {"timeframe": 1440, "skillIds": "-1,3", "agentIds": "11,12,13"},
    {"timeframe": 180, "skillIds": "all"},
    {"timeframe": 60},
    {"timeframe": 7, "agentIds": "all"},
]


def version(answer_id: str, updated: int, base: int, variant: int = 0) -> dict[str, Any]:
    """The content of one version: the same (id, updatedAt, variant) gives the same answer."""
    rng = random.Random(f"{answer_id}/{updated}/{variant}")
    minutes = rng.choice([rng.randrange(0, 20 * 60), rng.randrange(0, 90), rng.randrange(0, 10)])
    return {
        "id": answer_id,
        "time": base - minutes * 60_000 - rng.randrange(60_000),
        "skillId": rng.choice([None, 1, 2, 3]),
        "agentId": rng.choice([None, 10, 11, 12, 13]),
        "score": rng.randint(1, 5),
        "updatedAt": base - 3_600_000 + updated * 1000,
        "comment": f"{answer_id} v{updated}/{variant}",
        "channel": rng.choice(["web", "whatsapp"]),
    }


@dataclass
class Seen:
    """What one client sent and what the replicas acknowledged."""

    latest: dict[str, int] = field(default_factory=dict)  # id -> greatest updatedAt version
    applied_ties: list[tuple[str, int, int]] = field(default_factory=list)  # (id, u, variant)
    accepted: int = 0
    updated: int = 0
    unknown: list[str] = field(default_factory=list)


def post(client: httpx.Client, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    while True:
        response = client.post(path, json=body, headers=headers)
        if response.status_code != 429:  # over a limit: retry as told
            break
        time.sleep(float(response.headers["Retry-After"]) / 20)
    assert response.status_code == 200, response.text
    return response.json()


def run_client(number: int, url: str, headers: dict[str, str], base: int, seen: Seen) -> None:
    rng = random.Random(number)
    operations: list[tuple[str, Any]] = []
    for _ in range(30):
        ids = rng.sample(POOL, 25)
        operations.append(("batch", [(i, rng.choice(VERSIONS)) for i in ids]))
    operations += [("erase", ERASED[number * 3 + k]) for k in range(3)]
    operations += [("tie", (t, u)) for t in TIES for u in (1, 2, 3)]
    rng.shuffle(operations)
    with httpx.Client(base_url=url, timeout=60) as client:
        for kind, what in operations:
            if kind == "batch":
                answers = [version(i, u, base) for i, u in what]
                reply = post(client, INGEST, {"answers": answers}, headers)
                seen.accepted += reply["accepted"]
                seen.updated += reply["updated"]
                for i, u in what:
                    seen.latest[i] = max(seen.latest.get(i, 0), u)
            elif kind == "erase":
                reply = post(client, ERASE, {"ids": [what]}, headers)
                seen.unknown += reply["unknown"]
            else:
                tie_id, u = what
                reply = post(
                    client, INGEST, {"answers": [version(tie_id, u, base, number)]}, headers
                )
                seen.accepted += reply["accepted"]
                if reply["accepted"] + reply["updated"] == 1:
                    seen.applied_ties.append((tie_id, u, number))
                else:
                    assert reply["duplicates"] == 1, reply


def shown(answer: dict[str, Any]) -> dict[str, Any]:
    """An ingested answer as the listing shows it."""
    return {
        "id": answer["id"],
        "time": answer["time"],
        "skillId": -1 if answer["skillId"] is None else answer["skillId"],
        "agentId": -1 if answer["agentId"] is None else answer["agentId"],
        "score": answer["score"],
        "conversationId": None,
        "comment": answer["comment"],
        "channel": answer["channel"],
        "updatedAt": answer["updatedAt"],
        "skillName": None,
        "agentName": None,
    }


def per_score(records: list[dict[str, Any]]) -> list[int]:
    counts = Counter(r["score"] for r in records)
    return [counts[n] for n in range(1, 6)]


def race_and_check(urls: list[str], headers: dict[str, str]) -> None:
    base = int(time.time() * 1000)
    seeded = Seen(latest=dict.fromkeys(POOL[len(POOL) // 2 :], 0))  # half the ids exist already
    with httpx.Client(base_url=urls[0], timeout=60) as client:
        answers = [version(i, 0, base) for i in seeded.latest]
        seeded.accepted = post(client, INGEST, {"answers": answers}, headers)["accepted"]
    seen = [seeded, *(Seen() for _ in range(CLIENTS))]
    with ThreadPoolExecutor(CLIENTS) as pool:
        clients = [
            pool.submit(run_client, n, urls[n % 2], headers, base, seen[n + 1])
            for n in range(CLIENTS)
        ]
        for running in clients:
            running.result()

    latest: dict[str, int] = {}
    for s in seen:
        for answer_id, u in s.latest.items():
            latest[answer_id] = max(latest.get(answer_id, 0), u)
    expected = {
        answer_id: shown(version(answer_id, u, base))
        for answer_id, u in latest.items()
        if answer_id not in ERASED
    }
    # Of the competing versions sharing the greatest updatedAt, exactly one reported it applied.
    applied = [tie for s in seen for tie in s.applied_ties if tie[1] == 3]
    assert sorted(t[0] for t in applied) == sorted(TIES), applied
    for tie_id, u, variant in applied:
        expected[tie_id] = shown(version(tie_id, u, base, variant))
    # Each id was accepted (new) exactly once across replicas, unless it was erased before it
    # came (then its erasure found it ``unknown``).
    unknown = [i for s in seen for i in s.unknown]
    kept = [i for i in latest if i not in ERASED]
    assert sum(s.accepted for s in seen) == len(kept) + len(TIES) + len(ERASED) - len(unknown)

    for url in urls:
        with httpx.Client(base_url=url, timeout=60) as client:
            listed = list_records(client, ACCOUNT, headers, timeframe=1440)
            assert {r["id"]: r for r in listed} == expected
            for params in QUERIES:
                body, records = assert_invariant(client, ACCOUNT, headers, **params)
                check_breakdown(body, records)
            for answer_id in ERASED:  # refused, whatever the version
                late = version(answer_id, 99, base)
                reply = post(client, INGEST, {"answers": [late]}, headers)
                assert reply["rejected"] == [{"index": 0, "id": answer_id, "reason": "erased"}]
    assert len(expected) > 90, "the race must have left most ids on record"
    assert sum(s.updated for s in seen) > 150, "the race must have corrected ids many times"


def check_breakdown(body: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Each skill's and agent's counts are those of its listed records (counts moved with each
    correction, not only the totals)."""
    if "skillsMetricsPerAgent" in body:
        for skill, entry in body["skillsMetricsPerAgent"]["metricsPerSkill"].items():
            mine = [r for r in records if str(r["skillId"]) == skill]
            assert [entry["metricsTotals"][k] for k in SCORE_KEYS] == per_score(mine)
            for agent, metrics in entry["metricsPerAgent"].items():
                theirs = [r for r in mine if str(r["agentId"]) == agent]
                assert [metrics[k] for k in SCORE_KEYS] == per_score(theirs)
    if "agentsMetrics" in body:
        for agent, metrics in body["agentsMetrics"]["metricsPerAgent"].items():
            theirs = [r for r in records if str(r["agentId"]) == agent]
            assert [metrics[k] for k in SCORE_KEYS] == per_score(theirs)


@pytest.mark.slow
@pytest.mark.postgresql
def test_two_serve_processes_on_postgresql_keep_the_latest_version(tmp_path: Path) -> None:
    with postgres_schema() as database, ExitStack() as stack:
        store = open_store(database)
        stack.callback(store.close)
        headers = bearer(add_key(store, ACCOUNT, "read,write"))
        env = {f"CSATDIST_{name.upper()}": str(value) for name, value in LIMITS.items()}
        replicas = []
        for n in range(2):
            replica = start_server(
                database, tmp_path / f"r{n}.log", "--log-level", "warning", env=env
            )
            stack.callback(replica.stop)
            replicas.append(replica)
        race_and_check([r.url for r in replicas], headers)


@pytest.fixture
def two_sqlite_apps(tmp_path: Path) -> Iterator[tuple[list[str], dict[str, str]]]:
    path = f"sqlite:///{tmp_path / 'shared.db'}"
    with ExitStack() as stack:
        stores = [open_store(path) for _ in range(2)]
        for store in stores:
            stack.callback(store.close)
        headers = bearer(add_key(stores[0], ACCOUNT, "read,write"))
        urls = [
            stack.enter_context(live_server(create_app(make_settings(**LIMITS), store=store)))
            for store in stores
        ]
        yield urls, headers


@pytest.mark.sqlite
def test_two_stores_on_one_sqlite_file_keep_the_latest_version(
    two_sqlite_apps: tuple[list[str], dict[str, str]],
) -> None:
    urls, headers = two_sqlite_apps
    race_and_check(urls, headers)
