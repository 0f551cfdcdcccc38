"""Calendar periods against a deliberately naive reference, in zones with every kind of DST.

The reference walks a range minute by minute, converts each instant to local time with zoneinfo,
and starts a new period wherever the local hour, date, ISO week or month differs from the
minute before (and, for hours, wherever the wall clock reads hh:00:00 again). It shares no code
with the module: no offsets, no arithmetic on wall times, no transitions.
"""

from __future__ import annotations

import functools
import itertools
import time
import zoneinfo
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csatdist.errors import InvalidRequest
from csatdist.report.periods import (
    PROBE_MS,
    Granularity,
    Period,
    boundaries,
    check_resolution,
    first_instant_of_date,
    periods,
    resolution_problems,
)

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CALENDAR = (Granularity.HOUR, Granularity.DAY, Granularity.WEEK, Granularity.MONTH)

#: Whole-hour DST north and south, :30 and :45 offsets, 30-minute DST, DST at midnight and at
#: 00:01, Ramadan suspensions.
ZONES = (
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
    "America/Havana",
    "Asia/Beirut",
)
#: In these years every offset of ZONES is a whole number of minutes, so a walk by minutes
#: sees every boundary (Kathmandu had +05:30 until 1986, St_Johns -03:30:52 until 1935).
FIRST_YEAR, LAST_YEAR = 1976, 2045


def ms(text: str) -> int:
    return (datetime.fromisoformat(text) - EPOCH) // timedelta(milliseconds=1)


def local(instant: int, zone: ZoneInfo) -> datetime:
    return (EPOCH + timedelta(milliseconds=instant)).astimezone(zone)


def naive_key(moment: datetime, granularity: Granularity) -> object:
    if granularity is Granularity.HOUR:
        return (moment.date(), moment.hour)
    if granularity is Granularity.DAY:
        return moment.date()
    if granularity is Granularity.WEEK:
        return moment.isocalendar()[:2]
    return (moment.year, moment.month)


def naive_boundaries_all(
    from_ms: int, to_ms: int, zone: ZoneInfo, step: int = MINUTE
) -> dict[Granularity, list[int]]:
    """Boundaries of every calendar granularity, from one walk over ``[from, to)``."""
    found: dict[Granularity, list[int]] = {g: [from_ms] for g in CALENDAR}
    instant = (from_ms // step + 1) * step
    before = local(instant - step, zone)
    while instant < to_ms:
        now = local(instant, zone)
        for granularity in CALENDAR:
            on_the_hour = now.minute == now.second == now.microsecond == 0
            if naive_key(now, granularity) != naive_key(before, granularity) or (
                granularity is Granularity.HOUR and on_the_hour
            ):
                found[granularity].append(instant)
        before = now
        instant += step
    for bounds in found.values():
        bounds.append(to_ms)
    return found


def naive_boundaries(
    from_ms: int, to_ms: int, zone: ZoneInfo, granularity: Granularity, step: int = MINUTE
) -> list[int]:
    if granularity is Granularity.TOTAL:
        return [from_ms, to_ms]
    return naive_boundaries_all(from_ms, to_ms, zone, step)[granularity]


@functools.cache
def offset_change_days(name: str) -> list[int]:
    """Instants (to within a day) where the zone's offset changes, found by a daily scan."""
    zone = ZoneInfo(name)
    start, end = ms(f"{FIRST_YEAR}-01-01T00:00:00+00:00"), ms(f"{LAST_YEAR}-12-31T00:00:00+00:00")
    days = range(start, end, DAY)
    offsets = [local(day, zone).utcoffset() for day in days]
    return [days[i] for i in range(1, len(days)) if offsets[i] != offsets[i - 1]]


def labels(bounds: list[int], zone: ZoneInfo) -> list[tuple[str, float]]:
    """Each period as its local start and its length in hours, for readable assertions."""
    return [
        (local(start, zone).isoformat(timespec="minutes"), (end - start) / HOUR)
        for start, end in itertools.pairwise(bounds)
    ]


# -- the reference itself, on cases checked by hand -------------------------------------------


def test_reference_sees_a_fall_back_hour_as_its_own_period() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    bounds = naive_boundaries(
        ms("2024-10-27T00:00:00+00:00"), ms("2024-10-27T02:00:00+00:00"), berlin, Granularity.HOUR
    )
    assert labels(bounds, berlin) == [("2024-10-27T02:00+02:00", 1), ("2024-10-27T02:00+01:00", 1)]


# -- explicit cases ---------------------------------------------------------------------------


def day_of(zone_name: str, day: str, granularity: Granularity) -> list[tuple[str, float]]:
    zone = ZoneInfo(zone_name)
    start = first_instant_of_date(date.fromisoformat(day), zone)
    end = first_instant_of_date(date.fromisoformat(day) + timedelta(days=1), zone)
    bounds = boundaries(start, end, zone, granularity)
    assert bounds == naive_boundaries(start, end, zone, granularity)
    return labels(bounds, zone)


def test_spring_forward_day_has_23_hours() -> None:
    assert day_of("Europe/Berlin", "2024-03-31", Granularity.DAY) == [
        ("2024-03-31T00:00+01:00", 23)
    ]
    hours = day_of("Europe/Berlin", "2024-03-31", Granularity.HOUR)
    assert len(hours) == 23
    assert hours[1:3] == [("2024-03-31T01:00+01:00", 1), ("2024-03-31T03:00+02:00", 1)]


def test_fall_back_day_has_25_hours_and_the_repeated_hour_is_its_own_period() -> None:
    assert day_of("Europe/Berlin", "2024-10-27", Granularity.DAY) == [
        ("2024-10-27T00:00+02:00", 25)
    ]
    hours = day_of("Europe/Berlin", "2024-10-27", Granularity.HOUR)
    assert len(hours) == 25
    assert hours[2:4] == [("2024-10-27T02:00+02:00", 1), ("2024-10-27T02:00+01:00", 1)]
    assert {length for _, length in hours} == {1}


def test_new_york_and_sydney_fall_back_hours() -> None:
    hours = day_of("America/New_York", "2024-11-03", Granularity.HOUR)
    assert hours[1:3] == [("2024-11-03T01:00-04:00", 1), ("2024-11-03T01:00-05:00", 1)]
    hours = day_of("Australia/Sydney", "2024-04-07", Granularity.HOUR)
    assert hours[2:4] == [("2024-04-07T02:00+11:00", 1), ("2024-04-07T02:00+10:00", 1)]


def test_lord_howe_half_hour_dst() -> None:
    # Fall back 02:00 -> 01:30: no new hour starts, so hour 01 lasts 90 minutes.
    assert day_of("Australia/Lord_Howe", "2024-04-07", Granularity.DAY) == [
        ("2024-04-07T00:00+11:00", 24.5)
    ]
    hours = day_of("Australia/Lord_Howe", "2024-04-07", Granularity.HOUR)
    assert hours[1:3] == [("2024-04-07T01:00+11:00", 1.5), ("2024-04-07T02:00+10:30", 1)]
    # Spring forward 02:00 -> 02:30: hour 02 lasts 30 minutes.
    hours = day_of("Australia/Lord_Howe", "2024-10-06", Granularity.HOUR)
    assert hours[1:4] == [
        ("2024-10-06T01:00+10:30", 1),
        ("2024-10-06T02:30+11:00", 0.5),
        ("2024-10-06T03:00+11:00", 1),
    ]


def test_chatham_quarter_hour_offsets() -> None:
    # +12:45 -> +13:45 at 02:45 local: hour 02 lasts 45 minutes and hour 03 only 15, so the
    # 23-hour day has 24 hour periods.
    assert day_of("Pacific/Chatham", "2024-09-29", Granularity.DAY) == [
        ("2024-09-29T00:00+12:45", 23)
    ]
    hours = day_of("Pacific/Chatham", "2024-09-29", Granularity.HOUR)
    assert len(hours) == 24
    assert hours[2:5] == [
        ("2024-09-29T02:00+12:45", 0.75),
        ("2024-09-29T03:45+13:45", 0.25),
        ("2024-09-29T04:00+13:45", 1),
    ]
    assert first_instant_of_date(date(2024, 9, 29), ZoneInfo("Pacific/Chatham")) == ms(
        "2024-09-28T11:15:00+00:00"
    )


def test_kathmandu_and_kolkata_days_start_off_the_utc_hour() -> None:
    for name, start, offset in (
        ("Asia/Kathmandu", "2024-06-30T18:15:00+00:00", "+05:45"),
        ("Asia/Kolkata", "2024-06-30T18:30:00+00:00", "+05:30"),
    ):
        assert first_instant_of_date(date(2024, 7, 1), ZoneInfo(name)) == ms(start)
        assert day_of(name, "2024-07-01", Granularity.HOUR)[0] == (f"2024-07-01T00:00{offset}", 1)


@pytest.mark.parametrize(
    ("zone_name", "day", "first_instant", "hours"),
    [
        # Clocks jump from 00:00 to 01:00: the date begins at 01:00.
        ("America/Santiago", "2022-09-11", "2022-09-11T04:00:00+00:00", 23),
        ("America/Havana", "2024-03-10", "2024-03-10T05:00:00+00:00", 23),
        ("Asia/Beirut", "2024-03-31", "2024-03-30T22:00:00+00:00", 23),
        ("America/Sao_Paulo", "2018-11-04", "2018-11-04T03:00:00+00:00", 23),
        # Clocks fall back from 00:00 to 23:00: the previous date gets 25 hours.
        ("Asia/Beirut", "2024-10-26", "2024-10-25T21:00:00+00:00", 25),
        ("America/Sao_Paulo", "2019-02-16", "2019-02-16T02:00:00+00:00", 25),
        ("America/Santiago", "2024-04-06", "2024-04-06T03:00:00+00:00", 25),
    ],
)
def test_dst_changes_at_midnight(zone_name: str, day: str, first_instant: str, hours: int) -> None:
    zone = ZoneInfo(zone_name)
    assert first_instant_of_date(date.fromisoformat(day), zone) == ms(first_instant)
    ((_, length),) = day_of(zone_name, day, Granularity.DAY)
    assert length == hours


def test_apia_skipped_a_whole_day() -> None:
    apia = ZoneInfo("Pacific/Apia")
    start = first_instant_of_date(date(2011, 12, 29), apia)
    end = first_instant_of_date(date(2012, 1, 1), apia)
    assert labels(boundaries(start, end, apia, Granularity.DAY), apia) == [
        ("2011-12-29T00:00-10:00", 24),
        ("2011-12-31T00:00+14:00", 24),
    ]
    # The skipped date resolves to the first instant after it.
    assert first_instant_of_date(date(2011, 12, 30), apia) == ms("2011-12-30T10:00:00+00:00")
    assert boundaries(start, end, apia, Granularity.HOUR) == naive_boundaries(
        start, end, apia, Granularity.HOUR
    )


def test_st_johns_fell_back_across_midnight() -> None:
    # 1990-10-28 00:01 NDT became 1990-10-27 23:01 NST: the date changed back to Saturday.
    assert day_of("America/St_Johns", "1990-10-28", Granularity.DAY) == [
        ("1990-10-28T00:00-02:30", 1 / 60),
        ("1990-10-27T23:01-03:30", 59 / 60),
        ("1990-10-28T00:00-03:30", 24),
    ]


def test_casablanca_ramadan_suspension_both_changes_in_one_range() -> None:
    # Morocco left +01 for +00 on 2024-03-10 and returned on 2024-04-14: two changes a month
    # apart that cancel out.
    casablanca = ZoneInfo("Africa/Casablanca")
    start, end = ms("2024-03-09T00:00:00+00:00"), ms("2024-04-16T00:00:00+00:00")
    expected = naive_boundaries_all(start, end, casablanca)
    for granularity in CALENDAR:
        assert boundaries(start, end, casablanca, granularity) == expected[granularity]
    assert len(expected[Granularity.HOUR]) - 1 == 38 * 24


@pytest.mark.parametrize(
    ("name", "year"),
    [
        ("Africa/Casablanca", 2022),
        ("Asia/Gaza", 2024),
        ("America/Santiago", 2022),
        ("Australia/Lord_Howe", 2024),
        ("Europe/Berlin", 2024),
        ("America/St_Johns", 1995),
        ("Africa/Freetown", 1939),  # offset changes 4 days apart
    ],
)
def test_a_long_range_equals_the_same_range_cut_in_half_days(name: str, year: int) -> None:
    """Over 400 days the offset is probed a day apart; cut into 12-hour pieces, each piece is
    probed at its end only, which cannot miss a change. Both must give the same boundaries."""
    zone = ZoneInfo(name)
    start = ms(f"{year}-01-01T00:00:00+00:00")
    end = start + 400 * DAY
    cuts = list(range(start, end, 12 * HOUR + 7 * MINUTE))[1:]
    for granularity in (Granularity.HOUR, Granularity.DAY):
        whole = boundaries(start, end, zone, granularity)
        stitched = [start]
        for low, high in itertools.pairwise([start, *cuts, end]):
            stitched.extend(boundaries(low, high, zone, granularity)[1:-1])
            if high != end and high in boundaries(high - HOUR, high + HOUR, zone, granularity):
                stitched.append(high)
        assert whole == [*stitched, end], granularity


def test_weeks_start_on_monday_and_months_on_the_first() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    start, end = ms("2024-03-20T00:00:00+01:00"), ms("2024-04-20T00:00:00+02:00")
    assert labels(boundaries(start, end, berlin, Granularity.WEEK), berlin) == [
        ("2024-03-20T00:00+01:00", 5 * 24),
        ("2024-03-25T00:00+01:00", 7 * 24 - 1),
        ("2024-04-01T00:00+02:00", 7 * 24),
        ("2024-04-08T00:00+02:00", 7 * 24),
        ("2024-04-15T00:00+02:00", 5 * 24),
    ]
    assert labels(boundaries(start, end, berlin, Granularity.MONTH), berlin) == [
        ("2024-03-20T00:00+01:00", 12 * 24 - 1),
        ("2024-04-01T00:00+02:00", 19 * 24),
    ]


def test_first_and_last_periods_are_clipped_and_total_is_one_period() -> None:
    utc = ZoneInfo("UTC")
    start, end = ms("2024-01-01T10:20:00.123+00:00"), ms("2024-01-01T12:05:00+00:00")
    assert periods(start, end, utc, Granularity.HOUR) == [
        Period(start, ms("2024-01-01T11:00:00+00:00")),
        Period(ms("2024-01-01T11:00:00+00:00"), ms("2024-01-01T12:00:00+00:00")),
        Period(ms("2024-01-01T12:00:00+00:00"), end),
    ]
    assert periods(start, end, utc, Granularity.TOTAL) == [Period(start, end)]
    assert periods(start, start + 1, utc, Granularity.MONTH) == [Period(start, start + 1)]


def test_empty_or_reversed_ranges_are_programming_errors() -> None:
    utc = ZoneInfo("UTC")
    with pytest.raises(ValueError, match="from_ms < to_ms"):
        boundaries(5, 5, utc, Granularity.DAY)
    with pytest.raises(ValueError, match="from_ms < to_ms"):
        boundaries(6, 5, utc, Granularity.TOTAL)


def test_400_days_by_hour_takes_a_few_milliseconds() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    start = ms("2024-01-01T00:00:00+01:00")
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        found = periods(start, start + 400 * DAY, berlin, Granularity.HOUR)
        best = min(best, time.perf_counter() - began)
    assert len(found) == 400 * 24
    assert best < 0.05, f"{best * 1000:.1f} ms"


# -- the reference on random ranges -----------------------------------------------------------


@st.composite
def ranges(draw: st.DrawFn) -> tuple[str, int, int]:
    """A zone and a range: usually one that holds an offset change of that zone, else anywhere."""
    name = draw(st.sampled_from(ZONES))
    changes = offset_change_days(name)
    long = draw(st.booleans())
    after = draw(st.integers(1, 40 * DAY if long else 2 * DAY))
    if changes and draw(st.integers(0, 3)):
        # The change is in the day before ``day``: start at least a day earlier.
        day = draw(st.sampled_from(changes))
        start = day - draw(st.integers(DAY, 3 * DAY if long else DAY + 6 * HOUR))
    else:
        first, last = f"{FIRST_YEAR}-02-01T00:00:00+00:00", f"{LAST_YEAR}-11-01T00:00:00+00:00"
        start = draw(st.integers(ms(first), ms(last)))
        day = start
    end = day + after
    if draw(st.booleans()):  # whole minutes, as a range usually is
        start -= start % MINUTE
        end = max(start + MINUTE, end - end % MINUTE)
    return name, start, end


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ranges())
def test_periods_match_the_naive_walk(case: tuple[str, int, int]) -> None:
    name, start, end = case
    zone = ZoneInfo(name)
    expected = naive_boundaries_all(start, end, zone)
    for granularity in CALENDAR:
        assert boundaries(start, end, zone, granularity) == expected[granularity], granularity
    assert boundaries(start, end, zone, Granularity.TOTAL) == [start, end]


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(ZONES),
    st.dates(date(FIRST_YEAR, 1, 2), date(LAST_YEAR, 12, 30)),
)
def test_first_instant_of_a_date_is_the_first_minute_with_that_date(name: str, day: date) -> None:
    zone = ZoneInfo(name)
    midnight_utc = ms(f"{day.isoformat()}T00:00:00+00:00")
    instant = midnight_utc - 17 * HOUR
    while local(instant, zone).date() < day:
        instant += MINUTE
    assert first_instant_of_date(day, zone) == instant


def changes_in(name: str, year: int) -> list[int]:
    zone = ZoneInfo(name)
    start = ms(f"{year}-01-01T00:00:00+00:00")
    days = range(start, start + 366 * DAY, DAY)
    offsets = [local(day, zone).utcoffset() for day in days]
    return [days[i] for i in range(1, len(days)) if offsets[i] != offsets[i - 1]]


def distinct_zones() -> list[str]:
    """Every IANA zone name, one per distinct tz file (links such as US/Eastern share theirs)."""
    seen: dict[bytes, str] = {}
    for name in sorted(zoneinfo.available_timezones()):
        path = next(
            (Path(root) / name for root in zoneinfo.TZPATH if (Path(root) / name).is_file()), None
        )
        seen.setdefault(path.read_bytes() if path else name.encode(), name)
    return sorted(seen.values())


@pytest.mark.parametrize("name", distinct_zones())
def test_every_zone_around_its_2025_offset_changes(name: str) -> None:
    """Every IANA zone: hours, days, weeks and months around each offset change of 2025 (or over
    one ordinary day), against the naive walk."""
    zone = ZoneInfo(name)
    # A change found by the daily scan at ``day`` happened during the day before it.
    windows = [(day - DAY - 2 * HOUR, day + 2 * HOUR) for day in changes_in(name, 2025)]
    ordinary = (ms("2025-06-30T11:00:00+00:00"), ms("2025-07-01T13:00:00+00:00"))
    for start, end in windows or [ordinary]:
        expected = naive_boundaries_all(start, end, zone)
        for granularity in CALENDAR:
            assert boundaries(start, end, zone, granularity) == expected[granularity], granularity


def test_offset_changes_are_further_apart_than_the_probe_step() -> None:
    """The module finds offset changes by probing once per PROBE_MS: that is exact only if no two
    changes that could cancel out are closer. Checked on the installed tz database, through the
    pure-Python zoneinfo's view of each file (explicit transitions and the POSIX rule after)."""
    pure: Any = pytest.importorskip("zoneinfo._zoneinfo")
    if not hasattr(pure.ZoneInfo("UTC"), "_trans_utc"):
        pytest.skip("this Python's pure zoneinfo does not expose its transitions")
    closest = (float("inf"), "")
    for name in sorted(zoneinfo.available_timezones()):
        zone = pure.ZoneInfo(name)
        offset = zone._tti_before.utcoff if zone._tti_before else None
        changes = []
        for instant, info in zip(zone._trans_utc, zone._ttinfos, strict=True):
            if info.utcoff != offset:
                changes.append(instant)
            offset = info.utcoff
        rule = zone._tz_after
        if hasattr(rule, "transitions") and rule.dst_diff:  # a DST rule after the last one
            last_year = datetime.fromtimestamp(changes[-1], UTC).year if changes else 1970
            for year in range(last_year + 1, last_year + 60):
                changes.extend(sorted(rule.transitions(year)))
        for earlier, later in itertools.pairwise(changes):
            closest = min(closest, (later - earlier, name))
    assert closest[0] * 1000 > 2 * PROBE_MS, closest


# -- can 15-minute storage count these periods exactly? ---------------------------------------


def test_aligned_zones_pass() -> None:
    for name in ("UTC", "Asia/Kolkata", "Asia/Kathmandu", "Pacific/Chatham", "Australia/Lord_Howe"):
        zone = ZoneInfo(name)
        start = first_instant_of_date(date(2024, 1, 1), zone)
        check_resolution(boundaries(start, start + 400 * DAY, zone, Granularity.HOUR), zone)


def test_local_mean_time_offsets_are_refused_naming_the_zone() -> None:
    # Liberia kept -00:44:30 until 1972-01-07.
    monrovia = ZoneInfo("Africa/Monrovia")
    start = first_instant_of_date(date(1971, 1, 1), monrovia)
    bounds = boundaries(start, start + 30 * DAY, monrovia, Granularity.DAY)
    with pytest.raises(InvalidRequest) as caught:
        check_resolution(bounds, monrovia)
    ((problem,),) = [caught.value.invalid_params]
    assert problem.name == "tz"
    assert "Africa/Monrovia has a UTC offset of -00:44:30" in problem.reason
    assert "not a multiple of 15 minutes" in problem.reason
    # UTC-aligned ends, so only the zone is to blame; Amsterdam kept +00:19:32 until 1937.
    amsterdam = ZoneInfo("Europe/Amsterdam")
    start = ms("1930-01-01T00:00:00+00:00")
    problems = resolution_problems(
        boundaries(start, start + DAY, amsterdam, Granularity.HOUR), amsterdam
    )
    assert [p.name for p in problems] == ["tz"]
    assert "+00:19:32" in problems[0].reason


def test_an_offset_change_off_the_grid_is_refused_naming_the_zone() -> None:
    # St_Johns changed at 00:01 local (02:31Z) until 2006; -02:30 itself is a multiple of 15.
    st_johns = ZoneInfo("America/St_Johns")
    start = ms("1990-10-27T00:00:00+00:00")
    problems = resolution_problems(
        boundaries(start, start + 2 * DAY, st_johns, Granularity.DAY), st_johns
    )
    assert [p.name for p in problems] == ["tz"]
    assert "changes its UTC offset at 1990-10-28T02:31:00Z" in problems[0].reason
    # granularity=total has no boundary inside, so the same range is fine then.
    check_resolution(boundaries(start, start + 2 * DAY, st_johns, Granularity.TOTAL), st_johns)


def test_unaligned_ends_are_refused_naming_from_and_to() -> None:
    kolkata = ZoneInfo("Asia/Kolkata")
    start, end = ms("2024-01-01T10:07:00+05:30"), ms("2024-01-02T00:00:01+05:30")
    problems = resolution_problems(boundaries(start, end, kolkata, Granularity.HOUR), kolkata)
    assert [p.name for p in problems] == ["from", "to"]
    assert problems[0].reason.startswith("2024-01-01T04:37:00Z is not on a 15-minute step of UTC")
    assert resolution_problems([0, 5 * MINUTE], ZoneInfo("UTC"), 5 * MINUTE) == []
