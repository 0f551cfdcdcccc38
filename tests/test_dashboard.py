"""The dashboard in a real browser: Debian's Chromium, driven headless by Playwright.

Screenshots land in artifacts/ (kept by CI as artifacts; not committed).
"""

from __future__ import annotations

import contextlib
import decimal
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import playwright.sync_api as playwright_api
import pytest

import csatdist.http.routes.distribution as app_module
from csatdist.demo import AnswerSimulator, backfill
from csatdist.http import create_app
from csatdist.keys import parse_bearer
from csatdist.store import Store, open_store
from csatdist.users import make_user
from tests.conftest import add_key, make_settings
from tests.helpers import T_13_29, FakeClock, live_server, require_service, start_server

expect = playwright_api.expect

CHROMIUM = os.environ.get("CSATDIST_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_service(
        "Chromium", shutil.which(CHROMIUM) is not None, f"apt-get install chromium ({CHROMIUM})"
    )
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class Board:
    url: str
    store: Store
    clock: FakeClock
    token: str
    write: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def api(self, **params: str) -> dict[str, Any]:
        response = httpx.get(
            f"{self.url}/operations/api/account/acme/msgcsatdistribution",
            params={"v": "1", "timeframe": "60", **params},
            headers={"Authorization": f"Bearer {self.token}"},
        )
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    def ingest(self, answers: list[dict[str, object]]) -> None:
        response = httpx.post(
            f"{self.url}/api/account/acme/csat/answers",
            json={"answers": answers},
            headers={"Authorization": f"Bearer {self.write}"},
        )
        assert response.status_code == 200, response.text


def seed(board_store: Store, now: int) -> None:
    backfill(board_store, "acme", AnswerSimulator(seed=7), now, 1445)


@contextlib.contextmanager
def serving(tmp_path: Path, **settings: Any) -> Iterator[Board]:
    store = open_store(f"sqlite:///{tmp_path / 'board.db'}")
    clock = FakeClock()
    seed(store, clock())
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
    with serving(tmp_path) as served:
        yield served


@pytest.fixture
def page(browser: Any, board: Board) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    opened = context.new_page()
    opened.on("console", lambda m: m.type == "error" and board.console_errors.append(m.text))
    opened.on("request", lambda r: board.requests.append(r.url))
    yield opened
    context.close()


def sign_in(page: Any, board: Board, token: str | None = None) -> None:
    page.goto(board.url + "/dashboard")
    page.get_by_label("Account id").fill("acme")
    page.get_by_label("API key (read scope)").fill(token or board.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#main")).to_be_visible()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def percent(ratio: float) -> str:
    """JavaScript's ``(ratio * 100).toFixed(1)``: a tie of the exact value rounds up (Python's
    format rounds it to even: 81.25 gives 81.2 here, 81.3 in the page)."""
    exact = decimal.Decimal(ratio * 100)
    return f"{exact.quantize(decimal.Decimal('0.1'), rounding=decimal.ROUND_HALF_UP)}%"


def test_signs_in_and_shows_the_numbers_the_api_gives(page: Any, board: Board) -> None:
    sign_in(page, board)
    body = board.api(skillIds="all", agentIds="all")
    totals = body["skillsMetricsPerAgent"]["metricsTotals"]
    expect(page.locator("#total")).to_have_text(f"{totals['total_answers']:,}")
    expect(page.locator("#score")).to_have_text(percent(totals["csat_score"]))
    expect(page.locator("#positive")).to_have_text(f"{totals['positive_answers']:,}")
    expect(page.locator("#live")).to_have_text("live (push)")
    skills = body["skillsMetricsPerAgent"]["metricsPerSkill"]
    expect(page.locator("#skills-table tbody tr")).to_have_count(len(skills))
    agents = body["agentsMetrics"]["metricsPerAgent"]
    expect(page.locator("#agents-table tbody tr")).to_have_count(len(agents))
    bars = page.locator("#distribution li .count")
    expect(bars.first).to_contain_text(f"{totals['csat_score5_answers']:,}")
    expect(page.locator("#window")).to_contain_text("Window")
    expect(page.locator("#series rect")).to_have_count(13)  # 65 min of buckets, 5-min intervals
    assert "Unassigned" in page.locator("#skills-table").inner_text()
    shot(page, "signed-in")
    assert board.console_errors == []  # no CSP violation, no script error
    assert all(url.startswith(board.url) for url in board.requests)  # nothing from outside
    assert "token" not in page.url
    assert board.token not in " ".join(board.requests)


def test_updates_without_reload_when_answers_arrive(page: Any, board: Board) -> None:
    sign_in(page, board)
    before = board.api()["metricsTotals"]["total_answers"]
    expect(page.locator("#total")).to_have_text(f"{before:,}")
    page.evaluate("window.__same_page = true")
    board.ingest(
        [
            {"id": f"new-{i}", "time": T_13_29 - 30_000, "skillId": 1, "agentId": 2, "score": 5}
            for i in range(25)
        ]
    )
    expect(page.locator("#total")).to_have_text(f"{before + 25:,}", timeout=10_000)
    assert page.evaluate("window.__same_page") is True  # no reload happened
    shot(page, "updated")


def test_asks_for_the_key_again_after_a_401(
    page: Any, board: Board, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "STREAM_RECHECK_SECONDS", 0.3)
    token = add_key(board.store, "acme", "read")
    sign_in(page, board, token)
    expect(page.locator("#live")).to_have_text("live (push)")
    board.store.revoke_key(parse_bearer(token).record_id, T_13_29)  # type: ignore[union-attr]
    expect(page.locator("#signin")).to_be_visible(timeout=10_000)
    expect(page.locator("#signin-message")).to_contain_text("Sign in again")
    assert page.evaluate("sessionStorage.length") == 0  # the dead credential is gone
    shot(page, "signed-out")


def test_a_wrong_key_is_refused_at_sign_in(page: Any, board: Board) -> None:
    page.goto(board.url + "/dashboard")
    page.get_by_label("Account id").fill("acme")
    page.get_by_label("API key (read scope)").fill("csd_0000000000000000_" + "x" * 43)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#signin-message")).to_have_text("This key is not valid for this account.")
    expect(page.locator("#main")).to_be_hidden()


def test_signs_in_with_a_username_and_password(page: Any, board: Board) -> None:
    board.store.add_user(make_user("acme", "supervisor", "correct horse battery", 0))
    page.goto(board.url + "/dashboard")
    page.get_by_label("Account id").fill("acme")
    page.get_by_label("a username and password").check()
    page.get_by_label("Username", exact=True).fill("supervisor")
    page.get_by_label("Password", exact=True).fill("correct horse battery")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#main")).to_be_visible()
    total = board.api()["metricsTotals"]["total_answers"]
    expect(page.locator("#total")).to_have_text(f"{total:,}")


def test_falls_back_to_polling_with_conditional_get(page: Any, board: Board) -> None:
    page.route(re.compile(r".*/csat/stream.*"), lambda route: route.abort())
    statuses: list[int] = []
    page.on(
        "response",
        lambda r: "msgcsatdistribution" in r.url and statuses.append(r.status),
    )
    sign_in(page, board)
    expect(page.locator("#live")).to_contain_text("polling", timeout=20_000)
    before = board.api()["metricsTotals"]["total_answers"]
    expect(page.locator("#total")).to_have_text(f"{before:,}")
    for _ in range(60):  # the next poll finds nothing new: 304, no body
        if 304 in statuses:
            break
        page.wait_for_timeout(250)
    assert 304 in statuses
    board.ingest([{"id": "polled", "time": T_13_29 - 30_000, "score": 4}])
    expect(page.locator("#total")).to_have_text(f"{before + 1:,}", timeout=15_000)


def test_rate_limiting_is_shown_and_backed_off(browser: Any, tmp_path: Path) -> None:
    with serving(tmp_path, max_streams_per_account=1) as board:
        context = browser.new_context()
        page = context.new_page()
        sign_in(page, board)  # two streams, one allowed: the second is refused with 429
        expect(page.locator("#notice")).to_contain_text("Rate limited", timeout=10_000)
        shot(page, "rate-limited")
        context.close()


def test_tables_sort_from_the_keyboard(page: Any, board: Board) -> None:
    sign_in(page, board)
    header = page.locator("#agents-table thead th").nth(1)
    expect(header).to_have_attribute("aria-sort", "descending")
    header.get_by_role("button").focus()
    page.keyboard.press("Enter")
    expect(header).to_have_attribute("aria-sort", "ascending")
    answers = page.locator("#agents-table tbody tr td:nth-child(2)").all_inner_texts()
    numbers = [int(a.replace(",", "")) for a in answers]
    assert numbers == sorted(numbers)


def test_every_page_and_asset_carries_the_security_headers(board: Board) -> None:
    for path in ("/dashboard", "/dashboard/app.js", "/dashboard/style.css"):
        response = httpx.get(board.url + path)
        assert response.status_code == 200
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
    assert httpx.get(board.url + "/dashboard/../app.py").status_code == 404
    assert httpx.get(board.url + "/dashboard/secrets.txt").status_code == 404
    home = httpx.get(board.url + "/", follow_redirects=False)
    assert home.status_code == 307
    assert home.headers["location"] == "/dashboard"


def test_wall_tv_screenshot(browser: Any, board: Board) -> None:
    """A 1920x1080 screen, as on a wall: everything fits and stays legible."""
    context = browser.new_context(viewport={"width": 1920, "height": 1080})
    page = context.new_page()
    sign_in(page, board)
    expect(page.locator("#live")).to_have_text("live (push)")
    expect(page.locator("#series rect")).to_have_count(13)
    shot(page, "tv")
    font = page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)")
    assert font >= 18  # scales up with the screen
    context.close()


@pytest.mark.slow
def test_the_readme_demo_dashboard_moves_within_seconds(browser: Any, tmp_path: Path) -> None:
    """The README's promise: `make demo`, open /dashboard, sign in with the printed read key,
    and the numbers move by themselves."""
    log_path = tmp_path / "demo.log"
    server = start_server(tmp_path / "demo.db", log_path, "--demo", "--json")
    try:
        printed = next(
            orjson.loads(line)
            for line in log_path.read_text().splitlines()
            if line.startswith("{") and "read_token" in line
        )
        assert printed["dashboard_url"].endswith("/dashboard")
        context = browser.new_context()
        page = context.new_page()
        page.goto(server.url + "/dashboard")
        page.get_by_label("Account id").fill(printed["account"])
        page.get_by_label("API key (read scope)").fill(printed["read_token"])
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#live")).to_have_text("live (push)")
        expect(page.locator("#total")).not_to_have_text("\u2013")  # the placeholder dash
        first = page.locator("#total").inner_text()
        expect(page.locator("#total")).not_to_have_text(first, timeout=15_000)
        context.close()
    finally:
        server.stop()


def test_pick_lists_filter_by_skill_and_agent(page: Any, board: Board) -> None:
    sign_in(page, board)
    agents = board.api(agentIds="all")["agentsMetrics"]["metricsPerAgent"]
    agent = sorted(agents, key=int)[0]
    expect(page.locator("#agents option")).to_have_count(len(agents) + 1)
    page.locator("#agents").select_option(agent)
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#agents-table tbody tr")).to_have_count(1)
    expect(page.locator("#total")).to_have_text(f"{agents[agent]['total_answers']:,}")
    expect(page.locator("#agents option")).to_have_count(len(agents) + 1)  # still all listed
    page.locator("#agents").select_option("all")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#agents-table tbody tr")).to_have_count(len(agents))
