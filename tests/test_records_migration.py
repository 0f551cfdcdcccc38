"""Opening a database made before answer records existed (schema 4: ids only, in ``answer_ids``)
with the current store, which migrates it (migration 0005; src/csatdist/records.py: records kept
from before records existed hold an id and a time only).

The old answers stay counted; a replayed copy of one is a duplicate; none is listed; a
correction of one is refused with the reason the service gives; an erasure of one refuses its
copies afterwards; and they leave with the retention purge like any answer.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from csatdist.buckets import MINUTE_MS, bucket_end_of
from csatdist.http import create_app
from csatdist.records import NOT_CORRECTABLE
from csatdist.store import Store, open_store, sqlite_path
from csatdist.store.migrations import migrations_for
from tests.conftest import Api, add_key, make_settings
from tests.helpers import LATEST_SCHEMA, SCORE_KEYS, T_13_29, FakeClock, bearer, list_records

RETENTION = 1445
OLD = [  # (account, id, time, skill, agent, score) as schema 4 counted them
    ("acme", f"old{n}", T_13_29 - n * 7 * MINUTE_MS - n, n % 3, 10 + n % 2, 1 + n % 5)
    for n in range(50)
]
#: An account whose answers were counted before schema 3 (no account_versions row) and which
#: has not written since.
DORMANT = [("dormant", f"d{n}", T_13_29 - n * 11 * MINUTE_MS, 1, 1, 4) for n in range(10)]


def v4_statements(backend: str) -> Iterator[str]:
    yield (
        "CREATE TABLE schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)"
    )
    for migration in migrations_for(backend)[:4]:
        yield migration.sql
        yield (
            "INSERT INTO schema_migrations (version, name, applied_ms)"
            f" VALUES ({migration.version}, '{migration.name}', 0)"
        )
    buckets: Counter[tuple[str, int, int, int, int]] = Counter()
    for account, answer_id, time_ms, skill, agent, score in OLD + DORMANT:
        yield (
            "INSERT INTO answer_ids (account_id, answer_id, answer_time)"
            f" VALUES ('{account}', '{answer_id}', {time_ms})"
        )
        buckets[(account, bucket_end_of(time_ms), skill, agent, score)] += 1
    for (account, end, skill, agent, score), count in buckets.items():
        counts = [count if s == score else 0 for s in range(1, 6)]
        yield (
            "INSERT INTO buckets (account_id, bucket_end, skill_id, agent_id,"
            " score1, score2, score3, score4, score5) VALUES"
            f" ('{account}', {end}, {skill}, {agent}, {', '.join(map(str, counts))})"
            " ON CONFLICT (account_id, bucket_end, skill_id, agent_id) DO UPDATE SET"
            " score1 = buckets.score1 + excluded.score1, score2 = buckets.score2 + excluded.score2,"
            " score3 = buckets.score3 + excluded.score3, score4 = buckets.score4 + excluded.score4,"
            " score5 = buckets.score5 + excluded.score5"
        )
    yield "INSERT INTO account_versions (account_id, version) VALUES ('acme', 1)"


def create_v4_database(url: str) -> None:
    backend = "postgresql" if url.startswith("postgresql") else "sqlite"
    if backend == "postgresql":
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            for statement in v4_statements(backend):
                conn.execute(statement.encode())
        return
    path = sqlite_path(url)
    assert path is not None
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for statement in v4_statements(backend):
            conn.executescript(statement)


def count_records(url: str, account: str) -> int:
    sql = f"SELECT count(*) FROM answers WHERE account_id = '{account}'"
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url) as conn:
            row = conn.execute(sql.encode()).fetchone()
            return int(row[0]) if row else 0
    path = sqlite_path(url)
    assert path is not None
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute(sql).fetchone()[0])


@pytest.fixture
def migrated(database_url: str) -> Iterator[tuple[str, Api]]:
    create_v4_database(database_url)
    store: Store = open_store(database_url)
    clock = FakeClock()
    try:
        app = create_app(make_settings(), store=store, clock=clock)
        with TestClient(app, raise_server_exceptions=False) as client:
            token = bearer(add_key(store, "acme", "read,write"))
            yield database_url, Api(client, store, clock, token, token)
    finally:
        store.close()


def as_sent(old: tuple[str, str, int, int, int, int]) -> dict[str, Any]:
    _, answer_id, time_ms, skill, agent, score = old
    return {"id": answer_id, "time": time_ms, "skillId": skill, "agentId": agent, "score": score}


def per_score(answers: list[tuple[str, str, int, int, int, int]]) -> list[int]:
    counts = Counter(a[5] for a in answers)
    return [counts[s] for s in range(1, 6)]


def totals(api: Api, **params: Any) -> list[int]:
    body: Any = api.query(timeframe=1440, **params)
    return [body["metricsTotals"][key] for key in SCORE_KEYS]


def test_answers_counted_before_records_stay_counted_unlisted_and_uncorrectable(
    migrated: tuple[str, Api],
) -> None:
    url, api = migrated
    assert api.store.schema_version() == LATEST_SCHEMA
    assert totals(api) == per_score(OLD)
    by_skill: Any = api.query(timeframe=1440, skillIds="all", agentIds="all")
    for skill, entry in by_skill["skillsMetricsPerAgent"]["metricsPerSkill"].items():
        for agent, metrics in entry["metricsPerAgent"].items():
            mine = [a for a in OLD if (str(a[3]), str(a[4])) == (skill, agent)]
            assert [metrics[k] for k in SCORE_KEYS] == per_score(mine)
    assert list_records(api.client, "acme", api.read, timeframe=1440) == []

    # A replayed copy is a duplicate, an older or equal version too; a later one is refused.
    copies = [as_sent(a) for a in OLD]
    assert api.ingest(copies) == {"accepted": 0, "updated": 0, "duplicates": 50, "rejected": []}
    corrections = [{**c, "score": 1, "updatedAt": c["time"] + 1} for c in copies]
    reply: Any = api.ingest(corrections)
    assert (reply["accepted"], reply["updated"], reply["duplicates"]) == (0, 0, 0)
    assert reply["rejected"] == [
        {"index": n, "id": c["id"], "reason": NOT_CORRECTABLE} for n, c in enumerate(corrections)
    ]
    assert totals(api) == per_score(OLD)

    # New answers are recorded, listed and counted beside the old ones.
    fresh = [{"id": f"new{n}", "time": T_13_29 - n * MINUTE_MS, "score": 5} for n in range(5)]
    assert api.ingest(fresh)["accepted"] == 5
    assert {r["id"] for r in list_records(api.client, "acme", api.read, timeframe=1440)} == {
        a["id"] for a in fresh
    }
    assert totals(api) == [a + b for a, b in zip(per_score(OLD), [0, 0, 0, 0, 5], strict=True)]

    # Erasing an old id refuses its copies from then on; its count cannot be found to remove
    # (records.py: records from before records existed have no place).
    response = api.client.post(
        "/api/account/acme/csat/erasures", json={"ids": ["old3"]}, headers=api.write
    )
    assert response.json() == {"erased": 1, "unknown": []}
    assert api.ingest([copies[3]])["rejected"] == [{"index": 0, "id": "old3", "reason": "erased"}]

    # The retention purge takes them, records and counts alike.
    api.clock.advance(RETENTION + 10)
    result = api.store.purge(api.clock() - RETENTION * MINUTE_MS)
    assert result.records >= 49 + 5
    assert count_records(url, "acme") == 0
    assert totals(api) == [0, 0, 0, 0, 0]
    late = api.ingest(copies[:1])["rejected"]
    assert late[0]["reason"].startswith("time is older than the retention")


def test_ids_of_an_account_idle_since_before_schema_3_leave_with_the_retention(
    migrated: tuple[str, Api],
) -> None:
    url, api = migrated
    assert count_records(url, "dormant") == len(DORMANT)
    api.clock.advance(RETENTION + 10)
    api.store.purge(api.clock() - RETENTION * MINUTE_MS)
    assert count_records(url, "dormant") == 0
