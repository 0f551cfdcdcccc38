"""Reports from the stores against a naive reference, on both backends: history imported from
long ago, answers of the last day (with corrections and erasures), roll-ups at random points and
late changes to rolled buckets; every zone family (DST, :30, :45), every granularity."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csatdist.answers import Answer as Recorded
from csatdist.buckets import BUCKET_MS, MINUTE_MS, bucket_end_of
from csatdist.errors import InvalidRequest
from csatdist.http import create_app
from csatdist.report import (
    Report,
    ReportQuery,
    SumRow,
    SumsRequest,
    TooManyGroups,
    build_report,
    parse_report_query,
    report_body,
    sums_request,
)
from csatdist.store import Store, open_store
from csatdist.store import history as history_sql
from csatdist.store import postgres as postgres_store
from csatdist.store import sqlite as sqlite_store
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
                reference = build_report("acme", query, MemoryStore(answers).report_sums)
                assert_same(response.json(), report_body(reference))
                assert_refused_one_entry_over(store, MemoryStore(answers), query, reference)


def assert_refused_one_entry_over(
    store: Store, naive: MemoryStore, query: ReportQuery, reference: Report
) -> None:
    """With ``all``, the store counts the ids before it sums: with exactly the series entries
    the report has, it is built; with one fewer, the store refuses it (counts exact up to its
    limit, lower bounds above) and the 400 is the one summing gives, but for "at least"."""
    if not any(s is not None and s.ids is None for s in (query.skills, query.agents)):
        return
    skills, agents = len(reference.skills or {}), len(reference.agents or {})
    if not skills + agents:
        return
    entries = (len(query.boundaries) - 1) * (1 + skills + agents)
    built = build_report("acme", query, store.report_sums, max_series_entries=entries)
    assert_same(report_body(built), report_body(reference))
    request = sums_request("acme", query, max_series_entries=entries - 1)
    assert request.limit is not None
    most = request.limit.most
    with pytest.raises(TooManyGroups) as refused:
        store.report_sums(request)
    for found, actual in ((refused.value.skills, skills), (refused.value.agents, agents)):
        assert (found == actual) if actual <= most else (most < found <= actual)
    with pytest.raises(InvalidRequest) as early:
        build_report("acme", query, store.report_sums, max_series_entries=entries - 1)
    with pytest.raises(InvalidRequest) as summed:  # the naive store does not count first
        build_report("acme", query, naive.report_sums, max_series_entries=entries - 1)
    if max(refused.value.skills, refused.value.agents) <= most:
        assert early.value.invalid_params == summed.value.invalid_params
    else:
        shape = [(p.name, re.sub(r"\d+", "N", p.reason)) for p in summed.value.invalid_params]
        assert [
            (p.name, re.sub(r"\d+", "N", p.reason.replace("at least ", "")))
            for p in early.value.invalid_params
        ] == shape


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


# A refused report costs what its limit does, not what the history holds -------------------

#: The midnight (UTC) before T_13_29: the loaded days end there.
MIDNIGHT = T_13_29 - T_13_29 % DAY


def daily_answers(days: int, agents: int) -> list[tuple[int, ...]]:
    """Bucket rows: every agent answers once a day (a 5), each at its own time of day."""
    rows = []
    for day in range(days):
        start = MIDNIGHT - (days - day) * DAY
        for agent in range(agents):
            minute = agent * 37 % 1440
            end = start + (minute // 5 + 1) * BUCKET_MS
            rows.append((end, 1 + agent % 5, 1000 + agent, 0, 0, 0, 0, 1))
    return rows


@dataclass
class Work:
    #: rows the store's queries returned
    rows: int = 0
    #: SQLite: hundreds of virtual-machine steps; PostgreSQL: rows its plans read
    read: int = 0


def _rows_read(plan: dict[str, Any]) -> int:
    own = 0
    if "Scan" in plan["Node Type"]:
        seen = plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)
        own = seen * plan["Actual Loops"]
    return own + sum(_rows_read(child) for child in plan.get("Plans", []))


@contextlib.contextmanager
def measured_sums(
    database_url: str,
) -> Iterator[tuple[Callable[[SumsRequest], list[SumRow]], Work]]:
    """The stores' report SQL (:func:`csatdist.store.history.report_sums`) on a connection of
    its own, counting the work done."""
    work = Work()
    if database_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as db:

            def step() -> int:
                work.read += 1
                return 0

            db.set_progress_handler(step, 100)

            def run_sqlite(sql: str, params: Sequence[Any]) -> list[Any]:
                rows = db.execute(sql, params).fetchall()
                work.rows += len(rows)
                return rows

            yield (
                lambda r: history_sql.report_sums(run_sqlite, "?", sqlite_store._id_list, r),
                work,
            )
        return
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as pg:

        def run_pg(sql: str, params: Sequence[Any]) -> list[Any]:
            explained = pg.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params).fetchone()
            assert explained is not None
            work.read += _rows_read(explained[0][0]["Plan"])
            rows = pg.execute(sql, params).fetchall()
            work.rows += len(rows)
            return rows

        yield (
            lambda r: history_sql.report_sums(run_pg, "%s", postgres_store._id_list, r),
            work,
        )


def test_a_refused_report_does_not_read_the_range(database_url: str, store: Store) -> None:
    """``agentIds=all`` over the series limit is refused after counting its agents, before
    anything is summed: the store stops once it has seen more agents than fit. So the refusal
    reads no more for 40 days than for 5, for 300 days that start long before the answers, or
    for 1,200 agents than for 400 (rows returned, and SQLite's VM steps or the rows
    PostgreSQL's plans read). Before, it summed the whole range first: 8 and 3 times as much.
    At the limit, the report is built, exact."""
    for chunk in range(0, 40, 5):
        rows = daily_answers(40, 400)[chunk * 400 : (chunk + 5) * 400]
        store.import_history("few", rows)
    store.import_history("many", daily_answers(5, 1200))

    def refusal(account: str, days: int) -> tuple[Work, list[str]]:
        params = {
            "from": str(MIDNIGHT - days * DAY),
            "to": str(MIDNIGHT),
            "agentIds": "all",
        }
        query = parse_report_query(params, now_ms=T_13_29)
        with measured_sums(database_url) as (sums, work), pytest.raises(InvalidRequest) as refused:
            build_report(account, query, sums, max_series_entries=days * (1 + 30))
        return work, [f"{p.name}: {p.reason}" for p in refused.value.invalid_params]

    five, message = refusal("few", 5)
    forty, _ = refusal("few", 40)
    early, _ = refusal("few", 300)  # 260 days without answers first
    crowd, _ = refusal("many", 5)
    assert five.rows <= 4 * 31, five  # a few windows of at most 31 agents, not 5 x 400 rows
    for other in (forty, early, crowd):
        assert other.rows <= 2 * five.rows, (other, five)
        assert other.read <= 2 * five.read + 20, (other, five)

    counted, entries = map(int, re.findall(r"least (\d+)", message[0]))
    assert message == [
        f"agentIds: all matches at least {counted} agents with answers in this range; with 5 day "
        f"periods that makes at least {entries} series entries (periods x (1 + skills + "
        "agents)), more than 155: choose a coarser granularity, a shorter range or a list of ids"
    ]
    assert 30 < counted < 400
    assert entries == 5 * (1 + counted)

    # at the limit it is built and exact; one entry over, refused naming the agents it counted
    query = parse_report_query(
        {"from": str(MIDNIGHT - 5 * DAY), "to": str(MIDNIGHT), "agentIds": "all"}, now_ms=T_13_29
    )
    body = report_body(build_report("few", query, store.report_sums, max_series_entries=2005))
    assert len(body["agents"]) == 400
    assert {a["metricsTotals"]["csat_score5_answers"] for a in body["agents"].values()} == {5}
    assert body["metricsTotals"]["total_answers"] == 2000
    with pytest.raises(InvalidRequest) as refused:
        build_report("few", query, store.report_sums, max_series_entries=2004)
    assert [p.name for p in refused.value.invalid_params] == ["agentIds"]
    assert refused.value.invalid_params[0].reason.startswith(
        "all matches at least 400 agents with answers in this range; with 5 day periods that "
        "makes at least 2005 series entries"
    )


def test_ids_only_in_the_counters_are_counted_too(store: Store) -> None:
    """Before any roll-up, the answers are only in the 5-minute counters: they are counted
    there, for skills and agents at once, and an erased answer's agent no longer counts."""
    hour = T_13_29 - T_13_29 % (60 * MINUTE_MS)
    answers = [Recorded(i, f"c{i}", hour + i * MINUTE_MS, 1 + i % 2, 70 + i, 5) for i in range(6)]
    store.record_answers("acme", answers)
    store.erase_answers("acme", ["c5"], T_13_29)
    params = {
        "from": str(hour - 60 * MINUTE_MS),
        "to": str(hour + 60 * MINUTE_MS),
        "granularity": "hour",
        "skillIds": "all",
        "agentIds": "all",
    }
    query = parse_report_query(params, now_ms=T_13_29)
    assert len(build_report("acme", query, store.report_sums, max_series_entries=16).agents or {})
    with pytest.raises(TooManyGroups) as refused:
        store.report_sums(sums_request("acme", query, max_series_entries=15))
    assert (refused.value.skills, refused.value.agents) == (2, 5)


def test_a_busy_hour_is_rolled_up_in_steps_of_a_bounded_number_of_rows(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A roll-up step (one writer transaction) reads at most ROLL_STEP_ROWS counter rows, a
    bucket at least: an hour of a busy account is rolled up in several short steps instead of
    one long one that every other account's writes waited for. The history is the same."""
    monkeypatch.setattr(history_sql, "ROLL_STEP_ROWS", 2)
    now = T_13_29
    hour_start = now - now % 3_600_000 - 2 * 3_600_000  # a finished hour, 12 buckets
    store.record_answers(
        "acme",
        [
            Recorded(0, f"a{b}-{pair}", hour_start + b * BUCKET_MS + 1, pair, 10 + pair, 1 + b % 5)
            for b in range(12)
            for pair in range(2)  # two counter rows per bucket
        ],
    )
    ends: list[int] = []
    real = history_sql.roll_up_step

    def recorded(*args: Any) -> int:
        ends.append(real(*args))
        return ends[-1]

    monkeypatch.setattr(history_sql, "roll_up_step", recorded)
    app = create_app(make_settings(), store=store, clock=FakeClock(now))
    key = bearer(add_key(store, "acme", "read"))
    params = {"from": str(hour_start), "to": str(hour_start + 3_600_000), "interval": "hour"}
    with TestClient(app) as client:
        before = client.get("/api/account/acme/csat/report", params=params, headers=key).json()
        store.roll_up(hour_start + 3_600_000)
        after = client.get("/api/account/acme/csat/report", params=params, headers=key).json()
    assert after == before
    assert before["metricsTotals"]["total_answers"] == 24
    moved = sorted(set(ends))
    assert len(moved) >= 12  # a bucket (two rows) per step, not the hour in one
    assert moved[-1] == hour_start + 3_600_000
