"""Report parameters: parsing and validation into a :class:`ReportQuery` (pure; ``now`` passed in).

Rules are EXTENSIONS.md section 7; ``skillIds``/``agentIds`` follow the distribution
(CONTRACT.md section 2, :func:`csatdist.query.parse_selection`). Every broken rule is reported
with its parameter name and reason, several at once where several are wrong.

Limits, and why:

- the range is at most ``history_days`` long (default 400, the history retention; as many
  calendar days in ``tz``, so a range gaining a DST hour still fits), must not start
  before ``now - history_days`` (those counts are gone), and ``compare=previous`` must not reach
  before it either;
- ``to`` is at most :data:`MAX_FUTURE_MS` (32 days) after ``now``: enough to ask for the whole
  current hour, day, week or month in any zone (a month is at most 31 days and one DST hour), so
  dashboards can request "this month" and get its future days as zeros, while a range years
  ahead is refused as a mistake;
- at most :data:`MAX_PERIODS` (10,000) periods: 400 days by hour (9,600, or 9,601 across a DST
  change) fit, a longer hourly range does not;
- at most :data:`MAX_SERIES_ENTRIES` (100,000) series entries, periods x (1 + skills + agents):
  each entry is a metrics object of about 310 bytes of JSON, so a reply stays under ~31 MB
  (about 0.5 s to assemble and render on one core; CSV is half the size). With
  explicit id lists this is checked here; with ``all`` the number of ids is known only from the
  data: the store counts them before it sums, and stops once more than fit
  (:class:`csatdist.report.assembly.GroupLimit`), so a refusal costs about what that many ids
  do; assembly checks the sums again (:func:`csatdist.report.assembly.assemble_report`);
- every boundary on a 15-minute step of UTC, the storage resolution
  (:func:`csatdist.report.periods.check_resolution`).
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from csatdist.errors import InvalidParam, InvalidRequest
from csatdist.query import DEFAULT_MAX_IDS, Selection, parse_selection
from csatdist.report.periods import (
    DAY_MS,
    EARLIEST_MS,
    LATEST_MS,
    RESOLUTION_MS,
    Granularity,
    Period,
    TooManyPeriods,
    boundaries,
    first_instant_of_date,
    resolution_problems,
    rfc3339,
)

DEFAULT_HISTORY_DAYS = 400
DEFAULT_TZ = "UTC"
DEFAULT_GRANULARITY = Granularity.DAY
MAX_FUTURE_MS = 32 * DAY_MS
MAX_PERIODS = 10_000
MAX_SERIES_ENTRIES = 100_000
#: N calendar days in ``tz`` may last N x 24 hours plus the DST hours they gain (at most 2, in
#: the double summer times of the 1940s), and still count as N days.
_DST_SLACK_MS = 2 * 60 * 60_000

#: Longer values are refused before any parsing: no valid time or zone name comes close.
_MAX_TEXT = 64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_MS = re.compile(r"[+-]?\d+")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATE_TIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})?"
)
#: An offset whose "+" a query string turned into a space.
_PLUS_AS_SPACE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)? \d{2}:\d{2}")
#: Names ZoneInfo accepts that are not a place: this server's own local time.
_NOT_ZONES = frozenset({"localtime", "posixrules"})
_TIME_FORMS = "RFC 3339 with an offset (2026-03-01T00:00:00Z), epoch milliseconds, or a date"


class Compare(StrEnum):
    PREVIOUS = "previous"


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """A valid report request. ``boundaries`` are ``[from_ms, …, to_ms]`` (see
    :func:`csatdist.report.periods.boundaries`), computed and checked by :func:`parse_report_query`.
    """

    from_ms: int
    to_ms: int
    tz: str
    granularity: Granularity
    boundaries: tuple[int, ...]
    skills: Selection | None = None
    agents: Selection | None = None
    compare: Compare | None = None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)  # ZoneInfo caches its instances

    @property
    def periods(self) -> list[Period]:
        bounds = self.boundaries
        return [Period(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]

    @property
    def previous(self) -> Period | None:
        """With ``compare=previous``: the range of the same length that ends at ``from``."""
        if self.compare is None:
            return None
        return Period(2 * self.from_ms - self.to_ms, self.from_ms)


def _show(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= 40 else text[:37] + "..."


def _is_absent(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _in_range(name: str, instant: int, errors: list[InvalidParam]) -> int | None:
    if EARLIEST_MS <= instant <= LATEST_MS:
        return instant
    shown = instant if abs(instant) < 10**20 else "the number"  # str() of 5,000 digits raises
    errors.append(
        InvalidParam(
            name,
            f"{shown} is outside the supported range {rfc3339(EARLIEST_MS)} to "
            f"{rfc3339(LATEST_MS)}",
        )
    )
    return None


def _parse_time(name: str, value: object, errors: list[InvalidParam]) -> int | date | None:
    """Epoch ms, or a ``date`` still to be resolved in ``tz``; None (and an error) if invalid."""
    if _is_absent(value):
        errors.append(InvalidParam(name, f"is required: {_TIME_FORMS} YYYY-MM-DD"))
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return _in_range(name, value, errors)
    if not isinstance(value, str):
        errors.append(InvalidParam(name, f"must be {_TIME_FORMS} YYYY-MM-DD, got {_show(value)}"))
        return None
    text = value.strip()
    if len(text) > _MAX_TEXT:
        errors.append(InvalidParam(name, f"is too long ({len(text)} characters) for a time"))
        return None
    if _EPOCH_MS.fullmatch(text):
        if len(text.lstrip("+-")) > len(str(LATEST_MS)):  # int() of thousands of digits is slow
            errors.append(InvalidParam(name, f"{_show(text)} is too large for epoch milliseconds"))
            return None
        return _in_range(name, int(text), errors)
    if _DATE.fullmatch(text):
        try:
            day = date.fromisoformat(text)
        except ValueError as exc:
            errors.append(InvalidParam(name, f"{_show(text)} is not a valid date: {exc}"))
            return None
        if not 3 <= day.year <= 9996:
            errors.append(InvalidParam(name, f"{_show(text)} is outside years 0003 to 9996"))
            return None
        return day
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        reason = f"{_show(text)} is not {_TIME_FORMS} YYYY-MM-DD"
        if _PLUS_AS_SPACE.fullmatch(text):
            reason += "; a '+' in a query string means a space: write the offset as %2B"
        errors.append(InvalidParam(name, reason))
        return None
    day_text, time_text, fraction, offset = match.groups()
    if offset is None:
        errors.append(
            InvalidParam(
                name,
                f"{_show(text)} has no UTC offset: add Z or ±hh:mm, or give a date YYYY-MM-DD "
                "for midnight in tz",
            )
        )
        return None
    fraction = f".{fraction[:6]}" if fraction else ""  # datetime keeps microseconds at most
    try:
        moment = datetime.fromisoformat(f"{day_text}T{time_text}{fraction}{offset.upper()}")
        instant = (moment - _EPOCH) // timedelta(milliseconds=1)
    except (ValueError, OverflowError) as exc:
        errors.append(InvalidParam(name, f"{_show(text)} is not a valid date-time: {exc}"))
        return None
    return _in_range(name, instant, errors)


@functools.cache
def _zone_names_by_folded_case() -> dict[str, str]:
    return {name.casefold(): name for name in zoneinfo.available_timezones()}


def _parse_zone(value: object, errors: list[InvalidParam]) -> ZoneInfo | None:
    if _is_absent(value):
        return ZoneInfo(DEFAULT_TZ)
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        errors.append(InvalidParam("tz", f"must be an IANA time zone name, got {_show(value)}"))
        return None
    name = value.strip()
    if name not in _NOT_ZONES:
        try:
            return ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            pass
    reason = f"unknown time zone {_show(name)}: expected an IANA name such as Europe/Berlin"
    suggestion = _zone_names_by_folded_case().get(name.casefold())
    if suggestion and suggestion != name:
        reason += f" (did you mean {suggestion}?)"
    errors.append(InvalidParam("tz", reason))
    return None


def _parse_granularity(value: object, errors: list[InvalidParam]) -> Granularity | None:
    if _is_absent(value):
        return DEFAULT_GRANULARITY
    try:
        return Granularity(str(value).strip().lower())
    except ValueError:
        choices = ", ".join(g.value for g in Granularity)
        errors.append(InvalidParam("granularity", f"must be one of {choices}; got {_show(value)}"))
        return None


def _parse_compare(value: object, errors: list[InvalidParam]) -> Compare | None:
    if _is_absent(value):
        return None
    try:
        return Compare(str(value).strip().lower())
    except ValueError:
        errors.append(InvalidParam("compare", f"must be 'previous' or absent, got {_show(value)}"))
        return None


def _resolve(instant: int | date | None, zone: ZoneInfo | None) -> int | None:
    if isinstance(instant, date):
        return None if zone is None else first_instant_of_date(instant, zone)
    return instant


def _range_problems(
    from_ms: int | None,
    to_ms: int | None,
    compare: Compare | None,
    now_ms: int,
    history_days: int,
) -> list[InvalidParam]:
    problems = []
    oldest = now_ms - history_days * DAY_MS
    kept = f"history is kept for {history_days} days"
    if from_ms is not None and from_ms < oldest:
        problems.append(
            InvalidParam(
                "from",
                f"{rfc3339(from_ms)} is older than the history limit: {kept}, so from must be "
                f"at or after {rfc3339(oldest)}",
            )
        )
    if to_ms is not None and to_ms > now_ms + MAX_FUTURE_MS:
        problems.append(
            InvalidParam(
                "to",
                f"{rfc3339(to_ms)} is more than {MAX_FUTURE_MS // DAY_MS} days in the future; "
                f"to must be at or before {rfc3339(now_ms + MAX_FUTURE_MS)}",
            )
        )
    if from_ms is None or to_ms is None:
        return problems
    if to_ms <= from_ms:
        what = "the range is empty" if to_ms == from_ms else "the range is reversed"
        problems.append(
            InvalidParam("to", f"must be after from ({rfc3339(from_ms)}); {what}: [from, to)")
        )
        return problems
    length = to_ms - from_ms
    if length > history_days * DAY_MS + _DST_SLACK_MS:
        problems.append(
            InvalidParam(
                "to",
                f"the range from {rfc3339(from_ms)} to {rfc3339(to_ms)} is "
                f"{length / DAY_MS:.4g} days long; at most {history_days} ({kept})",
            )
        )
    elif compare is not None and from_ms - length < oldest <= from_ms:
        problems.append(
            InvalidParam(
                "compare",
                f"the previous range would start at {rfc3339(from_ms - length)}, before the "
                f"history limit {rfc3339(oldest)} ({kept}); shorten the range or leave out compare",
            )
        )
    return problems


def _id_count(selection: Selection | None) -> int:
    return 0 if selection is None or selection.ids is None else len(selection.ids)


def parse_report_query(
    params: Mapping[str, object],
    *,
    now_ms: int,
    history_days: int = DEFAULT_HISTORY_DAYS,
    max_ids: int = DEFAULT_MAX_IDS,
    resolution_ms: int = RESOLUTION_MS,
    max_periods: int = MAX_PERIODS,
    max_series_entries: int = MAX_SERIES_ENTRIES,
) -> ReportQuery:
    """Validate the parameters of ``GET …/csat/report``; raise :class:`InvalidRequest` naming
    every broken rule.

    ``from``/``to``: RFC 3339 with an offset (fractions below a millisecond are dropped), epoch
    milliseconds, or a date ``YYYY-MM-DD``, which means the first instant of that date in ``tz``
    (its midnight, or the end of the DST gap that swallows it: see
    :func:`csatdist.report.periods.first_instant_of_date`). The range is half-open,
    ``[from, to)``. ``tz`` defaults to UTC, ``granularity`` to day; ``compare`` is ``previous`` or
    absent. Unknown parameters are ignored. The limits are in the module docstring.
    """
    errors: list[InvalidParam] = []
    raw_from = _parse_time("from", params.get("from"), errors)
    raw_to = _parse_time("to", params.get("to"), errors)
    zone = _parse_zone(params.get("tz"), errors)
    granularity = _parse_granularity(params.get("granularity"), errors)
    skills = parse_selection("skillIds", params.get("skillIds"), errors, max_ids)
    agents = parse_selection("agentIds", params.get("agentIds"), errors, max_ids)
    compare = _parse_compare(params.get("compare"), errors)
    from_ms, to_ms = _resolve(raw_from, zone), _resolve(raw_to, zone)
    errors.extend(_range_problems(from_ms, to_ms, compare, now_ms, history_days))
    if errors or from_ms is None or to_ms is None or zone is None or granularity is None:
        raise InvalidRequest(errors)  # each None above comes with its error

    try:
        bounds = boundaries(from_ms, to_ms, zone, granularity, max_periods=max_periods)
    except TooManyPeriods:
        raise InvalidRequest.one(
            "granularity",
            f"{granularity} gives more than {max_periods} periods from {rfc3339(from_ms)} to "
            f"{rfc3339(to_ms)}; choose a coarser granularity or a shorter range",
        ) from None
    errors.extend(resolution_problems(bounds, zone, resolution_ms))
    period_count = len(bounds) - 1
    ids = _id_count(skills) + _id_count(agents)
    entries = period_count * (1 + ids)
    if entries > max_series_entries:
        errors.append(
            InvalidParam(
                "granularity",
                f"{period_count} {granularity} periods x (1 + {ids} skillIds and agentIds) make "
                f"{entries} series entries, more than {max_series_entries}; choose a coarser "
                "granularity, a shorter range or fewer ids",
            )
        )
    if errors:
        raise InvalidRequest(errors)
    return ReportQuery(
        from_ms=from_ms,
        to_ms=to_ms,
        tz=zone.key,
        granularity=granularity,
        boundaries=tuple(bounds),
        skills=skills,
        agents=agents,
        compare=compare,
    )
