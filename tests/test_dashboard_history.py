"""The dashboard's History view in a real browser (Debian's Chromium through Playwright): reports
by calendar period in a time zone, the previous period dashed, per-skill and per-agent changes,
and the API's 400s beside the control that caused them.

The account has 35 days of history imported before a day of answers (with names), and one day
without any answer in Asia/Kolkata, so the score line has a gap. Every number the page shows is
checked against `GET /csat/report`. The browser's clock is the server's fake clock (13:29 UTC,
18:59 in Kolkata, on 2026-11-27), so "last 7 days" means the same days to both. Screenshots land
in artifacts/ like the other dashboard tests'.
"""

from __future__ import annotations

import contextlib
import decimal
import random
import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest

from csatdist.buckets import BUCKET_MS, MINUTE_MS, bucket_end_of
from csatdist.demo import DAY_MS
from csatdist.http import create_app
from csatdist.service import ingest_answers
from csatdist.store import open_store
from tests.conftest import add_key, make_settings
from tests.helpers import T_13_29, FakeClock, live_server
from tests.test_dashboard import (  # the same Chromium and sign-in as the other dashboard tests
    ARTIFACTS,
    Board,
    browser,  # noqa: F401 - a fixture
    expect,
    sign_in,
)
from tests.test_dashboard_answers import answers_with_comments

HOUR_MS = 60 * MINUTE_MS
DASH = "\u2013"  # what the page shows for "no value"
KOLKATA = ZoneInfo("Asia/Kolkata")
#: No answers at all on this day in Kolkata: the score line must break there, not drop to 0.
GAP_DAY = date(2026, 11, 24)
#: Skill and agent pairs of the imported history (the answers of the last day use the demo's).
HISTORY_PAIRS = [(11, 1001), (11, 1002), (12, 1003), (13, 1004), (14, 1005), (-1, 1006)]
#: A skill with 7 answers, 5 of them positive, in the last hour: a small sample.
TINY_SKILL = 77


def local_midnight(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=KOLKATA).timestamp() * 1000)


def history_rows(now_ms: int) -> list[tuple[int, ...]]:
    """35 days of hourly counts (as 5-minute bucket rows) ending a day and an hour before now,
    Returns (14) getting worse over the weeks, nothing on GAP_DAY."""
    rng = random.Random(11)
    end = bucket_end_of(now_ms - DAY_MS - HOUR_MS)
    gap = (local_midnight(GAP_DAY), local_midnight(GAP_DAY + timedelta(days=1)))
    rows: list[tuple[int, ...]] = []
    for start in range(end - 35 * DAY_MS, end, HOUR_MS):
        if gap[0] <= start < gap[1]:
            continue
        for skill, agent in HISTORY_PAIRS:
            bad = 1 + (3 if skill == 14 and start > end - 14 * DAY_MS else 0)
            counts = [rng.randint(0, bad), rng.randint(0, 1), rng.randint(0, 1)]
            counts += [rng.randint(0, 2), rng.randint(0, 4)]
            if sum(counts):
                rows.append((start + BUCKET_MS, skill, agent, *counts))
    return rows


def tiny_answers(now_ms: int) -> list[dict[str, object]]:
    scores = [5, 5, 4, 5, 4, 1, 2]
    return [
        {
            "id": f"tiny-{i}",
            "time": now_ms - (10 + i) * MINUTE_MS,
            "skillId": TINY_SKILL,
            "skillName": "Tiny desk",
            "agentId": 1001,
            "score": score,
        }
        for i, score in enumerate(scores)
    ]


@contextlib.contextmanager
def serving(tmp_path: Path, **settings: Any) -> Iterator[Board]:
    store = open_store(f"sqlite:///{tmp_path / 'history.db'}")
    clock = FakeClock()
    now = clock()
    store.import_history("acme", history_rows(now))  # before the counters: history only goes there
    answers = answers_with_comments(now) + tiny_answers(now)
    report = ingest_answers(store, "acme", enumerate(answers), now, 1445)
    assert report.accepted == len(answers)
    values = {"stream_period_seconds": 0.2, "stream_heartbeat_seconds": 2.0, **settings}
    try:
        with live_server(create_app(make_settings(**values), store=store, clock=clock)) as url:
            yield Board(
                url, store, clock, add_key(store, "acme", "read"), add_key(store, "acme", "write")
            )
    finally:
        store.close()


@pytest.fixture
def board(tmp_path: Path) -> Iterator[Board]:
    with serving(tmp_path, auth_cache_seconds=0) as served:
        yield served


@contextlib.contextmanager
def clocked_page(chromium: Any, board: Board) -> Iterator[Any]:
    """A page whose clock is the server's (fixed: timers still run), recording console errors
    and requests on ``board``."""
    context = chromium.new_context(viewport={"width": 1366, "height": 900})
    opened = context.new_page()
    opened.clock.set_fixed_time(T_13_29 / 1000)  # seconds: the server's "now"
    opened.on("console", lambda m: m.type == "error" and board.console_errors.append(m.text))
    opened.on("request", lambda r: board.requests.append(r.url))
    try:
        yield opened
    finally:
        context.close()


@pytest.fixture
def page(browser: Any, board: Board) -> Iterator[Any]:  # noqa: F811 - the imported fixture
    with clocked_page(browser, board) as opened:
        yield opened


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def report(board: Board, **params: str) -> dict[str, Any]:
    response = httpx.get(
        f"{board.url}/api/account/acme/csat/report",
        params=params,
        headers={"Authorization": f"Bearer {board.token}"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def put_directory(board: Board, document: dict[str, dict[str, str | None]]) -> None:
    response = httpx.put(
        f"{board.url}/api/account/acme/directory",
        json=document,
        headers={"Authorization": f"Bearer {board.write}"},
    )
    assert response.status_code == 200, response.text


def percent(ratio: float) -> str:
    """JavaScript's ``(ratio * 100).toFixed(1)``: a tie of the exact value rounds up (Python's
    format rounds it to even: 81.25 gives 81.2 here, 81.3 in the page)."""
    exact = decimal.Decimal(ratio * 100)
    return f"{exact.quantize(decimal.Decimal('0.1'), rounding=decimal.ROUND_HALF_UP)}%"


def change_text(now: dict[str, Any] | None, before: dict[str, Any] | None) -> str:
    """What the Change column says: points, one decimal, with an arrow (JavaScript's rounding)."""
    if not now or not before or not now["total_answers"] or not before["total_answers"]:
        return DASH
    points = (now["csat_score"] - before["csat_score"]) * 100
    tenths = int(points * 10 + 0.5) if points >= 0 else -int(-points * 10 + 0.5)
    if tenths == 0:
        return "= 0.0 pts"
    return f"{'▲' if tenths > 0 else '▼'} {abs(tenths) / 10:.1f} pts"


def open_history(page: Any, zone: str | None = None) -> None:
    page.get_by_role("tab", name="History").click()
    expect(page.locator("#history-view")).to_be_visible()
    if zone is not None:
        page.locator("#h-tz").fill(zone)
        page.locator("#h-tz").press("Enter")
        expect(page.locator("#h-window")).to_contain_text(f"({zone})")
    expect(page.locator("#history-view")).not_to_have_attribute("aria-busy", "true")


def report_requests(board: Board) -> list[dict[str, list[str]]]:
    return [parse_qs(urlsplit(u).query) for u in board.requests if "/csat/report" in u]


def table_rows(page: Any, table: str) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = page.locator(f"#{table} tbody tr").evaluate_all(
        """rows => rows.map(r => ({
            id: r.dataset.id,
            name: r.cells[0].firstChild.textContent,
            answers: r.cells[1].textContent,
            score: r.cells[2].querySelector('.pct')?.textContent ?? r.cells[2].textContent,
            range: r.cells[2].querySelector('.ci')?.textContent ?? '',
            previous: r.cells[3].firstChild?.textContent ?? '',
            change: r.cells[4]?.firstChild?.textContent ?? '',
            thin: r.classList.contains('thin'),
        }))"""
    )
    return rows


LAST_7_DAYS = {"from": "2026-11-21", "to": "2026-11-28", "tz": "Asia/Kolkata"}


def test_last_7_days_by_day_in_kolkata_match_the_report(page: Any, board: Board) -> None:
    sign_in(page, board)
    open_history(page, "Asia/Kolkata")
    body = report(board, **LAST_7_DAYS, granularity="day", compare="previous")
    series = body["series"]
    assert len(series) == 7
    # The period table: 7 days, the gap day without a score, each day's numbers as the API's.
    periods = page.locator("#h-periods tbody tr")
    expect(periods).to_have_count(7)
    cells = periods.evaluate_all("rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    for period, row in zip(series, cells, strict=True):
        m = period["metrics"]
        assert row[1] == f"{m['total_answers']:,}"
        assert row[2] == (percent(m["csat_score"]) if m["total_answers"] else DASH)
    assert [row[0] for row in cells][3] == "Tue, Nov 24"
    assert cells[3][1:3] == ["0", DASH]
    # The chart: a dot per day with answers; the line breaks at the empty day (two runs).
    expect(page.locator("#h-chart circle.line-dot")).to_have_count(6)
    expect(page.locator("#h-chart polyline.line")).to_have_count(2)
    expect(page.locator("#h-chart polygon.band")).to_have_count(2)
    # The headline and the previous period (compare=previous).
    totals = body["metricsTotals"]
    expect(page.locator("#h-score")).to_have_text(percent(totals["csat_score"]))
    expect(page.locator("#h-total")).to_have_text(f"{totals['total_answers']:,}")
    expect(page.locator("#h-change")).to_have_text(
        change_text(totals, body["previous"]["metricsTotals"])
    )
    expect(page.locator("#h-chart polyline.previous").first).to_be_attached()
    requested = report_requests(board)
    assert any(q.get("compare") == ["previous"] and q["tz"] == ["Asia/Kolkata"] for q in requested)
    previous_range = {"from": str(body["previous"]["from"]), "to": str(body["previous"]["to"])}
    assert any(
        q.get("from") == [previous_range["from"]] and q.get("granularity") == ["day"]
        for q in requested
    )

    # Per skill and per agent: the same answers, scores and changes as the report API's.
    now = report(board, **LAST_7_DAYS, granularity="total", skillIds="all", agentIds="all")
    before = report(
        board,
        **previous_range,
        tz="Asia/Kolkata",
        granularity="total",
        skillIds="all",
        agentIds="all",
    )
    for kind, table in (("skills", "h-skills-table"), ("agents", "h-agents-table")):
        rows = {row["id"]: row for row in table_rows(page, table)}
        ids = set(now[kind]) | set(before[kind])
        assert set(rows) == ids
        for group_id in ids:
            m = now[kind].get(group_id, {}).get("metricsTotals")
            was = before[kind].get(group_id, {}).get("metricsTotals")
            row = rows[group_id]
            assert row["answers"] == f"{(m or {}).get('total_answers', 0):,}", group_id
            if m and m["total_answers"]:
                assert row["score"] == percent(m["csat_score"])
            assert row["change"] == change_text(m, was), group_id
    # Sorted by answers, most first, by default.
    answers = [int(r["answers"].replace(",", "")) for r in table_rows(page, "h-skills-table")]
    assert answers == sorted(answers, reverse=True)
    assert table_rows(page, "h-skills-table")[0]["name"] == "Billing (11)"  # named from answers
    shot(page, "history-kolkata")
    assert board.console_errors == []  # no CSP violation, no script error
    assert all(url.startswith(board.url) for url in board.requests)
    assert board.token not in " ".join(board.requests) + page.url


def test_the_previous_period_lines_up_period_by_period(page: Any, board: Board) -> None:
    sign_in(page, board)
    open_history(page, "Asia/Kolkata")
    body = report(board, **LAST_7_DAYS, granularity="day", compare="previous")
    before = report(
        board,
        **{"from": str(body["previous"]["from"]), "to": str(body["previous"]["to"])},
        tz="Asia/Kolkata",
        granularity="day",
    )
    assert before["metricsTotals"] == body["previous"]["metricsTotals"]  # the very same range
    expect(page.locator("#h-periods tbody tr")).to_have_count(7)
    shown = page.locator("#h-periods tbody tr").evaluate_all(
        "rows => rows.map(r => [r.cells[4].textContent, r.cells[5].textContent])"
    )
    assert shown == [
        [
            percent(p["metrics"]["csat_score"]) if p["metrics"]["total_answers"] else DASH,
            f"{p['metrics']['total_answers']:,}",
        ]
        for p in before["series"]
    ]
    # From the keyboard: focus the chart, read the periods with the arrow keys.
    chart = page.locator("#h-chart")
    chart.focus()
    tip = page.locator("#h-tip")
    expect(tip).to_be_visible()
    page.keyboard.press("Home")
    first = body["series"][0]["metrics"]
    expect(tip).to_contain_text("Sat, Nov 21")
    expect(tip).to_contain_text(f"CSAT {percent(first['csat_score'])}")
    expect(tip).to_contain_text(f"{first['total_answers']:,} answers")
    was = before["series"][0]["metrics"]
    expect(tip).to_contain_text(f"Previous period (Sat, Nov 14): {percent(was['csat_score'])}")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(tip).to_contain_text("Tue, Nov 24")
    expect(tip).to_contain_text("No answers")
    expect(page.locator("#h-readout")).to_contain_text("Tue, Nov 24")  # said to screen readers
    shot(page, "history-tooltip")
    page.keyboard.press("Escape")
    expect(tip).to_be_hidden()
    # With the mouse: the tooltip follows the pointer.
    box = chart.bounding_box()
    page.mouse.move(box["x"] + box["width"] - 20, box["y"] + box["height"] / 2)
    expect(tip).to_contain_text("Fri, Nov 27")
    assert board.console_errors == []


def test_this_month_by_day_leaves_future_days_as_gaps(page: Any, board: Board) -> None:
    sign_in(page, board)
    open_history(page, "Asia/Kolkata")
    page.locator("#h-range").select_option("month")
    expect(page.locator("#h-periods tbody tr")).to_have_count(30)
    body = report(board, **{"from": "2026-11-01", "to": "2026-12-01"}, tz="Asia/Kolkata")
    with_answers = [p for p in body["series"] if p["metrics"]["total_answers"]]
    assert len(with_answers) == 26  # the 1st to the 27th, but the gap day
    expect(page.locator("#h-chart circle.line-dot")).to_have_count(26)
    expect(page.locator("#h-chart polyline.line")).to_have_count(2)  # broken at the gap only
    # Hourly, the same month: 720 periods, one request.
    page.locator("#h-granularity").select_option("hour")
    expect(page.locator("#h-periods tbody tr")).to_have_count(720)
    expect(page.locator("#h-chart-title")).to_have_text("Score and answers per hour")
    page.locator("#h-chart").focus()
    page.keyboard.press("Home")
    expect(page.locator("#h-tip .tip-head")).to_have_text("Nov 1, 00:00 \u2013 01:00 GMT+5:30")
    assert page.evaluate("localStorage.getItem('csatdist.dashboard.prefs')").count("hour") == 1
    assert board.console_errors == []


def test_an_api_400_is_shown_beside_the_control_that_caused_it(page: Any, board: Board) -> None:
    sign_in(page, board)
    open_history(page)
    zone = page.locator("#h-tz")
    zone.fill("Mars/Olympus_Mons")
    zone.press("Enter")
    error = page.locator("#h-tz-error")
    expect(error).to_contain_text("unknown time zone 'Mars/Olympus_Mons'")
    expect(zone).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#h-error")).to_be_hidden()
    shot(page, "history-400-zone")
    zone.fill("asia/kolkata")  # the API's suggestion is part of its message
    zone.press("Enter")
    expect(error).to_contain_text("did you mean Asia/Kolkata?")
    zone.fill("Asia/Kolkata")
    zone.press("Enter")
    expect(error).to_be_hidden()
    expect(zone).not_to_have_attribute("aria-invalid", "true")

    # A custom range starting before the history is kept (400 days): beside "From".
    page.locator("#h-range").select_option("custom")
    page.locator("#h-from").fill("2024-01-01")
    page.locator("#h-from").dispatch_event("change")
    expect(page.locator("#h-from-error")).to_contain_text("older than the history limit")
    expect(page.locator("#h-from")).to_have_attribute("aria-invalid", "true")
    shot(page, "history-400-from")
    # A range the previous period cannot follow: shown without it, and said why.
    page.locator("#h-from").fill("2025-12-01")
    page.locator("#h-from").dispatch_event("change")
    expect(page.locator("#h-status")).to_contain_text("No previous period: the previous range")
    expect(page.locator("#h-from-error")).to_be_hidden()
    expect(page.locator("#h-change")).to_have_text(DASH)
    # Chromium logs each refused request itself; nothing else went wrong.
    assert board.console_errors
    assert all(re.search(r"\b400\b", e) for e in board.console_errors)


def test_history_filters_by_skill_with_names(page: Any, board: Board) -> None:
    put_directory(board, {"skills": {"12": "Sales desk"}, "agents": {"1003": "Ana Lima"}})
    sign_in(page, board)
    open_history(page, "Asia/Kolkata")
    skills = page.locator("#h-skills")
    expect(skills.locator("option", has_text="Sales desk (12)")).to_have_count(1)
    skills.select_option("12")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#h-skills-table tbody tr")).to_have_count(1)
    body = report(board, **LAST_7_DAYS, skillIds="12", agentIds="all", granularity="total")
    expect(page.locator("#h-total")).to_have_text(f"{body['metricsTotals']['total_answers']:,}")
    rows = table_rows(page, "h-agents-table")
    assert {r["id"] for r in rows} == set(body["agents"])
    assert {r["name"] for r in rows if r["id"] == "1003"} == {"Ana Lima (1003)"}
    requested = report_requests(board)[-4:]
    assert all(q["skillIds"] == ["12"] for q in requested)
    assert board.console_errors == []


def test_across_a_dst_change_the_previous_period_lines_up_from_the_end(
    page: Any, board: Board
) -> None:
    """New York leaves DST on 2026-11-01: the 7 days from Oct 30 last 7 days and 1 hour, so the
    previous range starts at 23:00 and has a 1-hour sliver before its 7 whole days. Matched from
    the end (both ranges end on a midnight), each day faces the day a week before."""
    sign_in(page, board)
    open_history(page, "America/New_York")
    page.locator("#h-range").select_option("custom")
    page.locator("#h-from").fill("2026-10-30")
    page.locator("#h-to").fill("2026-11-05")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#h-window")).to_contain_text("Oct 30 \u2013 Nov 5, 2026")
    body = report(
        board,
        **{"from": "2026-10-30", "to": "2026-11-06"},
        tz="America/New_York",
        compare="previous",
    )
    before = report(
        board,
        **{"from": str(body["previous"]["from"]), "to": str(body["previous"]["to"])},
        tz="America/New_York",
    )
    assert len(body["series"]) == 7
    assert len(before["series"]) == 8  # the sliver [Oct 22 23:00, Oct 23 00:00), then 7 days
    assert before["series"][0]["end"] - before["series"][0]["start"] == HOUR_MS
    expect(page.locator("#h-periods tbody tr")).to_have_count(7)
    shown = page.locator("#h-periods tbody tr").evaluate_all(
        "rows => rows.map(r => r.cells[5].textContent)"
    )
    assert shown == [f"{p['metrics']['total_answers']:,}" for p in before["series"][1:]]
    page.locator("#h-chart").focus()
    page.keyboard.press("Home")
    expect(page.locator("#h-tip")).to_contain_text("Previous period (Fri, Oct 23)")
    assert board.console_errors == []
