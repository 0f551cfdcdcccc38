"""The service against a deliberately naive reference model, on random data and queries.

The model keeps every accepted answer as a raw record and recomputes each query from scratch:
no buckets, no SQL, no shared code with the service beyond the public contract. Operations mix
ingests (with corrections: a later ``updatedAt`` replaces a record) and erasures; after them,
every query's distribution must equal the model's, and listing the answer records of the same
window and filters must give exactly the same counts per score (EXTENSIONS.md §6 invariant).
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csatdist.http import create_app
from csatdist.store import Store, open_store
from csatdist.store import sqlite as sqlite_store
from csatdist.store.sqlite import SQLiteStore
from tests.conftest import add_key, make_settings
from tests.helpers import T_13_29, FakeClock, bearer, postgres_schema

MIN = 60_000
RETENTION_MIN = 1445
ACCOUNTS = ("acme", "beta")
POOL = [f"id{i}" for i in range(12)]


@dataclass(frozen=True)
class Raw:
    account: str
    id: str
    time: int
    skill: int
    agent: int
    score: int
    updated: int = 0


def to_ms(value: int | str) -> int:
    if isinstance(value, str):
        return int(datetime.fromisoformat(value).timestamp() * 1000)
    return value


def reference_accepts(answer: dict[str, Any], now: int) -> Raw | None:
    """Independent restatement of the acceptance rules for the generated shapes."""
    answer_id, time, score = answer["id"], to_ms(answer["time"]), answer["score"]
    if not isinstance(answer_id, str) or not 1 <= len(answer_id) <= 128:
        return None
    if type(score) is not int or score not in (1, 2, 3, 4, 5):
        return None
    if not now - RETENTION_MIN * MIN <= time <= now + 5 * MIN:
        return None
    updated = time if answer.get("updatedAt") is None else to_ms(answer["updatedAt"])
    if updated > now + 5 * MIN:
        return None
    skill = -1 if answer["skillId"] is None else answer["skillId"]
    agent = -1 if answer["agentId"] is None else answer["agentId"]
    return Raw("", answer_id, time, skill, agent, score, updated)


class Reference:
    """Every answer on record, by (account, id); an erased id maps to None."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], Raw | None] = {}
        self.corrections = 0

    def ingest(self, account: str, batch: list[dict[str, Any]], now: int) -> dict[str, int]:
        valid = [r for r in (reference_accepts(a, now) for a in batch) if r is not None]
        latest: dict[str, Raw] = {}
        for raw in valid:  # within a request the latest updatedAt wins, the first of equals
            if raw.id not in latest or raw.updated > latest[raw.id].updated:
                latest[raw.id] = raw
        outcome = {"accepted": 0, "updated": 0, "duplicates": len(valid) - len(latest)}
        outcome["rejected"] = len(batch) - len(valid)
        for raw in latest.values():
            key = (account, raw.id)
            held = self.records.get(key)
            if key in self.records and held is None:
                outcome["rejected"] += 1  # erased
            elif held is None:
                outcome["accepted"] += 1
                self.records[key] = dataclasses.replace(raw, account=account)
            elif raw.updated > held.updated:
                outcome["updated"] += 1
                self.corrections += 1
                self.records[key] = dataclasses.replace(raw, account=account)
            else:
                outcome["duplicates"] += 1
        return outcome

    def erase(self, account: str, ids: list[str]) -> dict[str, Any]:
        wanted = list(dict.fromkeys(ids))
        erased = [i for i in wanted if (account, i) in self.records]
        for answer_id in wanted:
            self.records[(account, answer_id)] = None
        return {"erased": len(erased), "unknown": [i for i in wanted if i not in erased]}

    @property
    def accepted(self) -> list[Raw]:
        return [raw for raw in self.records.values() if raw is not None]


def ref_metrics(population: list[Raw]) -> dict[str, Any]:
    counts = [sum(1 for a in population if a.score == s) for s in (1, 2, 3, 4, 5)]
    total = len(population)
    positive = counts[3] + counts[4]
    return {
        "csat_score1_answers": counts[0],
        "csat_score2_answers": counts[1],
        "csat_score3_answers": counts[2],
        "csat_score4_answers": counts[3],
        "csat_score5_answers": counts[4],
        "total_answers": total,
        "positive_answers": positive,
        "csat_score": positive / total if total else 0.0,
    }


def ref_body(population: list[Raw], skills: object, agents: object) -> dict[str, Any]:
    if skills is None and agents is None:
        return {"metricsTotals": ref_metrics(population)}
    body: dict[str, Any] = {}
    if skills is not None:
        per_skill = {}
        for skill in sorted({a.skill for a in population}):
            mine = [a for a in population if a.skill == skill]
            per_skill[str(skill)] = {
                "metricsPerAgent": {
                    str(agent): ref_metrics([a for a in mine if a.agent == agent])
                    for agent in sorted({a.agent for a in mine})
                },
                "metricsTotals": ref_metrics(mine),
            }
        body["skillsMetricsPerAgent"] = {
            "metricsPerSkill": per_skill,
            "metricsTotals": ref_metrics(population),
        }
    if agents is not None:
        body["agentsMetrics"] = {
            "metricsPerAgent": {
                str(agent): ref_metrics([a for a in population if a.agent == agent])
                for agent in sorted({a.agent for a in population})
            },
            "metricsTotals": ref_metrics(population),
        }
    return body


def reference_query(
    accepted: list[Raw],
    account: str,
    now: int,
    timeframe: int,
    skills: str | None,
    agents: str | None,
    interval: int | None,
) -> dict[str, Any]:
    start = (now - timeframe * MIN) // (5 * MIN) * (5 * MIN)
    end = now // (5 * MIN) * (5 * MIN) + 5 * MIN

    def wanted(value: int, selection: str | None) -> bool:
        if selection is None or selection == "all":
            return True
        return value in {int(x) for x in selection.split(",")}

    population = [
        a
        for a in accepted
        if a.account == account
        and start <= a.time < end
        and wanted(a.skill, skills)
        and wanted(a.agent, agents)
    ]
    body = ref_body(population, skills, agents)
    if interval:
        spans = []
        hi = end
        while hi > start:
            spans.append((max(hi - interval * MIN, start), hi))
            hi -= interval * MIN
        body["metricsByIntervals"] = [
            {
                "timestamp": hi,
                "metricsData": ref_body(
                    [a for a in population if lo <= a.time < hi], skills, agents
                ),
            }
            for lo, hi in reversed(spans)
        ]
    return body


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


@st.composite
def answers(draw: st.DrawFn, now: int) -> dict[str, Any]:
    offset_min = draw(
        st.one_of(
            st.integers(-1500, 10),
            st.sampled_from([-1445, -1440, -5, 0, 5]),  # around the acceptance edges
        )
    )
    time_ms = now + offset_min * MIN + draw(st.sampled_from([0, 1, -1, 30_000]))
    return {
        "id": draw(st.sampled_from([*POOL, "", 7])),
        "time": draw(st.sampled_from([time_ms, iso(time_ms)])),
        "skillId": draw(st.sampled_from([None, 1, 2, 3])),
        "agentId": draw(st.sampled_from([None, 10, 11, 12])),
        "score": draw(
            st.one_of(st.integers(1, 5), st.integers(1, 5), st.sampled_from([0, 6, "5"]))
        ),
        # None: made at its time; later: a correction of an earlier version; far: refused
        "updatedAt": draw(
            st.sampled_from([None, None, time_ms + MIN, time_ms + 2 * MIN, now + 10 * MIN])
        ),
        "comment": draw(st.sampled_from([None, "ok", "slow, then fine"])),
    }


@st.composite
def version_of(draw: st.DrawFn, raw: Raw, now: int) -> dict[str, Any]:
    """Another version of a recorded answer: moved in time, skill, agent or score, made later
    (a correction) or at the same instant (a duplicate)."""
    return {
        "id": raw.id,
        "time": draw(st.sampled_from([raw.time, now - 3 * MIN, now - 90 * MIN])),
        "skillId": draw(st.sampled_from([None, 1, 2, 3])),
        "agentId": draw(st.sampled_from([None, 10, 11, 12])),
        "score": draw(st.integers(1, 5)),
        "updatedAt": raw.updated + draw(st.sampled_from([0, 1, MIN])),
    }


def selections() -> st.SearchStrategy[str | None]:
    return st.one_of(
        st.none(),
        st.just("all"),
        st.lists(st.sampled_from([-1, 1, 2, 3, 10, 11, 12, 99]), min_size=1, max_size=3).map(
            lambda ids: ",".join(map(str, ids))
        ),
    )


@st.composite
def queries(draw: st.DrawFn) -> tuple[int, str | None, str | None, int | None]:
    timeframe = draw(st.one_of(st.sampled_from([1, 5, 7, 20, 60, 1440]), st.integers(1, 1440)))
    divisors = [d for d in range(5, timeframe + 1, 5) if timeframe % d == 0]
    interval = draw(st.one_of(st.none(), st.sampled_from(divisors))) if divisors else None
    return timeframe, draw(selections()), draw(selections()), interval


@contextlib.contextmanager
def fresh_store(backend: str) -> Iterator[Store]:
    """A new, empty store, closed however the example ends: Hypothesis ends some by raising
    inside them (a draw past its data), and a store left open kept its threads, which folded
    a dropped schema for the rest of the session."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            store: Store = SQLiteStore(Path(tmp) / "p.db")
            try:
                yield store
            finally:
                store.close()
        return
    with postgres_schema() as url:
        store = open_store(url)
        try:
            yield store
        finally:
            store.close()


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
    ],
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    start=st.integers(0, 10 * MIN),
    batches=st.integers(2, 6),
    later=st.integers(0, 12 * MIN),
)
def test_service_matches_reference_model(
    backend: str, data: st.DataObject, start: int, batches: int, later: int
) -> None:
    clock = FakeClock(T_13_29 + start)
    model = Reference()
    # SQLite folds its logs after every write (in steps of a few rows, in the background, as
    # operations go on) or only when a read needs it.
    fold_after = data.draw(st.sampled_from([1, 10**9]), label="fold after rows")
    with (
        mock.patch.object(sqlite_store, "FOLD_AFTER_ROWS", fold_after),
        mock.patch.object(sqlite_store, "FOLD_STEP_ROWS", 3),
        fresh_store(backend) as store,
    ):
        keys = {acct: bearer(add_key(store, acct, "read,write")) for acct in ACCOUNTS}
        app = create_app(make_settings(), store=store, clock=clock)
        with TestClient(app) as client:
            for number in range(batches):
                account = data.draw(st.sampled_from(ACCOUNTS))
                kinds = ["ingest", "correct", "correct", "erase"] if number else ["ingest"]
                operation = data.draw(st.sampled_from(kinds))
                if operation == "erase":
                    ids = data.draw(st.lists(st.sampled_from(POOL), max_size=4))
                    response = client.post(
                        f"/api/account/{account}/csat/erasures",
                        json={"ids": ids},
                        headers=keys[account],
                    )
                    assert response.status_code == 200, response.text
                    assert response.json() == model.erase(account, ids)
                    continue
                batch = data.draw(st.lists(answers(clock.now_ms), min_size=4, max_size=25))
                if operation == "correct":  # versions of answers on record: later or the same
                    account = model.accepted[0].account if model.accepted else account
                    mine = [raw for raw in model.accepted if raw.account == account]
                    batch = [*(data.draw(version_of(raw, clock.now_ms)) for raw in mine[:6])]
                    batch += batch[:1]  # the same correction twice in one request
                expected = model.ingest(account, batch, clock.now_ms)
                response = client.post(
                    f"/api/account/{account}/csat/answers",
                    json={"answers": batch},
                    headers=keys[account],
                )
                assert response.status_code == 200
                result = response.json()
                assert {**result, "rejected": len(result["rejected"])} == expected
            clock.now_ms += later
            for _ in range(4):
                account = data.draw(st.sampled_from(ACCOUNTS))
                timeframe, skills, agents, interval = data.draw(queries())
                params: dict[str, Any] = {"v": 1, "timeframe": timeframe}
                for name, value in (
                    ("skillIds", skills),
                    ("agentIds", agents),
                    ("interval", interval),
                ):
                    if value is not None:
                        params[name] = value
                response = client.get(
                    f"/operations/api/account/{account}/msgcsatdistribution",
                    params=params,
                    headers=keys[account],
                )
                assert response.status_code == 200, response.text
                body = response.json()
                assert body == reference_query(
                    model.accepted, account, clock.now_ms, timeframe, skills, agents, interval
                )
                listed = list_all(client, account, keys[account], params, data)
                section = body.get("skillsMetricsPerAgent", body.get("agentsMetrics", body))
                counts = section["metricsTotals"]
                assert [sum(1 for r in listed if r["score"] == n) for n in range(1, 6)] == [
                    counts[f"csat_score{n}_answers"] for n in range(1, 6)
                ]


def list_all(
    client: TestClient,
    account: str,
    headers: dict[str, str],
    params: dict[str, Any],
    data: st.DataObject,
) -> list[dict[str, Any]]:
    """Every record of the query's window and filters, a page at a time."""
    query = {k: v for k, v in params.items() if k in ("timeframe", "skillIds", "agentIds")}
    query["limit"] = data.draw(st.sampled_from([1, 3, 1000]))
    listed: list[dict[str, Any]] = []
    while True:
        response = client.get(f"/api/account/{account}/csat/answers", params=query, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        listed += page["answers"]
        if page["next"] is None:
            break
        query["cursor"] = page["next"]
    assert len({r["id"] for r in listed}) == len(listed)  # never twice
    return listed
