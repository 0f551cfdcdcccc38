from __future__ import annotations

import pytest

from csatdist.errors import InvalidRequest
from csatdist.query import ALL, DistributionQuery, Selection, parse_query


def parse(**params: object) -> DistributionQuery:
    return parse_query({"v": "1", "timeframe": "60", **params})


def problems(**params: object) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as caught:
        parse_query(params)
    return {p.name: p.reason for p in caught.value.invalid_params}


def test_minimal_query() -> None:
    assert parse() == DistributionQuery(timeframe=60)


@pytest.mark.parametrize("value", ["1", "1440", " 30 ", 45, 60.0])
def test_valid_timeframes(value: object) -> None:
    parse_query({"v": "1", "timeframe": value})


@pytest.mark.parametrize("value", ["0", "-1", "1441", "abc", "1.5", "", 1.5, True, "1e3", "0x10"])
def test_invalid_timeframes(value: object) -> None:
    found = problems(v="1", timeframe=value)
    assert "timeframe" in found


def test_timeframe_is_required() -> None:
    assert "required" in problems(v="1")["timeframe"]


@pytest.mark.parametrize("value", [None, "", "2", "abc", True])
def test_version_must_be_1(value: object) -> None:
    assert "v" in problems(v=value, timeframe="5")


@pytest.mark.parametrize("value", ["1", 1, "1.0"])
def test_version_1_forms(value: object) -> None:
    parse_query({"v": value, "timeframe": "5"})


def test_all_errors_reported_together() -> None:
    found = problems(v="2", timeframe="abc", skillIds="x", agentIds="1,,2", interval="7")
    assert set(found) == {"v", "timeframe", "skillIds", "agentIds", "interval"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("all", ALL),
        ("ALL", ALL),
        (" all ", ALL),
        ("4,15,3", Selection(frozenset({3, 4, 15}))),
        ("4, 15 ,3", Selection(frozenset({3, 4, 15}))),
        ("-1", Selection(frozenset({-1}))),
        ("-1,7", Selection(frozenset({-1, 7}))),
        ("7,7", Selection(frozenset({7}))),
        ("9223372036854775807", Selection(frozenset({2**63 - 1}))),
        ([4, "15"], Selection(frozenset({4, 15}))),
        (["all"], ALL),
        (12, Selection(frozenset({12}))),
    ],
)
def test_id_lists(raw: object, expected: Selection) -> None:
    assert parse(skillIds=raw).skills == expected
    assert parse(agentIds=raw).agents == expected


@pytest.mark.parametrize("raw", ["", "  ", None])
def test_empty_id_list_is_absent(raw: object) -> None:
    query = parse(skillIds=raw, agentIds=raw)
    assert query.skills is None
    assert query.agents is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("abc", "'abc' is not an integer id"),
        ("4,x", "'x' is not an integer id"),
        ("4,,5", "empty id at position 1"),
        ("4,", "empty id at position 1"),
        ("1.5", "'1.5' is not an integer id"),
        ("all,4", "'all' is not an integer id"),
        ("9223372036854775808", "outside the int64 range"),
        ([1.5], "1.5 is not an integer id"),
        ([True], "True is not an integer id"),
    ],
)
def test_bad_id_lists_name_the_bad_item(raw: object, reason: str) -> None:
    assert reason in problems(v="1", timeframe="5", skillIds=raw)["skillIds"]
    assert reason in problems(v="1", timeframe="5", agentIds=raw)["agentIds"]


def test_too_many_ids() -> None:
    raw = ",".join(str(i) for i in range(11))
    with pytest.raises(InvalidRequest) as caught:
        parse_query({"v": "1", "timeframe": "5", "skillIds": raw}, max_ids=10)
    assert caught.value.invalid_params[0].reason == "too many ids: 11, at most 10"


@pytest.mark.parametrize(("timeframe", "interval"), [(20, 10), (60, 5), (60, 60), (1440, 60)])
def test_valid_intervals(timeframe: int, interval: int) -> None:
    assert parse_query({"v": 1, "timeframe": timeframe, "interval": interval}).interval == interval


@pytest.mark.parametrize(
    ("timeframe", "interval", "reason"),
    [
        (60, 7, "multiple of 5"),
        (60, 0, "multiple of 5"),
        (60, -5, "multiple of 5"),
        (20, 25, "must not exceed timeframe"),
        (60, 25, "divide timeframe"),
        (7, 5, "divide timeframe"),
        (60, "x", "whole number"),
    ],
)
def test_invalid_intervals(timeframe: int, interval: object, reason: str) -> None:
    assert reason in problems(v="1", timeframe=timeframe, interval=interval)["interval"]
