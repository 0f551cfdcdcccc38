"""Query parameters: parsing and validation into a :class:`DistributionQuery` (pure).

Rules are CONTRACT.md section 2. Values come either from a query string (strings, repeated keys
already joined with commas) or from a JSON body (numbers, strings, lists or null); both go through
the same rules, and every violation is reported with its parameter name and reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from csatdist.buckets import BUCKET_MS, MAX_TIMEFRAME_MINUTES, MINUTE_MS
from csatdist.errors import InvalidParam, InvalidRequest

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
DEFAULT_MAX_IDS = 1000

_INTEGER = re.compile(r"[+-]?\d+")
#: int64 has 19 digits. Longer numbers are out of range whatever they are, and are never
#: converted: int() refuses more than 4,300 digits (a ValueError, which was a 500) and is
#: quadratic below that.
_INT64_DIGITS = 19
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")


@dataclass(frozen=True, slots=True)
class Selection:
    """A skillIds/agentIds filter: ``ids is None`` means ``all``."""

    ids: frozenset[int] | None


ALL = Selection(ids=None)


@dataclass(frozen=True, slots=True)
class DistributionQuery:
    timeframe: int
    skills: Selection | None = None
    agents: Selection | None = None
    interval: int | None = None


def _show(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= 40 else text[:37] + "..."


def _as_integer(value: object) -> int | None:
    """An integer from a number or a decimal string, or None if it is not a whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        text = value.strip()
        if len(text.lstrip("+-").lstrip("0")) > _INT64_DIGITS:
            return INT64_MIN - 1 if text.startswith("-") else INT64_MAX + 1
        return int(text)
    return None


def _minutes(name: str, value: object, errors: list[InvalidParam]) -> int | None:
    minutes = _as_integer(value)
    if minutes is None:
        errors.append(InvalidParam(name, f"must be a whole number of minutes, got {_show(value)}"))
    return minutes


def _is_absent(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def parse_selection(
    name: str, value: object, errors: list[InvalidParam], max_ids: int = DEFAULT_MAX_IDS
) -> Selection | None:
    """``all``, a comma-separated list (or a JSON list) of int64 ids, or None when absent/empty."""
    if _is_absent(value):
        return None
    items: list[object]
    if isinstance(value, str):
        if value.strip().lower() == "all":
            return ALL
        items = list(value.split(","))
    elif isinstance(value, list):
        items = list(value)
        if len(items) == 1 and isinstance(items[0], str) and items[0].strip().lower() == "all":
            return ALL
    else:
        items = [value]
    if len(items) > max_ids:
        errors.append(InvalidParam(name, f"too many ids: {len(items)}, at most {max_ids}"))
        return None
    ids: set[int] = set()
    for position, item in enumerate(items):
        if isinstance(item, str) and item.strip() == "":
            errors.append(InvalidParam(name, f"empty id at position {position}"))
            return None
        parsed = _as_integer(item) if not isinstance(item, float) else None
        if parsed is None:
            errors.append(
                InvalidParam(
                    name,
                    f"{_show(item)} is not an integer id; expected 'all' or a comma-separated "
                    "list of integers",
                )
            )
            return None
        if not INT64_MIN <= parsed <= INT64_MAX:
            errors.append(InvalidParam(name, f"id {_show(item)} is outside the int64 range"))
            return None
        ids.add(parsed)
    return Selection(ids=frozenset(ids))


def parse_query(params: Mapping[str, object], max_ids: int = DEFAULT_MAX_IDS) -> DistributionQuery:
    """Validate query parameters; raise :class:`InvalidRequest` naming every broken rule."""
    errors: list[InvalidParam] = []

    version = params.get("v")
    if _is_absent(version):
        errors.append(InvalidParam("v", "is required and must be 1"))
    elif not _is_version_one(version):
        errors.append(InvalidParam("v", f"must be 1, got {_show(version)}"))

    timeframe: int | None = None
    raw_timeframe = params.get("timeframe")
    if _is_absent(raw_timeframe):
        errors.append(InvalidParam("timeframe", "is required: minutes, 1 to 1440"))
    else:
        timeframe = _minutes("timeframe", raw_timeframe, errors)
        if timeframe is not None and not 1 <= timeframe <= MAX_TIMEFRAME_MINUTES:
            errors.append(
                InvalidParam(
                    "timeframe",
                    f"must be between 1 and {MAX_TIMEFRAME_MINUTES}, got {_show(raw_timeframe)}",
                )
            )
            timeframe = None

    skills = parse_selection("skillIds", params.get("skillIds"), errors, max_ids)
    agents = parse_selection("agentIds", params.get("agentIds"), errors, max_ids)

    interval: int | None = None
    raw_interval = params.get("interval")
    if not _is_absent(raw_interval):
        interval = _minutes("interval", raw_interval, errors)
        if interval is not None:
            reason = _interval_problem(interval, timeframe)
            if reason:
                errors.append(InvalidParam("interval", reason))

    if errors or timeframe is None:  # every path that leaves timeframe None records an error
        raise InvalidRequest(errors)
    return DistributionQuery(timeframe=timeframe, skills=skills, agents=agents, interval=interval)


def _is_version_one(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value == 1
    return isinstance(value, str) and bool(_DECIMAL.fullmatch(value.strip())) and float(value) == 1


def _interval_problem(interval: int, timeframe: int | None) -> str | None:
    step = BUCKET_MS // MINUTE_MS
    if interval < step or interval % step:
        return f"must be a multiple of {step} minutes and at least {step}, got {interval}"
    if timeframe is None:
        return None  # timeframe's own error is already reported
    if interval > timeframe:
        return f"must not exceed timeframe ({timeframe}), got {interval}"
    if timeframe % interval:
        return f"must divide timeframe ({timeframe}) evenly, got {interval}"
    return None
