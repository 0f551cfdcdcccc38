"""Reports from the stores against a naive reference, on both backends: history imported from
long ago, answers of the last day (with corrections and erasures), roll-ups at random points and
late changes to rolled buckets; every zone family (DST, :30, :45), every granularity."""

from __future__ import annotations

import contextlib
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csatdist.answers import Answer as Recorded
from csatdist.buckets import BUCKET_MS, MINUTE_MS, bucket_end_of
from csatdist.http import create_app
from csatdist.report import build_report, parse_report_query, report_body, sums_request
from csatdist.store import Store, open_store
from csatdist.store.sqlite import SQLiteStore
from tests.conftest import add_key, make_settings
from tests.helpers import T_13_29, FakeClock, bearer, postgres_schema
from tests.test_report_core import Answer, MemoryStore, assert_same

DAY = 24 * 60 * MINUTE_MS
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Sao_Paulo",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "America/St_Johns",
]


@contextlib.contextmanager
def fresh_store(backend: str) -> Iterator[Store]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            store = SQLiteStore(Path(tmp) / "r.db")
            yield store
            store.close()
        return
    with postgres_schema() as url:
        store = open_store(url)
        yield store
        store.close()


def totals(rows: Any) -> dict[tuple[Any, ...], tuple[int, ...]]:
    """Rows summed per (segment, skill, agent), zero ones left out."""
    sums: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * 5)
    for segment, skill, agent, counts in rows:
        key = (segment, skill, agent)
        sums[key] = [a + b for a, b in zip(sums[key], counts, strict=True)]
    return {k: tuple(v) for k, v in sums.items() if any(v)}


@st.composite
def old_rows(draw: st.DrawFn, now: int) -> list[tuple[int, ...]]:
    """History from before the counters: bucket rows up to 60 days back."""
    rows = []
    for _ in range(draw(st.integers(0, 30))):
        end = bucket_end_of(now - draw(st.integers(26 * 60, 60 * 24 * 60)) * MINUTE_MS)
        counts = draw(st.lists(st.integers(0, 2), min_size=5, max_size=5))
        rows.append(
            (end, draw(st.sampled_from([1, 2, -1])), draw(st.sampled_from([7, 8])), *counts)
        )
    return rows


@st.composite
def current(draw: st.DrawFn, now: int, ids: list[str]) -> dict[str, Any]:
    time = now - draw(st.integers(0, 1439 * 60)) * 1000
    return {
        "id": draw(st.sampled_from(ids)),
        "time": time,
        "skillId": draw(st.sampled_from([1, 2, None])),
        "agentId": draw(st.sampled_from([7, 8])),
        "score": draw(st.integers(1, 5)),
        "updatedAt": now - draw(st.integers(0, 600)) * 1000,
    }


@st.composite
def report_params(draw: st.DrawFn, now: int) -> dict[str, str]:
    tz = draw(st.sampled_from(ZONES))
    granularity = draw(st.sampled_from(["hour", "day", "week", "month", "total"]))
    days = draw(st.integers(1, 62)) if granularity != "hour" else draw(st.integers(1, 3))
    end_quarters = draw(st.integers(-8, 8))
    to = (now - now % (15 * MINUTE_MS)) + end_quarters * 15 * MINUTE_MS
    params = {
        "tz": tz,
        "granularity": granularity,
        "from": str(to - days * DAY - draw(st.integers(0, 95)) * 15 * MINUTE_MS),
        "to": str(to),
    }
    for name in ("skillIds", "agentIds"):
        choice = draw(st.sampled_from([None, "all", "1", "7,-1", "2,1"]))
        if choice is not None:
            params[name] = choice
    if draw(st.booleans()):
        params["compare"] = "previous"
    return params


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgresql", marks=pytest.mark.postgresql),
    ],
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_report_sums_match_the_reference(backend: str, data: st.DataObject) -> None:
    now = T_13_29
    clock = FakeClock(now)
    ids = [f"a{i}" for i in range(30)]
    with fresh_store(backend) as store:
        history = data.draw(old_rows(now))
        store.import_history("acme", history)
        app = create_app(make_settings(), store=store, clock=clock)
        key = bearer(add_key(store, "acme", "read,write"))
        with TestClient(app) as client:

            def send(batch: list[dict[str, Any]]) -> None:
                response = client.post(
                    "/api/account/acme/csat/answers", json={"answers": batch}, headers=key
                )
                assert response.status_code == 200, response.text

            send(data.draw(st.lists(current(now, ids), max_size=30)))
            rolled = bucket_end_of(now - data.draw(st.integers(0, 1440)) * MINUTE_MS)
            store.roll_up(min(rolled, bucket_end_of(now) - BUCKET_MS))
            send(data.draw(st.lists(current(now, ids), max_size=15)))  # late, and corrections
            erased = data.draw(st.lists(st.sampled_from(ids), max_size=4))
            assert (
                client.post(
                    "/api/account/acme/csat/erasures", json={"ids": erased}, headers=key
                ).status_code
                == 200
            )
            records = client.get(
                "/api/account/acme/csat/answers",
                params={"from": now - 1445 * MINUTE_MS, "to": now + 5 * MINUTE_MS, "limit": 1000},
                headers=key,
            ).json()["answers"]
            answers = [
                Answer(row[0] - BUCKET_MS, row[1], row[2], score)
                for row in history
                for score in range(1, 6)
                for _ in range(row[2 + score])
            ] + [Answer(r["time"], r["skillId"], r["agentId"], r["score"]) for r in records]
            for _ in range(3):
                params = data.draw(report_params(now))
                query = parse_report_query(params, now_ms=now)
                request = sums_request("acme", query)
                assert totals(store.report_sums(request)) == totals(
                    MemoryStore(answers).report_sums(request)
                ), params
                response = client.get("/api/account/acme/csat/report", params=params, headers=key)
                assert response.status_code == 200, response.text
                expected = report_body(
                    build_report("acme", query, MemoryStore(answers).report_sums)
                )
                assert_same(response.json(), expected)


def test_a_report_reads_history_and_the_counters_in_one_answer(store: Store) -> None:
    now = T_13_29
    store.import_history("acme", [(now - 3 * DAY, 1, 7, 0, 0, 0, 0, 2)])
    app = create_app(make_settings(), store=store, clock=FakeClock(now))
    key = bearer(add_key(store, "acme", "read,write"))
    with TestClient(app) as client:
        sent = client.post(
            "/api/account/acme/csat/answers",
            json={"answers": [{"id": "x", "time": now - 60_000, "score": 1, "skillId": 1}]},
            headers=key,
        )
        assert sent.status_code == 200
        params = {"from": str(now - 7 * DAY - now % DAY), "to": str(now - now % DAY + DAY)}
        body = client.get("/api/account/acme/csat/report", params=params, headers=key).json()
        assert body["metricsTotals"]["total_answers"] == 3
        store.roll_up(bucket_end_of(now))  # the same counts, now from the history
        again = client.get("/api/account/acme/csat/report", params=params, headers=key).json()
        assert again == body
        csv = client.get(
            "/api/account/acme/csat/report",
            params=params,
            headers={**key, "Accept": "text/csv"},
        )
        assert csv.status_code == 200
        assert csv.headers["content-type"].startswith("text/csv")
        assert len(csv.text.strip().splitlines()) == 1 + 8  # header and one row per day


def test_a_report_csv_names_skills_and_agents_from_the_directory(store: Store) -> None:
    now = T_13_29
    app = create_app(make_settings(), store=store, clock=FakeClock(now))
    key = bearer(add_key(store, "acme", "read,write"))
    answer = {"id": "n", "time": now - 60_000, "score": 5, "skillId": 12, "agentId": 1015}
    with TestClient(app) as client:
        assert client.post(
            "/api/account/acme/csat/answers", json={"answers": [answer]}, headers=key
        ).is_success
        names = {"skills": {"12": "=Billing"}, "agents": {"1015": "Ana Lima"}}
        assert client.put("/api/account/acme/directory", json=names, headers=key).is_success
        params = {
            "from": str(now - now % DAY),
            "to": str(now - now % DAY + DAY),
            "skillIds": "all",
            "agentIds": "all",
            "granularity": "total",
        }
        csv = client.get(
            "/api/account/acme/csat/report", params=params, headers={**key, "Accept": "text/csv"}
        )
        header, *rows = [line.split(",") for line in csv.text.strip().splitlines()]
        by_group = {(row[5], row[7]): row for row in rows}
        assert header[5:9] == ["skill_id", "skill_name", "agent_id", "agent_name"]
        assert by_group[("12", "")][6] == "'=Billing"  # a spreadsheet shows it, never runs it
        assert by_group[("", "1015")][8] == "Ana Lima"
        body = client.get("/api/account/acme/csat/report", params=params, headers=key).json()
        assert "Billing" not in str(body)  # the JSON body carries ids only, as specified


def test_history_cannot_be_imported_over_the_counters(store: Store) -> None:
    store.record_answers("acme", [Recorded(0, "a", T_13_29, 1, 7, 5)])
    with pytest.raises(ValueError, match="oldest retained bucket"):
        store.import_history("acme", [(bucket_end_of(T_13_29), 1, 7, 1, 0, 0, 0, 0)])
