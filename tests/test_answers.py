from __future__ import annotations

from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csatdist import answers as answers_module
from csatdist.answers import (
    AcceptanceWindow,
    Answer,
    Rejection,
    bucket_deltas,
    count_in,
    decode_body,
    validate_answer,
)
from csatdist.buckets import MINUTE_MS
from csatdist.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from tests.helpers import T_13_29

WINDOW = AcceptanceWindow(now_ms=T_13_29, retention_minutes=1445)


def answer(**fields: object) -> dict[str, object]:
    return {"id": "a1", "time": T_13_29, "skillId": 4, "agentId": 7, "score": 5, **fields}


def reason(**fields: object) -> str:
    result = validate_answer(0, answer(**fields), WINDOW)
    assert isinstance(result, Rejection), result
    return result.reason


def test_valid_answer() -> None:
    assert validate_answer(3, answer(), WINDOW) == Answer(3, "a1", T_13_29, 4, 7, 5)


def test_null_and_missing_skill_and_agent_are_unassigned() -> None:
    result = validate_answer(0, answer(skillId=None, agentId=None), WINDOW)
    assert isinstance(result, Answer)
    assert (result.skill_id, result.agent_id) == (-1, -1)
    bare = {"id": "x", "time": T_13_29, "score": 3}
    result = validate_answer(0, bare, WINDOW)
    assert isinstance(result, Answer)
    assert (result.skill_id, result.agent_id) == (-1, -1)


@pytest.mark.parametrize(
    ("text", "expected_ms"),
    [
        ("2026-11-27T13:29:00Z", T_13_29),
        ("2026-11-27T13:29:00.123Z", T_13_29 + 123),
        ("2026-11-27T14:29:00+01:00", T_13_29),
        ("2026-11-27t13:29:00z", T_13_29),
        ("2026-11-27 13:29:00Z", T_13_29),
        ("2026-11-27T13:29:00.123456789Z", T_13_29 + 123),
        ("2026-11-27T08:29:00-05:00", T_13_29),
    ],
)
def test_rfc3339_times(text: str, expected_ms: int) -> None:
    result = validate_answer(0, answer(time=text), WINDOW)
    assert isinstance(result, Answer)
    assert result.time_ms == expected_ms


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"id": ""}, "id must be a string of 1 to 128"),
        ({"id": "x" * 129}, "id must be a string of 1 to 128"),
        ({"id": 17}, "id must be a string"),
        ({"id": None}, "id must be a string"),
        ({"score": 0}, "score must be an integer from 1 to 5, got 0"),
        ({"score": 6}, "score must be an integer from 1 to 5, got 6"),
        ({"score": "5"}, 'score must be an integer from 1 to 5, got "5"'),
        ({"score": 4.0}, "score must be an integer from 1 to 5, got 4.0"),
        ({"score": True}, "score must be an integer from 1 to 5, got true"),
        ({"score": None}, "got null"),
        ({"skillId": "4"}, "skillId must be an integer (int64) or null"),
        ({"agentId": 1.5}, "agentId must be an integer (int64) or null"),
        ({"agentId": 2**63}, "agentId 9223372036854775808 is outside the int64 range"),
        ({"time": "2026-11-27T13:29:00"}, "not RFC 3339 with an offset"),
        ({"time": "2026-11-27"}, "not RFC 3339 with an offset"),
        ({"time": "yesterday"}, "not RFC 3339"),
        ({"time": "2026-02-30T10:00:00Z"}, "not a valid date-time"),
        ({"time": 1.5e12}, "time must be epoch milliseconds"),
        ({"time": True}, "time must be epoch milliseconds"),
        ({"time": T_13_29 - 1445 * MINUTE_MS - 1}, "older than the retention of 1445 minutes"),
        ({"time": T_13_29 + 5 * MINUTE_MS + 1}, "more than 5 minutes in the future"),
    ],
)
def test_each_rule_has_a_precise_reason(fields: dict[str, object], expected: str) -> None:
    assert expected in reason(**fields)


def test_missing_time() -> None:
    result = validate_answer(0, {"id": "a", "score": 5}, WINDOW)
    assert isinstance(result, Rejection)
    assert result.reason == "time is required"


def test_acceptance_edges_are_inclusive() -> None:
    oldest = T_13_29 - 1445 * MINUTE_MS
    newest = T_13_29 + 5 * MINUTE_MS
    assert isinstance(validate_answer(0, answer(time=oldest), WINDOW), Answer)
    assert isinstance(validate_answer(0, answer(time=newest), WINDOW), Answer)


def test_times_before_1970_are_refused_whatever_the_retention() -> None:
    """A bucket ending at or before 0 reads as "nothing rolled up yet" in the history, so such
    answers would be counted twice in reports: refused, even when the retention reaches back."""
    decades = AcceptanceWindow(T_13_29, 60 * 365 * 24 * 60)
    refused = validate_answer(0, answer(time=-1), decades)
    assert isinstance(refused, Rejection)
    assert refused.reason == "time is before 1970-01-01T00:00:00Z (epoch milliseconds below 0)"
    refused = validate_answer(0, answer(time="1969-12-31T23:59:59Z"), decades)
    assert isinstance(refused, Rejection)
    assert "before 1970" in refused.reason
    assert isinstance(validate_answer(0, answer(time=0), decades), Answer)


def test_non_object_answers() -> None:
    result = validate_answer(2, [1, 2], WINDOW)
    assert result == Rejection(2, None, "answer must be a JSON object, got list")


def test_rejection_echoes_string_ids_only() -> None:
    result = validate_answer(0, answer(id="abc", score=9), WINDOW)
    assert isinstance(result, Rejection)
    assert result.id == "abc"


def test_decode_json_body() -> None:
    decoded = decode_body(b'{"answers": [{"id": "a"}, 3]}', "application/json", 10)
    assert decoded.items == [(0, {"id": "a"}), (1, 3)]


def test_decode_json_with_bom_and_charset() -> None:
    body = b'\xef\xbb\xbf{"answers": []}'
    assert decode_body(body, "application/json; charset=utf-8", 10).items == []


@pytest.mark.parametrize(
    ("body", "name"),
    [
        (b"", "body"),
        (b"not json", "body"),
        (b'{"answers": 3}', "answers"),
        (b"[1, 2]", "answers"),
        (b'{"answer": []}', "answers"),
        (b"\xff\xfe", "body"),
    ],
)
def test_unusable_json_bodies_are_400(body: bytes, name: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_body(body, "application/json", 10)
    assert caught.value.invalid_params[0].name == name


def test_decode_ndjson_keeps_line_indexes_and_bad_lines() -> None:
    body = b'{"id": "a"}\r\n\n{"id": \n{"id": "c"}'
    items = decode_body(body, "application/x-ndjson", 10).items
    assert items[0] == (0, {"id": "a"})
    assert items[1][0] == 2
    assert isinstance(items[1][1], Rejection)
    assert "line is not valid JSON" in items[1][1].reason
    assert items[2] == (3, {"id": "c"})


def test_ndjson_with_no_json_at_all_is_400() -> None:
    with pytest.raises(InvalidRequest):
        decode_body(b"hello\nworld\n", "application/x-ndjson", 10)


def test_too_many_answers_is_413() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_body(b'{"answers": [1, 2, 3]}', "application/json", 2)
    with pytest.raises(PayloadTooLarge):
        decode_body(b"1\n2\n3\n", "application/x-ndjson", 2)


def test_other_media_types_are_415() -> None:
    with pytest.raises(UnsupportedMediaType):
        decode_body(b"id,time", "text/csv", 10)


def test_bucket_deltas_sum_per_bucket_skill_agent() -> None:
    answers = [
        Answer(0, "a", T_13_29, 1, 2, 5),
        Answer(1, "b", T_13_29 + 1000, 1, 2, 5),
        Answer(2, "c", T_13_29, 1, 3, 1),
    ]
    end = (T_13_29 // 300_000 + 1) * 300_000
    assert bucket_deltas(answers) == {(end, 1, 2): [0, 0, 0, 0, 2], (end, 1, 3): [1, 0, 0, 0, 0]}


@settings(max_examples=300, deadline=None)
@given(
    text=st.binary(max_size=64).map(lambda b: b.replace(b"a", b"\\").replace(b"b", b'"')),
    slice_bytes=st.integers(1, 8),
    token=st.sampled_from([b"\n", b",", b'"', b'\\"']),
)
def test_counting_in_slices_counts_what_counting_at_once_does(
    text: bytes, slice_bytes: int, token: bytes
) -> None:
    """Slices a few bytes long, so that tokens fall across every boundary."""
    with mock.patch.object(answers_module, "COUNT_SLICE", slice_bytes):
        assert count_in(text, token) == text.count(token)
