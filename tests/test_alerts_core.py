from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from csatdist.alerting import AlertNudges, Nudged
from csatdist.alerts import (
    DEFAULT_MIN_ANSWERS,
    WILSON_Z,
    AlertRule,
    Decision,
    State,
    bound_value,
    delivery_body,
    evaluate,
    parse_rule,
    resolve_at,
    rule_document,
    slack_text,
    wilson_interval,
)
from csatdist.buckets import window_for
from csatdist.directory import Directory
from csatdist.distribution import metrics
from csatdist.errors import InvalidRequest
from csatdist.query import ALL, INT64_MAX, Selection

HOOK = "https://hooks.example.com/csat"
MINIMAL = {"timeframe": 60, "below": 0.7, "webhook": HOOK}
#: Beyond Python's 4,300-digit limit for int <-> str: printing it in a reason would raise.
HUGE = pytest.param(10**5000, id="10**5000")


def rule(**fields: object) -> AlertRule:
    return parse_rule("low-billing", {**MINIMAL, **fields})


def problems(document: object, name: object = "low-billing") -> dict[str, str]:
    with pytest.raises(InvalidRequest) as caught:
        parse_rule(name, document)
    return {p.name: p.reason for p in caught.value.invalid_params}


def m(positive: int, total: int) -> dict[str, Any]:
    """Metrics M with ``positive`` answers of 5 and the rest 1."""
    return metrics((total - positive, 0, 0, 0, positive))


# -- parsing ------------------------------------------------------------------------------------


def test_minimal_rule_and_defaults() -> None:
    assert parse_rule("low-billing", MINIMAL) == AlertRule(
        name="low-billing",
        timeframe=60,
        skills=None,
        agents=None,
        below=0.7,
        min_answers=DEFAULT_MIN_ANSWERS,
        bound="score",
        webhook=HOOK,
        format="json",
    )
    assert DEFAULT_MIN_ANSWERS == 1


def test_example_from_the_spec() -> None:
    document = {
        "timeframe": 60,
        "skillIds": "12",
        "agentIds": None,
        "below": 0.70,
        "minAnswers": 20,
        "bound": "wilson_high",
        "webhook": HOOK,
        "format": "slack",
    }
    parsed = parse_rule("low-billing", document)
    assert parsed.skills == Selection(frozenset({12}))
    assert (parsed.min_answers, parsed.bound, parsed.format) == (20, "wilson_high", "slack")


def test_numbers_may_be_strings_and_null_means_default() -> None:
    parsed = parse_rule(
        "r",
        {
            "timeframe": " 15 ",
            "below": "0.70",
            "minAnswers": "20",
            "webhook": HOOK,
            "bound": None,
            "format": None,
            "skillIds": "",
        },
    )
    assert (parsed.timeframe, parsed.below, parsed.min_answers) == (15, 0.7, 20)
    assert (parsed.bound, parsed.format, parsed.skills) == ("score", "json", None)


def test_unknown_fields_are_ignored() -> None:
    assert rule(color="red", v=1) == rule()


@pytest.mark.parametrize("name", ["a", "x" * 64, "low-billing_2", "A-Z_0-9"])
def test_good_names(name: str) -> None:
    assert parse_rule(name, MINIMAL).name == name


@pytest.mark.parametrize("name", ["", "x" * 65, "has space", "ü", "a/b", "a.b", None, 12])
def test_bad_names(name: object) -> None:
    assert set(problems(MINIMAL, name)) == {"name"}


@pytest.mark.parametrize("value", [1, 1440, "60", 60.0])
def test_good_timeframes(value: object) -> None:
    assert rule(timeframe=value).timeframe == int(value)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    "value", [0, -5, 1441, "abc", 1.5, "1.5", True, "", [], "9" * 5000, HUGE, 1e300]
)
def test_bad_timeframes(value: object) -> None:
    assert set(problems({**MINIMAL, "timeframe": value})) == {"timeframe"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1.0), (1.0, 1.0), ("1", 1.0), (0.0001, 0.0001), ("0.70", 0.7), (".5", 0.5)],
)
def test_good_thresholds(value: object, expected: float) -> None:
    assert rule(below=value).below == expected


@pytest.mark.parametrize(
    "value",
    [0, 0.0, "0", -0.1, 1.01, 2, "abc", True, math.nan, math.inf, "1e-1", "9" * 5000, HUGE, []],
)
def test_bad_thresholds(value: object) -> None:
    assert set(problems({**MINIMAL, "below": value})) == {"below"}


@pytest.mark.parametrize("value", [1, "20", 20.0, INT64_MAX])
def test_good_minimum_answers(value: object) -> None:
    assert rule(minAnswers=value).min_answers == int(value)  # type: ignore[call-overload]


@pytest.mark.parametrize("value", [0, -1, 1.5, "x", True, INT64_MAX + 1, "9" * 5000, HUGE])
def test_bad_minimum_answers(value: object) -> None:
    assert set(problems({**MINIMAL, "minAnswers": value})) == {"minAnswers"}


@pytest.mark.parametrize(
    ("field", "value"), [("bound", "wilson_low"), ("bound", 1), ("format", "xml")]
)
def test_bad_choices(field: str, value: object) -> None:
    found = problems({**MINIMAL, field: value})
    assert set(found) == {field}
    assert "must be '" in found[field]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("12", Selection(frozenset({12}))),
        ("4, 15 ,3", Selection(frozenset({3, 4, 15}))),
        ("-1", Selection(frozenset({-1}))),
        ("0" * 30 + "12", Selection(frozenset({12}))),  # leading zeros are not significant
        ("all", ALL),
        ([1, 2], Selection(frozenset({1, 2}))),
        (None, None),
        ("", None),
    ],
)
def test_id_filters_follow_the_distribution(raw: object, expected: Selection | None) -> None:
    parsed = rule(skillIds=raw, agentIds=raw)
    assert parsed.skills == expected
    assert parsed.agents == expected


@pytest.mark.parametrize(
    "raw",
    [
        "x",
        "1,,2",
        "1.5",
        "9" * 5000,
        "0" * 5000 + "12",
        "1," + "9" * 20,
        str(INT64_MAX + 1),
        [10**30],
        [1.5],
        HUGE,
    ],
)
def test_bad_id_filters_are_400s(raw: object) -> None:
    assert set(problems({**MINIMAL, "skillIds": raw})) == {"skillIds"}


def test_id_filters_are_bounded() -> None:
    ids = ",".join(str(i) for i in range(11))
    with pytest.raises(InvalidRequest, match="too many ids"):
        parse_rule("r", {**MINIMAL, "agentIds": ids}, max_ids=10)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (12, "string"),
        ("ftp://x/", "http or https"),
        ("https://good.com@127.0.0.1/", "credentials"),
        ("https://h.example:99999/", "port"),
    ],
)
def test_bad_webhooks(value: object, fragment: str) -> None:
    found = problems({**MINIMAL, "webhook": value})
    assert fragment in found["webhook"]


def test_required_fields() -> None:
    found = problems({})
    assert set(found) == {"timeframe", "below", "webhook"}
    assert "required" in found["timeframe"]


def test_every_problem_is_reported_at_once() -> None:
    document = {
        "timeframe": 0,
        "skillIds": "x",
        "agentIds": "1,,2",
        "below": 2,
        "minAnswers": 0,
        "bound": "max",
        "webhook": "ftp://x/",
        "format": "xml",
    }
    assert set(problems(document, "bad name")) == {
        "name",
        "timeframe",
        "skillIds",
        "agentIds",
        "below",
        "minAnswers",
        "bound",
        "webhook",
        "format",
    }


@pytest.mark.parametrize("document", [None, [], "rule", 60])
def test_the_body_must_be_an_object(document: object) -> None:
    assert set(problems(document)) == {"body"}
    assert set(problems(document, "")) == {"name", "body"}


def test_long_values_are_shown_shortened() -> None:
    reason = problems({**MINIMAL, "timeframe": "x" * 1000})["timeframe"]
    assert len(reason) < 100


@given(
    timeframe=st.integers(1, 1440),
    skills=st.one_of(
        st.none(), st.just("all"), st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1)
    ),
    below=st.floats(min_value=0, max_value=1, exclude_min=True),
    min_answers=st.integers(1, 2**63 - 1),
    bound=st.sampled_from(["score", "wilson_high"]),
    format_=st.sampled_from(["json", "slack"]),
)
def test_documents_round_trip(
    timeframe: int,
    skills: object,
    below: float,
    min_answers: int,
    bound: str,
    format_: str,
) -> None:
    parsed = rule(
        timeframe=timeframe,
        skillIds=skills,
        below=below,
        minAnswers=min_answers,
        bound=bound,
        format=format_,
    )
    document = rule_document(parsed)
    assert parse_rule(parsed.name, document) == parsed
    assert parse_rule(parsed.name, orjson.loads(orjson.dumps(document))) == parsed


def test_document_shape() -> None:
    parsed = rule(skillIds="15,4,-1", agentIds="all", minAnswers=20)
    assert rule_document(parsed) == {
        "timeframe": 60,
        "skillIds": "-1,4,15",
        "agentIds": "all",
        "below": 0.7,
        "minAnswers": 20,
        "bound": "score",
        "webhook": HOOK,
        "format": "json",
    }


# -- the Wilson interval ------------------------------------------------------------------------


def wilson_by_quadratic(positive: int, total: int) -> tuple[float, float]:
    """Independent check: the p with (phat - p)^2 = z^2 p (1 - p) / n, solved as a quadratic."""
    phat, z2n = positive / total, WILSON_Z**2 / total
    a, b, c = 1 + z2n, -(2 * phat + z2n), phat**2
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


def test_wilson_of_nothing_is_zero() -> None:
    assert wilson_interval(0, 0) == (0.0, 0.0)


def test_wilson_known_values() -> None:
    low, high = wilson_interval(32, 50)
    assert (round(low, 4), round(high, 4)) == (0.5014, 0.7586)
    assert round(wilson_interval(0, 10)[1], 4) == 0.2775
    assert round(wilson_interval(10, 10)[0], 4) == 0.7225


def test_wilson_ends_are_exact_at_the_extremes() -> None:
    for total in (1, 2, 7, 1000, 10**9):
        assert wilson_interval(0, total)[0] == 0.0
        assert wilson_interval(total, total)[1] == 1.0


@given(st.integers(1, 10**7).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_matches_the_quadratic_and_contains_the_score(pair: tuple[int, int]) -> None:
    positive, total = pair
    low, high = wilson_interval(positive, total)
    ref_low, ref_high = wilson_by_quadratic(positive, total)
    assert low == pytest.approx(max(ref_low, 0.0), abs=1e-9)
    assert high == pytest.approx(min(ref_high, 1.0), abs=1e-9)
    assert 0.0 <= low <= positive / total <= high <= 1.0


# -- evaluation ---------------------------------------------------------------------------------

WATCH = {"below": 0.7, "minAnswers": 20}


def decide(previous: State | None, positive: int, total: int, **fields: object) -> Decision:
    return evaluate(rule(**{**WATCH, **fields}), m(positive, total), previous)


def test_a_healthy_first_evaluation_announces_nothing() -> None:
    assert decide(None, 18, 20) == Decision("ok", None, 0.9, 20)


def test_a_first_evaluation_below_fires() -> None:
    assert decide(None, 13, 20) == Decision("firing", "firing", 0.65, 20)
    assert decide("ok", 13, 20).transition == "firing"


def test_exactly_at_the_threshold_is_not_firing() -> None:
    assert decide(None, 14, 20) == Decision("ok", None, 0.7, 20)
    assert decide(None, 70, 100).state == "ok"


def test_exactly_min_answers_is_eligible() -> None:
    assert decide(None, 0, 20).transition == "firing"
    assert decide(None, 0, 19) == Decision("ok", None, 0.0, 19)
    assert decide(None, 0, 0) == Decision("ok", None, 0.0, 0)


def test_firing_stays_firing_without_a_new_transition() -> None:
    assert decide("firing", 13, 20) == Decision("firing", None, 0.65, 20)


def test_hysteresis_band_from_firing() -> None:
    assert resolve_at(rule(below=0.7)) == 0.72
    assert decide("firing", 70, 100).state == "firing"  # at the threshold, in the band
    assert decide("firing", 71, 100) == Decision("firing", None, 0.71, 100)
    assert decide("firing", 72, 100) == Decision("ok", "resolved", 0.72, 100)  # band's end
    assert decide("firing", 90, 100).transition == "resolved"


def test_hysteresis_band_from_ok() -> None:
    # The same 71 % that keeps a firing rule firing does not make a healthy rule fire.
    assert decide("ok", 71, 100) == Decision("ok", None, 0.71, 100)
    assert decide("ok", 70, 100).transition is None
    assert decide("ok", 69, 100).transition == "firing"


def test_too_few_answers_resolves() -> None:
    assert decide("firing", 0, 19) == Decision("ok", "resolved", 0.0, 19)
    assert decide("firing", 0, 0).transition == "resolved"


def test_the_band_is_computed_in_decimal() -> None:
    assert 0.1 + 0.02 != 0.12
    assert resolve_at(rule(below=0.1)) == 0.12
    assert decide("firing", 12, 100, below=0.1).transition == "resolved"


def test_below_one_fires_on_any_negative_answer_and_resolves_at_perfection() -> None:
    assert resolve_at(rule(below=1)) == 1.0
    assert decide(None, 100, 100, below=1).transition is None
    assert decide(None, 99, 100, below=1).transition == "firing"
    assert decide("firing", 99, 100, below=1).transition is None
    assert decide("firing", 100, 100, below=1).transition == "resolved"
    wilson = {"below": 1, "bound": "wilson_high"}
    assert decide(None, 100, 100, **wilson).transition is None  # the upper end is exactly 1.0
    assert decide(None, 99, 100, **wilson).transition == "firing"


def test_wilson_high_waits_for_evidence() -> None:
    # 32 of 50 is 64 %: below 70 % by the score, but its interval reaches 75.9 %.
    assert decide(None, 32, 50, minAnswers=1).transition == "firing"
    assert decide(None, 32, 50, minAnswers=1, bound="wilson_high").transition is None
    assert decide(None, 32, 50, below=0.8, bound="wilson_high").transition == "firing"
    # Ten times the answers at the same score: now even optimistically below 70 %.
    assert decide(None, 320, 500, minAnswers=1, bound="wilson_high").transition == "firing"


def test_wilson_high_on_one_negative_answer() -> None:
    # With minAnswers 1, a single bad answer fires by score but not by the upper bound (79 %).
    assert decide(None, 0, 1, minAnswers=1).transition == "firing"
    assert decide(None, 0, 1, minAnswers=1, bound="wilson_high").transition is None


def test_bound_value() -> None:
    assert bound_value(rule(), m(32, 50)) == 0.64
    assert bound_value(rule(bound="wilson_high"), m(32, 50)) == wilson_interval(32, 50)[1]
    assert bound_value(rule(bound="wilson_high"), m(0, 0)) == 0.0


# -- delivery bodies ----------------------------------------------------------------------------

WINDOW = window_for(1_700_000_000_000, 60)
AT = 1_700_000_000_123


def test_json_body() -> None:
    counts = m(32, 50)
    body = delivery_body(rule(), "123", "firing", AT, WINDOW, counts)
    assert body.startswith(b'{"alert":"low-billing","account":"123","state":"firing"')  # compact
    document = orjson.loads(body)
    assert document == {
        "alert": "low-billing",
        "account": "123",
        "state": "firing",
        "at": AT,
        "window": {"start": WINDOW.start_ms, "end": WINDOW.end_ms},
        "metrics": counts,
    }
    assert list(document["metrics"]) == list(counts)  # M's key order
    assert WINDOW.end_ms - WINDOW.start_ms == 65 * 60_000  # the distribution's window


def test_slack_body_is_one_text_line() -> None:
    slack = rule(format="slack", skillIds="12", minAnswers=20)
    body = delivery_body(slack, "123", "firing", AT, WINDOW, m(32, 50), Directory({12: "Billing"}))
    assert orjson.loads(body) == {
        "text": ':red_circle: CSAT alert "low-billing" firing for account 123: 64.0 % '
        "(32 of 50 answers positive, 95 % CI 50.1\u201375.9 %; alert below 70 %) "
        "over the last 60 min, skills Billing (12)"
    }


def test_slack_resolved_line() -> None:
    text = slack_text(rule(format="slack"), "123", "resolved", m(45, 50))
    assert text == (
        ':large_green_circle: CSAT alert "low-billing" resolved for account 123: 90.0 % '
        "(45 of 50 answers positive, 95 % CI 78.6\u201395.7 %; alert below 70 %) "
        "over the last 60 min"
    )


def test_slack_line_without_answers_or_with_too_few() -> None:
    assert "account 123: no answers over the last 60 min" in slack_text(
        rule(), "123", "resolved", m(0, 0)
    )
    text = slack_text(rule(minAnswers=20), "123", "resolved", m(5, 10))
    assert text.endswith("fewer answers than the 20 needed over the last 60 min")


def test_slack_line_names_the_bound() -> None:
    text = slack_text(rule(bound="wilson_high", below=0.825), "1", "firing", m(1, 10))
    assert "alert below 82.5 % (upper end of the CI)" in text


def test_slack_line_scopes() -> None:
    names = Directory(skills={1: "A", 2: "B"}, agents={7: "Ana"})
    text = slack_text(rule(skillIds="1,2,3,4,5", agentIds="7"), "1", "firing", m(1, 10), names)
    assert text.endswith(", skills A (1), B (2), 3 +2 more; agents Ana (7)")
    text = slack_text(rule(skillIds="all", agentIds="-1"), "1", "firing", m(1, 10))
    assert text.endswith(", all skills; agents Unassigned (-1)")


def test_slack_line_escapes_names() -> None:
    names = Directory(agents={7: "<!channel> & <@U123>"})
    text = slack_text(rule(agentIds="7"), "1", "firing", m(1, 10), names)
    assert "agents &lt;!channel&gt; &amp; &lt;@U123&gt; (7)" in text
    assert "<" not in text


def test_alert_nudges_keep_a_bounded_set_of_accounts() -> None:
    """Past ``max_accounts`` changed accounts the loop is told to look at every account with
    rules, rather than the set growing with the number of accounts written to."""
    nudges = AlertNudges(max_accounts=2)
    for account in ("a", "b", "a"):
        nudges.counts_changed(account)
    assert nudges.event.is_set()
    assert nudges.take() == Nudged(frozenset({"a", "b"}), every_account=False, rules=False)
    assert not nudges.event.is_set()
    for account in ("a", "b", "c", "d"):
        nudges.counts_changed(account)
    nudges.rule_saved()
    taken = nudges.take()
    assert taken.every_account
    assert taken.rules
    assert len(taken.accounts) == 2
    assert nudges.take() == Nudged(frozenset(), every_account=False, rules=False)
