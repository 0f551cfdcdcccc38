"""The report core end to end: parameters, the Wilson interval, assembly through the storage
seam, JSON and CSV — against a naive in-memory store and a naive reference that sums raw
answers per calendar period (periods from the minute walk of ``test_report_periods``)."""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csatdist.errors import InvalidRequest
from csatdist.query import ALL, Selection
from csatdist.report import (
    CSV_COLUMNS,
    MAX_FUTURE_MS,
    Compare,
    Granularity,
    GroupLimit,
    Period,
    ReportQuery,
    SumRow,
    SumsRequest,
    TooManyGroups,
    assemble_report,
    build_report,
    first_instant_of_date,
    parse_report_query,
    report_body,
    report_csv,
    report_csv_rows,
    sums_request,
    wilson_interval,
)
from tests.test_report_periods import (
    DAY,
    HOUR,
    MINUTE,
    local,
    ms,
    naive_boundaries,
    offset_change_days,
)

STEP = 15 * MINUTE
#: 2026-11-27 13:29:00 UTC, the distribution tests' "now".
NOW = ms("2026-11-27T13:29:00+00:00")
M_KEYS = [
    "csat_score1_answers",
    "csat_score2_answers",
    "csat_score3_answers",
    "csat_score4_answers",
    "csat_score5_answers",
    "total_answers",
    "positive_answers",
    "csat_score",
    "csat_score_low",
    "csat_score_high",
]
Z = 1.959963984540054


def parse(now_ms: int = NOW, **params: object) -> ReportQuery:
    return parse_report_query(params, now_ms=now_ms)


def problems(now_ms: int = NOW, history_days: int = 400, **params: object) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as caught:
        parse_report_query(params, now_ms=now_ms, history_days=history_days)
    found = {p.name: p.reason for p in caught.value.invalid_params}
    assert len(found) == len(caught.value.invalid_params), "one problem per parameter"
    return found


# -- parameters -------------------------------------------------------------------------------


def test_minimal_query_and_defaults() -> None:
    query = parse(**{"from": "2026-11-01", "to": "2026-11-03"})
    assert query == ReportQuery(
        from_ms=ms("2026-11-01T00:00:00+00:00"),
        to_ms=ms("2026-11-03T00:00:00+00:00"),
        tz="UTC",
        granularity=Granularity.DAY,
        boundaries=(
            ms("2026-11-01T00:00:00+00:00"),
            ms("2026-11-02T00:00:00+00:00"),
            ms("2026-11-03T00:00:00+00:00"),
        ),
    )
    assert query.previous is None
    assert query.periods == [
        Period(query.boundaries[0], query.boundaries[1]),
        Period(*query.boundaries[1:]),
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-01T10:15:00Z", "2026-11-01T10:15:00+00:00"),
        ("2026-11-01t10:15:00z", "2026-11-01T10:15:00+00:00"),
        ("2026-11-01 11:15:00+01:00", "2026-11-01T10:15:00+00:00"),
        ("2026-11-01T05:00:00-05:15", "2026-11-01T10:15:00+00:00"),
        ("2026-11-01T10:15:00.000000000Z", "2026-11-01T10:15:00+00:00"),
        (" 1793528100000 ", "2026-11-01T10:15:00+00:00"),
        ("+1793528100000", "2026-11-01T10:15:00+00:00"),
        (1793528100000, "2026-11-01T10:15:00+00:00"),
        ("2026-11-01", "2026-11-01T00:00:00+00:00"),
    ],
)
def test_time_forms(raw: object, expected: str) -> None:
    query = parse(**{"from": raw, "to": "2026-11-02", "granularity": "total"})
    assert query.from_ms == ms(expected)


def test_sub_millisecond_fractions_are_dropped() -> None:
    found = problems(**{"from": "2026-11-01T10:15:00.9999999Z", "to": "2026-11-02"})
    assert found["from"].startswith("2026-11-01T10:15:00.999Z is not on a 15-minute step")


def test_a_date_is_midnight_in_tz() -> None:
    query = parse(**{"from": "2026-11-01", "to": "2026-11-02", "tz": "Asia/Kathmandu"})
    assert query.from_ms == ms("2026-11-01T00:00:00+05:45")
    assert query.tz == "Asia/Kathmandu"
    assert query.zone == ZoneInfo("Asia/Kathmandu")


def test_a_date_whose_midnight_is_skipped_starts_at_the_end_of_the_gap() -> None:
    # America/Santiago jumps from 2026-09-06 00:00 to 01:00.
    query = parse(**{"from": "2026-09-06", "to": "2026-09-07", "tz": "America/Santiago"})
    assert query.from_ms == ms("2026-09-06T01:00:00-03:00")
    assert query.to_ms - query.from_ms == 23 * HOUR


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("2026-02-30", "is not a valid date"),
        ("2026-13-01", "is not a valid date"),
        ("2026-11-01T25:00:00Z", "is not a valid date-time"),
        ("2026-11-01T23:59:60Z", "is not a valid date-time"),
        ("2026-11-01T10:00:00+24:00", "is not a valid date-time"),
        ("2026-11-01T10:00:00", "has no UTC offset: add Z or ±hh:mm"),
        ("2026-11-01T10:00:00 01:00", "write the offset as %2B"),
        ("2026-11-01T10:00Z", "is not RFC 3339"),
        ("yesterday", "is not RFC 3339"),
        ("1.5e12", "is not RFC 3339"),
        ("", "is required"),
        (None, "is required"),
        (True, "must be RFC 3339"),
        (1.5, "must be RFC 3339"),
        ("1" * 5000, "is too long (5000 characters)"),
        ("9" * 20, "is too large for epoch milliseconds"),
        ("HUGE", "the number is outside the supported range"),
        ("-99999999999999", "is outside the supported range"),
        ("0002-12-31", "is outside years 0003 to 9996"),
        ("0000-01-01", "is not a valid date"),
    ],
)
def test_bad_times(raw: object, reason: str) -> None:
    raw = 10**5000 if raw == "HUGE" else raw  # a JSON-sized integer; no test id can show it
    found = problems(**{"from": raw, "to": "2026-11-02"})
    assert set(found) == {"from"}
    assert reason in found["from"]


def test_both_ends_are_required() -> None:
    assert set(problems()) == {"from", "to"}


def test_unknown_zone_is_named() -> None:
    found = problems(**{"from": "2026-11-01", "to": "2026-11-02", "tz": "Mars/Olympus_Mons"})
    assert found == {
        "tz": "unknown time zone 'Mars/Olympus_Mons': expected an IANA name such as Europe/Berlin"
    }


@pytest.mark.parametrize(
    "name",
    ["europe/berlin", "localtime", "posixrules", "../etc/passwd", "/etc/localtime", "x" * 65, 7],
)
def test_zones_that_are_refused(name: object) -> None:
    found = problems(**{"from": "2026-11-01", "to": "2026-11-02", "tz": name})
    assert set(found) == {"tz"}  # a date needs a zone, but only the zone is reported


def test_a_miscased_zone_gets_a_suggestion() -> None:
    found = problems(**{"from": "2026-11-01", "to": "2026-11-02", "tz": "europe/berlin"})
    assert found["tz"].endswith("(did you mean Europe/Berlin?)")


@pytest.mark.parametrize(
    ("raw", "expected"), [("hour", "hour"), ("Week", "week"), (" month ", "month"), ("", "day")]
)
def test_granularities(raw: str, expected: str) -> None:
    query = parse(**{"from": "2026-10-01", "to": "2026-11-01", "granularity": raw})
    assert query.granularity == Granularity(expected)


def test_bad_granularity_and_compare() -> None:
    found = problems(
        **{"from": "2026-10-01", "to": "2026-11-01", "granularity": "minute", "compare": "next"}
    )
    assert found == {
        "granularity": "must be one of hour, day, week, month, total; got 'minute'",
        "compare": "must be 'previous' or absent, got 'next'",
    }


def test_compare_previous_is_the_range_of_equal_length_before() -> None:
    query = parse(**{"from": "2026-11-01", "to": "2026-11-08", "compare": "previous"})
    assert query.compare is Compare.PREVIOUS
    assert query.previous == Period(
        ms("2026-10-25T00:00:00+00:00"), ms("2026-11-01T00:00:00+00:00")
    )


def test_skill_and_agent_ids_follow_the_distribution() -> None:
    query = parse(
        **{"from": "2026-11-01", "to": "2026-11-02", "skillIds": "all", "agentIds": " 4, -1 "}
    )
    assert query.skills == ALL
    assert query.agents == Selection(frozenset({4, -1}))
    assert set(problems(**{"from": "2026-11-01", "to": "2026-11-02", "skillIds": "1,x"})) == {
        "skillIds"
    }


@pytest.mark.parametrize("to", ["2026-11-01", "2026-10-31"])
def test_empty_or_reversed_range(to: str) -> None:
    found = problems(**{"from": "2026-11-01", "to": to})
    assert set(found) == {"to"}
    assert found["to"].startswith("must be after from (2026-11-01T00:00:00Z)")


def test_history_limits() -> None:
    oldest = NOW - 400 * DAY  # 2025-10-23T13:29Z
    found = problems(**{"from": "2025-10-23", "to": "2025-10-24"})
    assert found == {
        "from": "2025-10-23T00:00:00Z is older than the history limit: history is kept for 400 "
        "days, so from must be at or after 2025-10-23T13:29:00Z"
    }
    parse(**{"from": "2025-10-24", "to": "2025-10-25"})
    found = problems(history_days=30, **{"from": "2026-10-01", "to": "2026-11-15"})
    assert set(found) == {"from", "to"}
    assert "is 45 days long; at most 30" in found["to"]
    assert oldest == ms("2025-10-23T13:29:00+00:00")


def test_to_may_be_up_to_32_days_ahead() -> None:
    assert MAX_FUTURE_MS == 32 * DAY
    now = ms("2026-11-27T13:30:00+00:00")
    parse(now_ms=now, **{"from": "2026-11-01", "to": str(now + MAX_FUTURE_MS)})
    found = problems(now_ms=now, **{"from": "2026-11-01", "to": str(now + MAX_FUTURE_MS + STEP)})
    assert found["to"].endswith("to must be at or before 2026-12-29T13:30:00Z")


def test_compare_must_not_reach_beyond_the_history() -> None:
    found = problems(**{"from": "2026-03-01", "to": "2026-09-01", "compare": "previous"})
    assert found == {
        "compare": "the previous range would start at 2025-08-29T00:00:00Z, before the history "
        "limit 2025-10-23T13:29:00Z (history is kept for 400 days); shorten the range or leave "
        "out compare"
    }
    parse(**{"from": "2026-03-01", "to": "2026-09-01"})


def test_several_problems_at_once() -> None:
    found = problems(
        **{
            "from": "2026-02-30",
            "to": "soon",
            "tz": "Nowhere",
            "granularity": "fortnight",
            "skillIds": "a",
            "agentIds": "1,,2",
            "compare": "yes",
        }
    )
    assert set(found) == {"from", "to", "tz", "granularity", "skillIds", "agentIds", "compare"}


def test_period_cap() -> None:
    # 400 days by hour fit (9,601 periods in Berlin: two fall-backs, one spring-forward);
    # 417 days do not.
    query = parse(
        **{"from": "2025-10-24", "to": "2026-11-28", "granularity": "hour", "tz": "Europe/Berlin"}
    )
    assert len(query.periods) == 400 * 24 + 1
    found = problems(
        history_days=500, **{"from": "2025-10-01", "to": "2026-11-22", "granularity": "hour"}
    )
    assert found == {
        "granularity": "hour gives more than 10000 periods from 2025-10-01T00:00:00Z to "
        "2026-11-22T00:00:00Z; choose a coarser granularity or a shorter range"
    }


def test_series_entries_cap_for_explicit_ids() -> None:
    ids = ",".join(str(i) for i in range(10))
    found = problems(
        **{"from": "2025-10-24", "to": "2026-11-28", "granularity": "hour", "agentIds": ids}
    )
    assert found["granularity"].startswith(
        "9600 hour periods x (1 + 10 skillIds and agentIds) make 105600 series entries, more "
        "than 100000"
    )
    many = ",".join(str(i) for i in range(200))
    parse(**{"from": "2025-10-24", "to": "2026-11-28", "skillIds": many})


def test_ends_must_be_on_the_storage_grid() -> None:
    found = problems(**{"from": "2026-11-01T10:07:00Z", "to": "1795786140001"})
    assert set(found) == {"from", "to"}
    assert "is not on a 15-minute step of UTC" in found["from"]


def test_a_zone_off_the_storage_grid_is_named() -> None:
    found = problems(
        now_ms=ms("1971-06-01T00:00:00+00:00"),
        **{"from": "1971-03-01", "to": "1971-03-08", "tz": "Africa/Monrovia"},
    )
    assert set(found) == {"tz"}
    assert "UTC offset of -00:44:30" in found["tz"]


# -- the Wilson score interval ----------------------------------------------------------------


def wilson_reference(positive: int, total: int) -> tuple[float, float]:
    """The textbook form: centre ± half-width."""
    if total == 0:
        return 0.0, 0.0
    p = positive / total
    denominator = 1 + Z * Z / total
    centre = (p + Z * Z / (2 * total)) / denominator
    half = Z / denominator * math.sqrt(p * (1 - p) / total + Z * Z / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


@pytest.mark.parametrize(
    ("positive", "total", "low", "high"),
    [
        (0, 0, 0.0, 0.0),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (81, 100, 0.7222, 0.8749),
        (1, 1, 0.2065, 1.0),
        (50, 100, 0.4038, 0.5962),
    ],
)
def test_wilson_known_values(positive: int, total: int, low: float, high: float) -> None:
    found = wilson_interval(positive, total)
    assert found == pytest.approx((low, high), abs=5e-5)
    assert found == pytest.approx(wilson_reference(positive, total), rel=1e-12, abs=1e-15)


def test_wilson_ends_are_exact_at_the_extremes() -> None:
    assert wilson_interval(0, 7)[0] == 0.0
    assert wilson_interval(7, 7)[1] == 1.0


@given(st.integers(1, 10**9).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_brackets_the_score(case: tuple[int, int]) -> None:
    positive, total = case
    low, high = wilson_interval(positive, total)
    assert 0.0 <= low <= positive / total <= high <= 1.0
    assert (low, high) == pytest.approx(wilson_reference(positive, total), rel=1e-9, abs=1e-12)


# -- a naive store and a naive reference ------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    time: int
    skill: int
    agent: int
    score: int
    account: str = "acme"


@dataclass
class MemoryStore:
    """The storage seam done the plain way: every answer looked at for every request."""

    answers: list[Answer]
    requests: list[SumsRequest] = field(default_factory=list)

    def report_sums(self, request: SumsRequest) -> list[SumRow]:
        self.requests.append(request)
        bounds = request.boundaries
        assert all(b % STEP == 0 for b in bounds), "the seam promises 15-minute steps"
        assert list(bounds) == sorted(set(bounds))
        sums: dict[tuple[int, int | None, int | None], list[int]] = {}
        for answer in self.answers:
            if answer.account != request.account_id:
                continue
            if not admits(request.skills, answer.skill) or not admits(request.agents, answer.agent):
                continue
            for segment in range(len(bounds) - 1):
                if bounds[segment] <= answer.time < bounds[segment + 1]:
                    key = (
                        segment,
                        answer.skill if request.by_skill else None,
                        answer.agent if request.by_agent else None,
                    )
                    sums.setdefault(key, [0] * 5)[answer.score - 1] += 1
        return [SumRow(seg, skill, agent, tuple(c)) for (seg, skill, agent), c in sums.items()]


def admits(selection: Selection | None, value: int) -> bool:
    return selection is None or selection.ids is None or value in selection.ids


def ref_metrics(answers: list[Answer]) -> dict[str, Any]:
    counts = [sum(1 for a in answers if a.score == s) for s in range(1, 6)]
    total, positive = sum(counts), counts[3] + counts[4]
    low, high = wilson_reference(positive, total)
    return dict(
        zip(
            M_KEYS,
            [*counts, total, positive, positive / total if total else 0.0, low, high],
            strict=True,
        )
    )


def reference_body(
    answers: list[Answer],
    from_ms: int,
    to_ms: int,
    tz: str,
    granularity: Granularity,
    skills: Selection | None,
    agents: Selection | None,
    compare: bool,
) -> dict[str, Any]:
    zone = ZoneInfo(tz)
    bounds = naive_boundaries(from_ms, to_ms, zone, granularity, step=STEP)
    spans = list(itertools.pairwise(bounds))
    population = [
        a
        for a in answers
        if a.account == "acme" and admits(skills, a.skill) and admits(agents, a.agent)
    ]
    in_range = [a for a in population if from_ms <= a.time < to_ms]

    def group(members: list[Answer]) -> dict[str, Any]:
        return {
            "metricsTotals": ref_metrics(members),
            "series": [
                {
                    "start": s,
                    "end": e,
                    "metrics": ref_metrics([a for a in members if s <= a.time < e]),
                }
                for s, e in spans
            ],
        }

    body: dict[str, Any] = {
        "from": from_ms,
        "to": to_ms,
        "tz": tz,
        "granularity": granularity.value,
    }
    body.update(group(in_range))
    if skills is not None:
        ids = sorted({a.skill for a in in_range})
        body["skills"] = {str(i): group([a for a in in_range if a.skill == i]) for i in ids}
    if agents is not None:
        ids = sorted({a.agent for a in in_range})
        body["agents"] = {str(i): group([a for a in in_range if a.agent == i]) for i in ids}
    if compare:
        start = 2 * from_ms - to_ms
        body["previous"] = {
            "from": start,
            "to": from_ms,
            "metricsTotals": ref_metrics([a for a in population if start <= a.time < from_ms]),
        }
    return body


def assert_same(actual: Any, expected: Any, path: str = "body") -> None:
    """Equal, keys in the same order; the Wilson ends up to rounding (other formula)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), path
        assert list(actual) == list(expected), path
        for key, value in expected.items():
            if key in ("csat_score_low", "csat_score_high"):
                assert actual[key] == pytest.approx(value, rel=1e-12, abs=1e-15), f"{path}.{key}"
            else:
                assert_same(actual[key], value, f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), path
        assert len(actual) == len(expected), path
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{path}[{index}]")
    else:
        assert actual == expected, path
        assert type(actual) is type(expected), path


def run(
    answers: list[Answer], params: Mapping[str, object], now_ms: int = NOW, account: str = "acme"
) -> tuple[dict[str, Any], ReportQuery, MemoryStore]:
    query = parse_report_query(params, now_ms=now_ms)
    store = MemoryStore(answers)
    report = build_report(account, query, store.report_sums)
    return report_body(report), query, store


# -- assembly on hand-made cases --------------------------------------------------------------

NOV_1 = ms("2026-11-01T00:00:00+00:00")


def test_no_filters_no_groups_and_every_period_present() -> None:
    answers = [Answer(NOV_1 + HOUR, 1, 10, 5), Answer(NOV_1 + 2 * DAY + 5, 1, 10, 1)]
    body, _, store = run(answers, {"from": "2026-11-01", "to": "2026-11-04"})
    assert list(body) == ["from", "to", "tz", "granularity", "metricsTotals", "series"]
    assert [s["metrics"]["total_answers"] for s in body["series"]] == [1, 0, 1]
    assert list(body["series"][1]["metrics"]) == M_KEYS
    assert body["series"][1]["metrics"]["csat_score_high"] == 0.0
    (request,) = store.requests
    assert request == SumsRequest(
        "acme", (NOV_1, NOV_1 + DAY, NOV_1 + 2 * DAY, NOV_1 + 3 * DAY), None, None, False, False
    )


def test_totals_are_sums_of_raw_counts_not_averages() -> None:
    answers = [Answer(NOV_1, 1, 10, 5), *[Answer(NOV_1 + DAY, 1, 10, 1)] * 3]
    body, _, _ = run(answers, {"from": "2026-11-01", "to": "2026-11-03"})
    assert [s["metrics"]["csat_score"] for s in body["series"]] == [1.0, 0.0]
    assert body["metricsTotals"]["csat_score"] == 0.25
    assert body["metricsTotals"]["csat_score_low"] == pytest.approx(wilson_reference(1, 4)[0])


def test_requested_ids_without_answers_are_omitted_and_all_means_ids_with_answers() -> None:
    answers = [
        Answer(NOV_1, 1, 10, 5),
        Answer(NOV_1, 2, 11, 4),
        Answer(NOV_1 - HOUR, 3, 12, 4),  # before the range: skill 3 is not listed
    ]
    params = {"from": "2026-11-01", "to": "2026-11-02", "skillIds": "1,99", "agentIds": "all"}
    body, _, store = run(answers, params)
    assert list(body["skills"]) == ["1"]
    assert list(body["agents"]) == ["10"]  # agents of the population: skill 1 or 99 only
    assert body["metricsTotals"]["total_answers"] == 1
    assert store.requests[0].by_skill
    assert store.requests[0].by_agent
    body, _, _ = run(answers, {**params, "skillIds": "all"})
    assert list(body["skills"]) == ["1", "2"]
    assert list(body["agents"]) == ["10", "11"]


def test_no_data_at_all() -> None:
    body, _, _ = run(
        [],
        {
            "from": "2026-11-01",
            "to": "2026-11-02",
            "skillIds": "all",
            "agentIds": "5",
            "compare": "previous",
        },
    )
    assert body["skills"] == {}
    assert body["agents"] == {}
    assert body["metricsTotals"]["total_answers"] == 0
    assert body["previous"] == {
        "from": NOV_1 - DAY,
        "to": NOV_1,
        "metricsTotals": body["metricsTotals"],
    }


def test_previous_is_one_more_segment_in_front() -> None:
    answers = [
        Answer(NOV_1 - DAY, 1, 10, 1),
        Answer(NOV_1 - 1, 1, 10, 5),
        Answer(NOV_1 - DAY - 1, 1, 10, 5),
    ]
    body, query, store = run(
        answers,
        {"from": "2026-11-01", "to": "2026-11-02", "compare": "previous", "agentIds": "all"},
    )
    assert store.requests[0].boundaries == (NOV_1 - DAY, NOV_1, NOV_1 + DAY)
    assert sums_request("acme", query).boundaries == (NOV_1 - DAY, NOV_1, NOV_1 + DAY)
    assert body["previous"]["metricsTotals"]["total_answers"] == 2
    assert body["agents"] == {}  # agent 10 answered only in the previous range
    assert list(body)[-1] == "previous"


def test_the_series_cap_applies_to_all_when_the_ids_are_known() -> None:
    answers = [Answer(NOV_1, skill, 10, 5) for skill in range(5)]
    query = parse(
        **{"from": "2026-11-01", "to": "2026-11-03", "skillIds": "all", "agentIds": "all"}
    )
    store = MemoryStore(answers)
    assert build_report("acme", query, store.report_sums, max_series_entries=14)
    with pytest.raises(InvalidRequest) as caught:
        build_report("acme", query, store.report_sums, max_series_entries=13)
    found = {p.name: p.reason for p in caught.value.invalid_params}
    assert set(found) == {"skillIds", "agentIds"}
    assert found["skillIds"].startswith(
        "all matches 5 skills with answers in this range; with 2 day periods that makes 14 "
        "series entries"
    )


def test_a_store_is_told_how_many_ids_of_all_fit() -> None:
    """With ``all``, the request carries the most ids the series entries leave room for, over
    the report's range (not the previous one); with lists only, parsing checked them."""
    both = parse(
        **{"from": "2026-11-01", "to": "2026-11-03", "skillIds": "1,2", "agentIds": "all"},
        compare="previous",
    )
    assert sums_request("acme", both, max_series_entries=14).limit == GroupLimit(
        NOV_1, NOV_1 + 2 * DAY, 6
    )
    assert sums_request("acme", both, max_series_entries=13).limit == GroupLimit(
        NOV_1, NOV_1 + 2 * DAY, 5
    )
    assert sums_request("acme", both).limit == GroupLimit(NOV_1, NOV_1 + 2 * DAY, 49_999)
    lists = parse(**{"from": "2026-11-01", "to": "2026-11-03", "skillIds": "1", "agentIds": "7"})
    assert sums_request("acme", lists).limit is None
    assert sums_request("acme", parse(**{"from": "2026-11-01", "to": "2026-11-03"})).limit is None


def test_a_store_that_counts_too_many_ids_refuses_before_summing() -> None:
    """A store's :class:`TooManyGroups` is the 400 that summing gives; a count above the limit,
    where the store may have stopped, reads "at least"."""
    query = parse(
        **{"from": "2026-11-01", "to": "2026-11-03", "skillIds": "all", "agentIds": "all"}
    )

    def counting(skills: int, agents: int) -> Any:
        def sums(request: SumsRequest) -> list[SumRow]:
            raise TooManyGroups(skills, agents)

        return sums

    with pytest.raises(InvalidRequest) as caught:
        build_report("acme", query, counting(3, 4), max_series_entries=13)  # at most 5 ids
    assert {p.name: p.reason for p in caught.value.invalid_params} == {
        "skillIds": "all matches 3 skills with answers in this range; with 2 day periods that "
        "makes 16 series entries (periods x (1 + skills + agents)), more than 13: choose a "
        "coarser granularity, a shorter range or a list of ids",
        "agentIds": "all matches 4 agents with answers in this range; with 2 day periods that "
        "makes 16 series entries (periods x (1 + skills + agents)), more than 13: choose a "
        "coarser granularity, a shorter range or a list of ids",
    }
    with pytest.raises(InvalidRequest) as caught:
        build_report("acme", query, counting(2, 6), max_series_entries=13)
    reasons = [p.reason for p in caught.value.invalid_params]
    assert reasons[0].startswith(
        "all matches 2 skills with answers in this range; with 2 day "
        "periods that makes at least 18 series entries"
    )
    assert reasons[1].startswith("all matches at least 6 agents with answers in this range")
    with pytest.raises(ValueError, match="refused within the limit"):
        build_report("acme", query, counting(1, 1), max_series_entries=13)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (SumRow(2, 1, 10, (1, 0, 0, 0, 0)), "segment 2 is outside 0..1"),
        (SumRow(-1, 1, 10, (1, 0, 0, 0, 0)), "segment -1 is outside"),
        (SumRow(0, 1, 10, (1, 0, 0, -1, 0)), "five non-negative integers"),
        (SumRow(0, 1, 10, (1, 0, 0, 0)), "five non-negative integers"),
        (SumRow(0, None, 10, (1, 0, 0, 0, 0)), "grouped by skill=True"),
        (SumRow(0, 1, None, (1, 0, 0, 0, 0)), "grouped by skill=True"),
    ],
)
def test_rows_that_break_the_seam_are_bugs(row: SumRow, message: str) -> None:
    query = parse(**{"from": "2026-11-01", "to": "2026-11-03", "skillIds": "1", "agentIds": "all"})
    with pytest.raises(ValueError, match=message):
        assemble_report(query, [row])


def test_rows_may_repeat_and_be_zero() -> None:
    query = parse(**{"from": "2026-11-01", "to": "2026-11-03", "skillIds": "all"})
    report = assemble_report(
        query,
        [
            SumRow(1, 7, None, (1, 0, 0, 0, 1)),
            SumRow(1, 7, None, (0, 0, 0, 0, 1)),
            SumRow(0, 8, None, (0, 0, 0, 0, 0)),
        ],
    )
    assert report.totals == [(0, 0, 0, 0, 0), (1, 0, 0, 0, 2)]
    assert report.skills == {7: [(0, 0, 0, 0, 0), (1, 0, 0, 0, 2)]}


def test_fall_back_hour_is_its_own_series_entry() -> None:
    answers = [
        Answer(ms("2026-10-25T00:30:00+00:00"), 1, 1, 5),
        Answer(ms("2026-10-25T01:30:00+00:00"), 1, 1, 1),
    ]
    params = {
        "from": "2026-10-25",
        "to": "2026-10-26",
        "tz": "Europe/Berlin",
        "granularity": "hour",
    }
    body, query, _ = run(answers, params)
    assert len(body["series"]) == 25
    second, third = body["series"][2:4]
    assert (second["end"] - second["start"], third["end"] - third["start"]) == (HOUR, HOUR)
    assert second["metrics"]["csat_score5_answers"] == 1
    assert third["metrics"]["csat_score1_answers"] == 1
    rows = list(report_csv_rows(build_report("acme", query, MemoryStore(answers).report_sums)))
    assert [row[1] for row in rows[3:5]] == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
    ]


# -- the whole core against the reference, on random data -------------------------------------

E2E_ZONES = (
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Sao_Paulo",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "America/St_Johns",
    "Africa/Casablanca",
    "America/Santiago",
    "Asia/Beirut",
)
#: Spans per granularity, in 15-minute steps.
SPANS = {
    Granularity.HOUR: 4 * 24 * 3,
    Granularity.DAY: 4 * 24 * 10,
    Granularity.WEEK: 4 * 24 * 40,
    Granularity.MONTH: 4 * 24 * 75,
    Granularity.TOTAL: 4 * 24 * 40,
}
SKILL_FILTERS = (None, "all", "1,2", "2,99", "-1")
AGENT_FILTERS = (None, "all", "10", "10,11,98")


@st.composite
def reports(draw: st.DrawFn) -> tuple[list[Answer], dict[str, object], int]:
    """Parameters of every shape, and answers around and inside the range (and the previous
    one); the range usually holds an offset change of the zone."""
    tz = draw(st.sampled_from(E2E_ZONES))
    zone = ZoneInfo(tz)
    granularity = draw(st.sampled_from(list(Granularity)))
    steps = draw(st.integers(1, SPANS[granularity]))
    # St_Johns changed off the 15-minute grid until 2011: stay after it.
    changes = [c for c in offset_change_days(tz) if ms("2012-01-01T00:00:00+00:00") < c < NOW]
    if changes and draw(st.integers(0, 3)):
        # The change is in the day before ``change``.
        anchor = draw(st.sampled_from(changes)) - draw(st.integers(96, max(96, steps))) * STEP
    else:
        anchor = NOW - draw(st.integers(2, 300)) * DAY
    params: dict[str, object] = {"tz": tz, "granularity": granularity.value}
    if draw(st.booleans()):  # dates, resolved in tz
        start_day = local(anchor, zone).date()
        end_day = date.fromordinal(start_day.toordinal() + max(1, steps // 96))
        params["from"], params["to"] = start_day.isoformat(), end_day.isoformat()
        from_ms = first_instant_of_date(start_day, zone)
        to_ms = first_instant_of_date(end_day, zone)
    else:
        from_ms = anchor - anchor % STEP
        to_ms = from_ms + steps * STEP
        params["from"], params["to"] = str(from_ms), str(to_ms)
    for name, choices in (("skillIds", SKILL_FILTERS), ("agentIds", AGENT_FILTERS)):
        choice = draw(st.sampled_from(choices))
        if choice is not None:
            params[name] = choice
    if draw(st.booleans()):
        params["compare"] = "previous"
    # Answers mostly in the range, the others from before the previous range to after the
    # range; many exactly on the 15-minute grid (so on or next to period boundaries) or one
    # millisecond before it.
    low, high = 2 * from_ms - to_ms - HOUR, to_ms + HOUR
    grid = st.integers(low // STEP, high // STEP).map(lambda s: s * STEP)
    inside = st.integers(from_ms, to_ms - 1)
    times = st.one_of(
        inside,
        inside.map(lambda t: t - t % STEP),
        st.integers(low, high),
        grid,
        grid.map(lambda t: t - 1),
    )
    answer = st.builds(
        Answer,
        time=times,
        skill=st.sampled_from([-1, 1, 2, 3]),
        agent=st.sampled_from([-1, 10, 11, 12]),
        score=st.integers(1, 5),
        account=st.sampled_from(["acme", "acme", "acme", "beta"]),
    )
    answers = draw(st.lists(answer, min_size=5, max_size=60))
    return answers, params, to_ms + draw(st.integers(0, 5 * DAY))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reports())
def test_the_core_matches_the_reference(case: tuple[list[Answer], dict[str, object], int]) -> None:
    answers, params, now_ms = case
    body, query, _ = run(answers, params, now_ms=now_ms)
    expected = reference_body(
        answers,
        query.from_ms,
        query.to_ms,
        str(params["tz"]),
        Granularity(str(params["granularity"])),
        query.skills,
        query.agents,
        "compare" in params,
    )
    assert_same(body, expected)
    check_csv(body, query, answers)


def check_csv(body: dict[str, Any], query: ReportQuery, answers: list[Answer]) -> None:
    """The CSV has one row per (period, group) with the JSON's metrics."""
    report = build_report("acme", query, MemoryStore(answers).report_sums)
    text = "".join(report_csv(report))
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    groups = [("", "", body["series"])]
    groups += [(skill, "", g["series"]) for skill, g in body.get("skills", {}).items()]
    groups += [("", agent, g["series"]) for agent, g in body.get("agents", {}).items()]
    expected = [
        (str(series[i]["start"]), skill, agent, series[i]["metrics"])
        for i in range(len(body["series"]))
        for skill, agent, series in groups
    ]
    if "previous" in body:
        previous = body["previous"]
        expected.append((str(previous["from"]), "", "", previous["metricsTotals"]))
    assert len(rows) == len(expected)
    for row, (start, skill, agent, metrics) in zip(rows, expected, strict=True):
        assert (row["period_start_ms"], row["skill_id"], row["agent_id"]) == (start, skill, agent)
        assert {k: row[k] for k in M_KEYS} == {k: str(v) for k, v in metrics.items()}


# -- CSV --------------------------------------------------------------------------------------


def test_csv_columns_rows_and_names() -> None:
    answers = [
        Answer(ms("2026-03-29T00:30:00+00:00"), 7, 10, 4),
        Answer(ms("2026-03-29T01:30:00+00:00"), 8, 10, 2),
    ]
    query = parse(
        **{
            "from": "2026-03-29",
            "to": "2026-03-30",
            "tz": "Europe/Berlin",
            "skillIds": "all",
            "agentIds": "10",
            "compare": "previous",
        }
    )
    report = build_report("acme", query, MemoryStore(answers).report_sums)
    text = "".join(
        report_csv(
            report, skill_names={7: "=HYPERLINK(1)", 8: "Billing"}, agent_names={10: "Ana Lima"}
        )
    )
    lines = text.split("\r\n")
    assert lines[0] == ",".join(CSV_COLUMNS)
    assert lines[-1] == ""  # every line ends with CRLF
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert len(rows) == 1 + 4 + 1  # header, totals + 2 skills + 1 agent, previous
    day = [
        "2026-03-29T00:00:00+01:00",
        "2026-03-30T00:00:00+02:00",
        str(query.from_ms),
        str(query.to_ms),
    ]
    assert rows[1][:9] == ["current", *day, "", "", "", ""]
    assert rows[2][:9] == ["current", *day, "7", "'=HYPERLINK(1)", "", ""]
    assert rows[3][:9] == ["current", *day, "8", "Billing", "", ""]
    assert rows[4][:9] == ["current", *day, "", "", "10", "Ana Lima"]
    assert rows[4][9:16] == ["0", "1", "0", "1", "0", "2", "1"]
    assert rows[4][16] == "0.5"
    assert rows[5][:5] == [
        "previous",
        "2026-03-28T01:00:00+01:00",  # the same length, 23 hours, not the calendar day before
        "2026-03-29T00:00:00+01:00",
        str(query.from_ms - 23 * HOUR),
        str(query.from_ms),
    ]


def test_csv_streams_in_chunks_of_whole_lines() -> None:
    query = parse(**{"from": "2026-10-01", "to": "2026-11-01", "granularity": "hour"})
    chunks = list(report_csv(build_report("acme", query, MemoryStore([]).report_sums)))
    assert len(chunks) == 2  # 745 lines, 500 per chunk
    assert all(chunk.endswith("\r\n") for chunk in chunks)
    assert sum(chunk.count("\r\n") for chunk in chunks) == 1 + 31 * 24
