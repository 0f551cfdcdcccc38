"""Calendar periods of any IANA zone as epoch-millisecond boundaries (pure; no clock reads).

A report's periods are the calendar units of the wall clock in ``tz`` (EXTENSIONS.md section 7).
Their boundaries are the instants at which the *period key* of the local wall time changes:

- ``hour``: the local (date, hour); and also every instant at which the wall clock reads
  hh:00:00.000 again, so the hour repeated by a whole-hour fall-back is its own period. A fall-back
  that does not land on minute 0 starts no new hour: Australia/Lord_Howe's 02:00 -> 01:30 makes
  its hour 01 last 90 minutes, and its spring 02:00 -> 02:30 makes hour 02 last 30 minutes;
- ``day``: the local date. A DST day has 23 or 25 hours (24.5 on Lord Howe); a date the zone
  skips has no period (Pacific/Apia went from 2011-12-29 straight to 2011-12-31); a date whose
  midnight falls in a DST gap starts at the end of the gap (America/Santiago 2022-09-11 at 01:00);
- ``week``: the ISO week, Monday 00:00 local;
- ``month``: the local (year, month);
- ``total``: one period.

A key that moves backwards is a change too. America/St_Johns fell back at 00:01 to 23:01 of the
previous date from 1987 to 2006, so the Sunday it happened on began at 00:00, and the Saturday
came back at 00:01 for 59 more minutes before Sunday began again.

How: the UTC offset of a zone is piecewise constant. Within a piece the wall clock is
``utc + offset``, so the period starts are arithmetic progressions (months: a short loop); where
the offset changes there is a boundary exactly when the key changes (or, for hours, the wall
clock lands on minute 0). zoneinfo has no public list of offset changes, so they are found by
probing the offset once per :data:`PROBE_MS` and bisecting to the millisecond where it changes.
That finds every change unless two changes that cancel out lie within one probe step; in the
whole tz database the closest pair of offset changes of any zone is about 4 days apart
(Africa/Freetown, 1939), and ``tests/test_report_periods.py`` checks that against the installed
database.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, tzinfo
from enum import StrEnum
from typing import NamedTuple
from zoneinfo import ZoneInfo

from csatdist.errors import InvalidParam, InvalidRequest

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS
#: History is stored in 15-minute steps of UTC, so every boundary must fall on one.
RESOLUTION_MS = 15 * MINUTE_MS
#: How often the offset is probed for changes; far below the ~4 days between any two changes.
PROBE_MS = DAY_MS

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: UTC wall time, to subtract from a local wall time.
_NAIVE_EPOCH = datetime(1970, 1, 1)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_ONE_MS = timedelta(milliseconds=1)
#: 1970-01-05, the first Monday after the epoch, is day 4.
_MONDAY = 4

#: The instants this module accepts: local times a few days around them stay inside datetime's
#: years 1..9999, so no conversion can overflow.
EARLIEST_MS = (date(2, 1, 1).toordinal() - _EPOCH_ORDINAL) * DAY_MS
LATEST_MS = (date(9998, 1, 1).toordinal() - _EPOCH_ORDINAL) * DAY_MS


class Granularity(StrEnum):
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    TOTAL = "total"


class Period(NamedTuple):
    """``[start_ms, end_ms)`` in epoch milliseconds."""

    start_ms: int
    end_ms: int


class TooManyPeriods(Exception):
    """More periods than the ``max_periods`` a caller allows; raised before building them all."""

    def __init__(self, max_periods: int) -> None:
        super().__init__(f"more than {max_periods} periods")
        self.max_periods = max_periods


def utc_offset_ms(zone: ZoneInfo, instant_ms: int) -> int:
    """The zone's UTC offset at an instant: local wall time = instant + offset."""
    utc = _NAIVE_EPOCH + timedelta(milliseconds=instant_ms)
    wall = local_datetime(zone, instant_ms).replace(tzinfo=None)
    return (wall - utc) // _ONE_MS


def local_datetime(zone: tzinfo, instant_ms: int) -> datetime:
    """The aware local date-time of an instant in ``zone``."""
    return (_EPOCH + timedelta(milliseconds=instant_ms)).astimezone(zone)


def _check_range(from_ms: int, to_ms: int) -> None:
    if not EARLIEST_MS <= from_ms < to_ms <= LATEST_MS:
        raise ValueError(
            f"need EARLIEST_MS <= from_ms < to_ms <= LATEST_MS, got [{from_ms}, {to_ms})"
        )


def _offset_pieces(zone: ZoneInfo, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """``[(start, offset), (change, offset), …]``: the offset from ``start_ms`` and every instant
    in ``(start_ms, end_ms)`` where it changes, with the new offset."""
    instant = start_ms
    offset = utc_offset_ms(zone, instant)
    pieces = [(instant, offset)]
    last = end_ms - 1
    while instant < last:
        probe = min(instant + PROBE_MS, last)
        if utc_offset_ms(zone, probe) == offset:
            instant = probe
            continue
        low, high = instant, probe  # the offset is unchanged at low and changed at high
        while high - low > 1:
            middle = (low + high) // 2
            if utc_offset_ms(zone, middle) == offset:
                low = middle
            else:
                high = middle
        instant, offset = high, utc_offset_ms(zone, high)
        pieces.append((instant, offset))
    return pieces


def _key(wall_ms: int, granularity: Granularity) -> int:
    """A number that is equal for two wall times exactly when they are in the same period."""
    if granularity is Granularity.HOUR:
        return wall_ms // HOUR_MS
    day = wall_ms // DAY_MS
    if granularity is Granularity.DAY:
        return day
    if granularity is Granularity.WEEK:
        return (day - _MONDAY) // 7
    local = date.fromordinal(day + _EPOCH_ORDINAL)
    return local.year * 12 + local.month - 1


def _starts_inside(
    start_ms: int, end_ms: int, offset_ms: int, granularity: Granularity
) -> Sequence[int]:
    """The instants in ``(start_ms, end_ms)`` whose wall time (``instant + offset``) begins a
    period; the offset is constant there, so the wall clock runs without jumps."""
    low = start_ms + offset_ms
    if granularity is Granularity.MONTH:
        local = date.fromordinal(low // DAY_MS + _EPOCH_ORDINAL)
        year, month = local.year, local.month
        starts: list[int] = []
        while True:
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
            instant = (date(year, month, 1).toordinal() - _EPOCH_ORDINAL) * DAY_MS - offset_ms
            if instant >= end_ms:
                return starts
            starts.append(instant)
    step, phase = {
        Granularity.HOUR: (HOUR_MS, 0),
        Granularity.DAY: (DAY_MS, 0),
        Granularity.WEEK: (WEEK_MS, _MONDAY * DAY_MS),
    }[granularity]
    first_wall = ((low - phase) // step + 1) * step + phase
    return range(first_wall - offset_ms, end_ms, step)


def boundaries(
    from_ms: int,
    to_ms: int,
    zone: ZoneInfo,
    granularity: Granularity,
    *,
    max_periods: int | None = None,
) -> list[int]:
    """``[from_ms, b1, …, to_ms]``, strictly increasing: the period starts in ``[from, to)`` (the
    first one clipped to ``from_ms``) followed by ``to_ms``, which clips the last one.

    Raises :class:`TooManyPeriods` as soon as there would be more than ``max_periods`` periods,
    without building them; ``ValueError`` unless ``EARLIEST_MS <= from_ms < to_ms <= LATEST_MS``.
    """
    _check_range(from_ms, to_ms)
    if granularity is Granularity.TOTAL:
        return [from_ms, to_ms]
    pieces = _offset_pieces(zone, from_ms, to_ms)
    result = [from_ms]
    for index, (start, offset) in enumerate(pieces):
        end = pieces[index + 1][0] if index + 1 < len(pieces) else to_ms
        if index:  # the offset changes at start
            wall_before = start - 1 + pieces[index - 1][1]
            wall = start + offset
            if _key(wall_before, granularity) != _key(wall, granularity) or (
                granularity is Granularity.HOUR and wall % HOUR_MS == 0
            ):
                result.append(start)
        starts = _starts_inside(start, end, offset, granularity)
        if max_periods is not None and len(result) + len(starts) > max_periods:
            raise TooManyPeriods(max_periods)
        result.extend(starts)
    result.append(to_ms)
    return result


def periods(from_ms: int, to_ms: int, zone: ZoneInfo, granularity: Granularity) -> list[Period]:
    """The periods of ``[from_ms, to_ms)`` in ``zone``, oldest first; see :func:`boundaries`."""
    bounds = boundaries(from_ms, to_ms, zone, granularity)
    return [Period(start, end) for start, end in itertools.pairwise(bounds)]


def first_instant_of_date(day: date, zone: ZoneInfo) -> int:
    """The first instant whose local date in ``zone`` is ``day`` or later: its midnight.

    When that midnight does not exist because the clocks jump over it (America/Santiago,
    America/Havana, Asia/Beirut spring forward at 00:00), the date starts at the end of the gap,
    e.g. Santiago's 2022-09-11 at 01:00 -03 (04:00Z). A date the zone skips altogether starts
    where the next date does: Pacific/Apia's 2011-12-30 resolves to 2011-12-31 00:00 +14.
    Raises ``ValueError`` outside years 3..9996.
    """
    wall = (day.toordinal() - _EPOCH_ORDINAL) * DAY_MS
    # No UTC offset ever exceeded 16 hours, and no zone skipped more than one date: the start is
    # within a few days of the wall time.
    around = boundaries(wall - 3 * DAY_MS, wall + 3 * DAY_MS, zone, Granularity.DAY)
    target = _key(wall, Granularity.DAY)
    for instant in around[1:-1]:
        if _key(instant + utc_offset_ms(zone, instant), Granularity.DAY) >= target:
            return instant
    raise AssertionError(f"no start of {day} near its wall time in {zone.key}")  # pragma: no cover


def rfc3339(instant_ms: int, zone: ZoneInfo | None = None) -> str:
    """An instant as RFC 3339, in ``zone`` (with its offset) or UTC (``Z``); milliseconds only
    when there are some. An offset with seconds (local mean time before 1900-1970) keeps them,
    which RFC 3339 cannot express; such zones are refused for reports anyway."""
    moment = local_datetime(zone or UTC, instant_ms)
    text = moment.isoformat(timespec="milliseconds" if instant_ms % 1000 else "seconds")
    return text if zone is not None else text.removesuffix("+00:00") + "Z"


def format_offset(offset_ms: int) -> str:
    """``+05:45``, ``-00:44:30``: seconds only when there are some."""
    sign = "-" if offset_ms < 0 else "+"
    seconds = abs(offset_ms) // 1000
    text = f"{sign}{seconds // 3600:02d}:{seconds // 60 % 60:02d}"
    return text + f":{seconds % 60:02d}" if seconds % 60 else text


def resolution_problems(
    bounds: Sequence[int], zone: ZoneInfo, resolution_ms: int = RESOLUTION_MS
) -> list[InvalidParam]:
    """Why the storage (counts per ``resolution_ms`` step of UTC) cannot answer exactly for these
    boundaries: one problem per culprit (``from``, ``to`` or ``tz``), none when all are aligned."""
    minutes = f"{resolution_ms / MINUTE_MS:g}-minute"
    stored = f"history is kept in {minutes} steps of UTC"
    problems: dict[str, InvalidParam] = {}

    def blame_zone(instant: int, offset: int) -> None:
        if offset % resolution_ms:
            reason = (
                f"tz {zone.key} has a UTC offset of {format_offset(offset)} in this range (at "
                f"{rfc3339(instant)}), which is not a multiple of {resolution_ms // MINUTE_MS} "
                f"minutes: {stored}, so its periods cannot be counted exactly; use another tz "
                "(e.g. UTC)"
            )
        else:
            reason = (
                f"tz {zone.key} changes its UTC offset at {rfc3339(instant)}, which is not on a "
                f"{minutes} step: {stored}, so its periods cannot be counted exactly; use "
                "another tz (e.g. UTC) or granularity=total"
            )
        problems.setdefault("tz", InvalidParam("tz", reason))

    for name, instant in (("from", bounds[0]), ("to", bounds[-1])):
        if instant % resolution_ms == 0:
            continue
        offset = utc_offset_ms(zone, instant)
        if offset % resolution_ms and (instant + offset) % resolution_ms == 0:
            blame_zone(instant, offset)  # a local midnight that no UTC step matches
        else:
            problems[name] = InvalidParam(
                name,
                f"{rfc3339(instant)} is not on a {minutes} step of UTC: {stored}, so a range "
                f"must start and end on one (e.g. hh:00, hh:15, hh:30, hh:45 UTC)",
            )
    for instant in bounds[1:-1]:
        if instant % resolution_ms:
            blame_zone(instant, utc_offset_ms(zone, instant))
            break
    return list(problems.values())


def check_resolution(
    bounds: Sequence[int], zone: ZoneInfo, resolution_ms: int = RESOLUTION_MS
) -> None:
    """Raise :class:`InvalidRequest` (400) unless every boundary is on a ``resolution_ms`` step
    of UTC; see :func:`resolution_problems`."""
    problems = resolution_problems(bounds, zone, resolution_ms)
    if problems:
        raise InvalidRequest(problems)
