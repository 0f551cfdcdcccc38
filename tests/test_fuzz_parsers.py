"""Parser fuzzing with hypothesis: query strings, POST bodies, JSON and NDJSON ingest bodies.

Whatever arrives — wrong types, integers beyond int64, unicode, NaN/Infinity, deep nesting,
duplicate keys, byte-order marks, CRLF, truncated lines, random bytes — the parsers either
accept it or refuse it with a precise error (never another exception, never a 500), no invalid
answer is ever accepted, and no valid answer is ever lost.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csatdist.answers import MAX_ID_LENGTH, AcceptanceWindow, decode_body, validate_all
from csatdist.errors import CsatError
from csatdist.query import INT64_MAX, INT64_MIN, parse_query
from tests.conftest import Api, add_key
from tests.helpers import T_13_29

T = TypeVar("T")
WINDOW = AcceptanceWindow(T_13_29, 1445)
QUICK = settings(max_examples=300, deadline=None)
HTTP = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# --- values of every kind ---------------------------------------------------------------------

huge_ints = st.integers(min_value=INT64_MAX - 2, max_value=2**80) | st.integers(
    min_value=-(2**80), max_value=INT64_MIN + 2
)
any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | huge_ints | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
weird_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40
) | st.sampled_from(
    ["all", "ALL", "", " ", "1,,2", "%2C", "-1", "1e3", "0x10", "NaN", "Infinity", "९", "1\x00"]
)


def attempt(work: Callable[[], T]) -> tuple[T | None, CsatError | None]:
    """The result, or the precise error; any other exception fails the test."""
    try:
        return work(), None
    except CsatError as exc:
        return None, exc


# --- query parameters ------------------------------------------------------------------------


@QUICK
@given(
    st.dictionaries(
        st.sampled_from(["v", "timeframe", "skillIds", "agentIds", "interval", "other"]),
        weird_text | st.integers().map(str) | huge_ints.map(str) | any_json,
        max_size=6,
    )
)
def test_query_parameters_parse_or_are_refused_precisely(values: dict[str, Any]) -> None:
    query, error = attempt(lambda: parse_query(values, 1000))
    if error is not None:
        assert error.status == 400
        assert error.problem()["invalid_params"], "every 400 names the parameter"
        return
    assert query is not None
    assert 1 <= query.timeframe <= 1440
    for selection in (query.skills, query.agents):
        if selection is not None and selection.ids is not None:
            assert all(INT64_MIN <= i <= INT64_MAX for i in selection.ids)
    if query.interval is not None:
        assert query.interval % 5 == 0
        assert query.timeframe % query.interval == 0


# --- ingest bodies ---------------------------------------------------------------------------


def reference_valid(raw: object) -> bool:
    """The contract's rules, restated naively (integer times only, as generated below)."""
    if not isinstance(raw, dict):
        return False
    answer_id, time, score = raw.get("id"), raw.get("time"), raw.get("score")
    if not isinstance(answer_id, str) or not 1 <= len(answer_id) <= MAX_ID_LENGTH:
        return False
    if "\x00" in answer_id:
        return False
    if type(time) is not int or not WINDOW.oldest_ms <= time <= WINDOW.newest_ms:
        return False
    if type(score) is not int or not 1 <= score <= 5:
        return False
    for name in ("skillId", "agentId"):
        value = raw.get(name)
        if value is not None and (type(value) is not int or not INT64_MIN <= value <= INT64_MAX):
            return False
    return True


answers = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=4)
        | st.text(min_size=127, max_size=130)
        | st.sampled_from(["a\x00b", "\x00"])
        | any_json,
        "time": st.integers(min_value=WINDOW.oldest_ms - 5, max_value=WINDOW.newest_ms + 5)
        | any_json,
        "score": st.integers(min_value=-1, max_value=7) | any_json,
    },
    optional={
        "skillId": st.integers(-3, 3) | huge_ints | any_json,
        "agentId": huge_ints | any_json,
    },
)


def as_line(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode()  # NaN and Infinity as JSON tokens


def mangle(lines: list[bytes], how: str) -> bytes:
    body = b"\n".join(lines)
    if how == "crlf":
        return b"\r\n".join(lines)
    if how == "bom":
        return b"\xef\xbb\xbf" + body
    if how == "truncated" and body:
        return body[: max(len(body) - 3, 1)]
    if how == "blank-lines":
        return b"\n\n".join(lines) + b"\n\n"
    return body


@QUICK
@given(
    st.lists(answers | any_json, max_size=8),
    st.sampled_from(["plain", "crlf", "bom", "truncated", "blank-lines"]),
)
def test_ndjson_bodies_never_accept_an_invalid_answer_or_lose_a_valid_one(
    items: list[object], how: str
) -> None:
    body = mangle([as_line(item) for item in items], how)
    decoded, error = attempt(lambda: decode_body(body, "application/x-ndjson", 10_000))
    if decoded is None:
        assert error is not None
        assert error.status == 400
        return
    valid, rejected = validate_all(decoded.items, WINDOW)
    for answer in valid:
        assert 1 <= answer.score <= 5
        assert WINDOW.oldest_ms <= answer.time_ms <= WINDOW.newest_ms
        assert INT64_MIN <= answer.skill_id <= INT64_MAX
    if how in ("plain", "crlf", "bom", "blank-lines"):  # every line intact
        expected = [item for item in items if reference_valid(item)]
        assert [a.id for a in valid] == [item["id"] for item in expected]  # type: ignore[index]
    assert len(valid) + len(rejected) == len(decoded.items)


@QUICK
@given(
    st.binary(max_size=200),
    st.sampled_from(["application/json", "application/x-ndjson", "text/csv", ""]),
)
def test_random_bytes_are_refused_precisely(body: bytes, content_type: str) -> None:
    decoded, error = attempt(lambda: decode_body(body, content_type, 10_000))
    if decoded is None:
        assert error is not None
        assert error.status in (400, 413, 415)
        return
    valid, _ = validate_all(decoded.items, WINDOW)
    assert all(reference_valid({"id": a.id, "time": a.time_ms, "score": a.score}) for a in valid)


@pytest.mark.parametrize(
    "body",
    [
        b'{"answers": [{"id": "a", "id": "b", "time": 1795786080000, "score": 5}]}',
        b'{"answers": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"answers": [{"id": "a", "time": 1795786080000, "score": 5.0}]}',
        b'{"answers": [{"id": "a", "time": 1795786080000, "score": NaN}]}',
        b'{"answers": [{"id": "a", "time": 17957860800000000000000, "score": 5}]}',
        b'{"answers": [{"id": "a", "time": 1795786080000, "score": 5, "skillId": '
        b"9223372036854775808}]}",
        b'{"answers": [{"id": "\\ud800", "time": 1795786080000, "score": 5}]}',
    ],
)
def test_edge_case_bodies_never_fail_badly(api: Api, body: bytes) -> None:
    response = api.client.post(
        api.ingest_url(), content=body, headers={**api.write, "Content-Type": "application/json"}
    )
    assert response.status_code in (200, 400), response.text
    if response.status_code == 200:
        report = response.json()
        total = api.query(timeframe=1440)["metricsTotals"]["total_answers"]  # type: ignore[index]
        assert total == report["accepted"] <= 1


@HTTP
@given(batches=st.lists(st.lists(answers, max_size=6), min_size=1, max_size=3))
def test_over_http_every_valid_answer_counts_once_and_nothing_else(
    api: Api, batches: list[list[dict[str, Any]]]
) -> None:
    account = f"f{uuid.uuid4().hex[:12]}"  # a fresh account per example
    write = {"Authorization": f"Bearer {add_key(api.store, account, 'read,write')}"}
    counted: dict[str, int] = {}
    for batch in batches:
        body = b"\n".join(as_line(item) for item in batch)
        response = api.client.post(
            api.ingest_url(account),
            content=body,
            headers={**write, "Content-Type": "application/x-ndjson"},
        )
        assert response.status_code in (200, 400), response.text
        for item in batch:
            if reference_valid(item):
                counted.setdefault(item["id"], item["score"])
    reply = api.client.get(
        api.query_url(account), params={"v": 1, "timeframe": 1440}, headers=write
    )
    assert reply.status_code == 200
    totals = reply.json()["metricsTotals"]
    assert totals["total_answers"] == len(counted)
    for score in range(1, 6):
        expected = sum(1 for s in counted.values() if s == score)
        assert totals[f"csat_score{score}_answers"] == expected
