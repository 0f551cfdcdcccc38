"""Alert rules: parsing, evaluation and delivery bodies (pure). Rules are EXTENSIONS.md section 8.

A rule watches the CSAT score over the distribution's window for its ``timeframe``. The store
keeps each rule's document (:func:`rule_document`) and its last :data:`State`; the evaluator
computes the window's metrics ``M`` and calls :func:`evaluate`, and each transition becomes one
delivery whose body is :func:`delivery_body`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import orjson

from csatdist.buckets import MAX_TIMEFRAME_MINUTES, Window
from csatdist.directory import Directory, display
from csatdist.errors import InvalidParam, InvalidRequest
from csatdist.query import DEFAULT_MAX_IDS, INT64_MAX, INT64_MIN, Selection, parse_selection
from csatdist.webhooks import webhook_url_problem

Bound = Literal["score", "wilson_high"]
Format = Literal["json", "slack"]
#: A rule's remembered state; a rule never evaluated is ``ok``.
State = Literal["ok", "firing"]
#: What a delivery announces.
Transition = Literal["firing", "resolved"]

BOUNDS: tuple[Bound, ...] = ("score", "wilson_high")
FORMATS: tuple[Format, ...] = ("json", "slack")
DEFAULT_MIN_ANSWERS = 1
#: Once firing, a rule resolves only when its bound reaches ``below + HYSTERESIS``. With a window
#: of 50 answers one answer moves the score by 0.02: without a band, a score hovering at the
#: threshold would fire and resolve as single answers enter and leave the sliding window. Small
#: enough that "resolved" still means "back at the target" (0.70 resolves at 0.72).
HYSTERESIS = Decimal("0.02")
#: The 95 % two-sided normal quantile (EXTENSIONS.md section 7).
WILSON_Z = 1.959963984540054

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_INTEGER = re.compile(r"\s*[+-]?\d{1,30}\s*")
_DECIMAL = re.compile(r"\s*[+-]?(\d{1,30}\.?\d{0,30}|\.\d{1,30})\s*")
#: An id string past int64 (more than 19 significant digits) or absurdly long. Checked before
#: query.parse_selection, whose int() raises on 4,300 digits or more (leading zeros count).
_OVERLONG_ID = re.compile(r"\s*[+-]?(0*[1-9]\d{19,}|\d{100,})\s*")


@dataclass(frozen=True, slots=True)
class AlertRule:
    name: str
    timeframe: int  # minutes, 1..1440: the distribution's window
    skills: Selection | None  # None: every answer; otherwise as the distribution's skillIds
    agents: Selection | None
    below: float  # in (0, 1]
    min_answers: int
    bound: Bound
    webhook: str
    format: Format


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one evaluation: the state to store, and what to deliver (if anything)."""

    state: State
    transition: Transition | None
    value: float  # the bound that was compared (csat_score or the Wilson upper end)
    total: int


# -- parsing ------------------------------------------------------------------------------------


def _show(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return "a number that large"  # str() of a huge int is slow, and refused past 4300 digits
    text = f"'{value}'" if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    return None


def _number(value: object) -> float | None:
    """A finite number from a JSON number or a decimal string; None otherwise (or when huge)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(value) if abs(value) <= 2**53 else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        return float(value)
    return None


def _bounded_integer(
    name: str, value: object, low: int, high: int, errors: list[InvalidParam]
) -> int | None:
    number = _integer(value)
    if number is None:
        errors.append(InvalidParam(name, f"must be a whole number, got {_show(value)}"))
        return None
    if not low <= number <= high:
        errors.append(InvalidParam(name, f"must be between {low} and {high}, got {_show(number)}"))
        return None
    return number


def _out_of_int64(item: object) -> bool:
    if isinstance(item, str):
        return bool(_OVERLONG_ID.fullmatch(item))
    return isinstance(item, int) and not INT64_MIN <= item <= INT64_MAX


def _selection(
    name: str, value: object, max_ids: int, errors: list[InvalidParam]
) -> Selection | None:
    """query.parse_selection, after refusing ids too long for it to report safely."""
    items: list[object]
    if isinstance(value, str):
        items = list(value.split(","))
    elif isinstance(value, list):
        items = value
    else:
        items = [value]
    if any(_out_of_int64(item) for item in items):
        errors.append(InvalidParam(name, "an id is too long or outside the int64 range"))
        return None
    return parse_selection(name, value, errors, max_ids)


def _choice(name: str, value: object, choices: tuple[str, ...], errors: list[InvalidParam]) -> Any:
    if value is None:  # null is absent: the default
        return choices[0]
    if value not in choices:
        options = " or ".join(f"'{c}'" for c in choices)
        errors.append(InvalidParam(name, f"must be {options}, got {_show(value)}"))
        return None
    return value


def parse_rule(name: object, document: object, max_ids: int = DEFAULT_MAX_IDS) -> AlertRule:
    """Validate a ``PUT …/alerts/{name}`` body; raise :class:`InvalidRequest` naming every problem.

    Numbers may be JSON numbers or numeric strings (as in the distribution's POST body); unknown
    fields are ignored. ``skillIds``/``agentIds`` follow the distribution's rules. ``minAnswers``
    defaults to 1 (no hidden minimum: a rule that should wait for evidence says how much, or uses
    ``bound: wilson_high``, which stays high on few answers). ``bound`` defaults to ``score`` and
    ``format`` to ``json``. The webhook's form is checked here; where it leads is checked by
    :func:`csatdist.webhooks.check_target` before the rule is saved.
    """
    errors: list[InvalidParam] = []
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        errors.append(
            InvalidParam("name", f"must be 1 to 64 letters, digits, '-' or '_', got {_show(name)}")
        )
    if not isinstance(document, Mapping):
        errors.append(InvalidParam("body", "must be a JSON object"))
        raise InvalidRequest(errors)

    timeframe = None
    if document.get("timeframe") is None:
        errors.append(
            InvalidParam("timeframe", f"is required: minutes, 1 to {MAX_TIMEFRAME_MINUTES}")
        )
    else:
        timeframe = _bounded_integer(
            "timeframe", document["timeframe"], 1, MAX_TIMEFRAME_MINUTES, errors
        )

    skills = _selection("skillIds", document.get("skillIds"), max_ids, errors)
    agents = _selection("agentIds", document.get("agentIds"), max_ids, errors)

    below = None
    raw_below = document.get("below")
    if raw_below is None:
        errors.append(InvalidParam("below", "is required: a CSAT ratio above 0 and at most 1"))
    else:
        below = _number(raw_below)
        if below is None or not 0 < below <= 1:
            errors.append(
                InvalidParam(
                    "below", f"must be a number above 0 and at most 1, got {_show(raw_below)}"
                )
            )
            below = None

    min_answers: int | None = DEFAULT_MIN_ANSWERS
    if document.get("minAnswers") is not None:
        min_answers = _bounded_integer("minAnswers", document["minAnswers"], 1, INT64_MAX, errors)

    bound = _choice("bound", document.get("bound"), BOUNDS, errors)
    format_ = _choice("format", document.get("format"), FORMATS, errors)

    webhook = document.get("webhook")
    if webhook is None:
        errors.append(InvalidParam("webhook", "is required: the https URL deliveries are sent to"))
    elif (problem := webhook_url_problem(webhook)) is not None:
        errors.append(InvalidParam("webhook", problem))

    if (
        errors
        or not isinstance(name, str)
        or timeframe is None
        or below is None
        or min_answers is None
        or not isinstance(webhook, str)
    ):
        raise InvalidRequest(errors)
    return AlertRule(
        name=name,
        timeframe=timeframe,
        skills=skills,
        agents=agents,
        below=below,
        min_answers=min_answers,
        bound=bound,
        webhook=webhook,
        format=format_,
    )


def _selection_text(selection: Selection | None) -> str | None:
    if selection is None:
        return None
    if selection.ids is None:
        return "all"
    return ",".join(str(i) for i in sorted(selection.ids))


def rule_document(rule: AlertRule) -> dict[str, Any]:
    """The rule as stored and shown, in the ``PUT`` shape; ``parse_rule`` reads it back equal."""
    return {
        "timeframe": rule.timeframe,
        "skillIds": _selection_text(rule.skills),
        "agentIds": _selection_text(rule.agents),
        "below": rule.below,
        "minAnswers": rule.min_answers,
        "bound": rule.bound,
        "webhook": rule.webhook,
        "format": rule.format,
    }


# -- evaluation ---------------------------------------------------------------------------------


def wilson_interval(positive: int, total: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval of ``positive / total``; ``(0.0, 0.0)`` when total is 0.

    The ends are exact at the extremes (0.0 when no answer is positive, 1.0 when all are), so a
    rule with ``below: 1`` never fires on a perfect score through rounding.
    """
    if total <= 0:
        return 0.0, 0.0
    p = positive / total
    z2n = z * z / total
    center = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / total + z2n / (4 * total)) / (1 + z2n)
    low = 0.0 if positive <= 0 else max(0.0, center - half)
    high = 1.0 if positive >= total else min(1.0, center + half)
    return low, high


def bound_value(rule: AlertRule, metrics: Mapping[str, Any]) -> float:
    """The number a rule compares with ``below``: ``csat_score``, or its Wilson upper end."""
    total = int(metrics["total_answers"])
    positive = int(metrics["positive_answers"])
    if rule.bound == "wilson_high":
        return wilson_interval(positive, total)[1]
    return positive / total if total else 0.0


def resolve_at(rule: AlertRule) -> float:
    """The bound at which a firing rule resolves: ``below + HYSTERESIS`` (at most 1), computed
    in decimal so that 0.1 + 0.02 is 0.12, not 0.12000000000000001."""
    return min(float(Decimal(repr(rule.below)) + HYSTERESIS), 1.0)


def evaluate(rule: AlertRule, metrics: Mapping[str, Any], previous: State | None) -> Decision:
    """The rule's new state over the window whose metrics ``M`` are given.

    Firing: ``total_answers >= minAnswers`` and bound ``< below``. Once firing, it resolves when
    total ``< minAnswers`` or bound ``>= below + HYSTERESIS`` (capped at 1). ``previous`` None
    (never evaluated) counts as ``ok``, so a healthy first evaluation announces nothing.
    """
    total = int(metrics["total_answers"])
    value = bound_value(rule, metrics)
    eligible = total >= rule.min_answers
    if previous == "firing":
        if eligible and value < resolve_at(rule):
            return Decision("firing", None, value, total)
        return Decision("ok", "resolved", value, total)
    if eligible and value < rule.below:
        return Decision("firing", "firing", value, total)
    return Decision("ok", None, value, total)


# -- delivery bodies ----------------------------------------------------------------------------


def delivery_body(
    rule: AlertRule,
    account_id: str,
    state: Transition,
    at_ms: int,
    window: Window,
    metrics: Mapping[str, Any],
    names: Directory | None = None,
) -> bytes:
    """The exact bytes POSTed (and signed) for a transition, in the rule's format.

    ``json``: ``{"alert", "account", "state", "at", "window": {"start", "end"}, "metrics": M}``.
    ``slack``: ``{"text": "…"}``, one readable line; ``names`` (the account's directory) shows
    the watched skills and agents by name.
    """
    if rule.format == "slack":
        return orjson.dumps({"text": slack_text(rule, account_id, state, metrics, names)})
    return orjson.dumps(
        {
            "alert": rule.name,
            "account": account_id,
            "state": state,
            "at": at_ms,
            "window": {"start": window.start_ms, "end": window.end_ms},
            "metrics": dict(metrics),
        }
    )


_EN_DASH = "\u2013"
#: Ids of a filter shown by name in a Slack line before "+N more".
SLACK_IDS_SHOWN = 3


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.1f} %"


def _slack_escape(text: str) -> str:
    # Slack reads <...> as links and mentions (<!channel>); these three must be escaped.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _scope(kind: str, selection: Selection | None, names: Mapping[int, str]) -> str | None:
    if selection is None:
        return None
    if selection.ids is None:
        return f"all {kind}"
    ids = sorted(selection.ids)
    shown = ", ".join(_slack_escape(display(i, names)) for i in ids[:SLACK_IDS_SHOWN])
    more = f" +{len(ids) - SLACK_IDS_SHOWN} more" if len(ids) > SLACK_IDS_SHOWN else ""
    return f"{kind} {shown}{more}"


def slack_text(
    rule: AlertRule,
    account_id: str,
    state: Transition,
    metrics: Mapping[str, Any],
    names: Directory | None = None,
) -> str:
    """One line, e.g. ``:red_circle: CSAT alert "low-billing" firing for account 123: 64.0 %
    (32 of 50 answers positive, 95 % CI 50.1-76.0 %; alert below 70 %) over the last 60 min,
    skills Billing (12)`` (with an en dash in the interval)."""
    total = int(metrics["total_answers"])
    positive = int(metrics["positive_answers"])
    icon = ":red_circle:" if state == "firing" else ":large_green_circle:"
    threshold = f"alert below {rule.below * 100:g} %"
    if rule.bound == "wilson_high":
        threshold += " (upper end of the CI)"
    if total == 0:
        figures = "no answers"
    else:
        low, high = wilson_interval(positive, total)
        figures = (
            f"{_percent(positive / total)} ({positive} of {total} answers positive, "
            f"95 % CI {low * 100:.1f}{_EN_DASH}{_percent(high)}; {threshold})"
        )
        if total < rule.min_answers:
            figures += f", fewer answers than the {rule.min_answers} needed"
    directory = names or Directory()
    scopes = [
        s
        for s in (
            _scope("skills", rule.skills, directory.skills),
            _scope("agents", rule.agents, directory.agents),
        )
        if s
    ]
    where = f", {'; '.join(scopes)}" if scopes else ""
    return (
        f'{icon} CSAT alert "{rule.name}" {state} for account {account_id}: {figures} '
        f"over the last {rule.timeframe} min{where}"
    )
