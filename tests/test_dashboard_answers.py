"""The dashboard's answers panel in a real browser (Debian's Chromium through Playwright): a score
bar, a skill row or an agent row opens the answer records behind its number.

Every expectation is checked against the API itself: what the panel lists must be exactly what
`GET /csat/answers` gives for the same window and filters, and as many as the number clicked.
Screenshots land in artifacts/ like the other dashboard tests'.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

import csatdist.http.routes.distribution as distribution_routes
from csatdist.demo import DAY_MS, AnswerSimulator
from csatdist.http import create_app
from csatdist.keys import parse_bearer
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

SKILL_NAMES = {11: "Billing", 12: "Sales", 13: "Tech support", 14: "Returns"}  # 15: no name
#: Agents 1001..1014 have names, 1015..1020 none.
AGENT_NAMES = {
    1001: "Ada",
    1002: "Grace",
    1003: "Alan",
    1004: "Edsger",
    1005: "Barbara",
    1006: "Donald",
    1007: "Margaret",
    1008: "Ken",
    1009: "Frances",
    1010: "John",
    1011: "Radia",
    1012: "Tim",
    1013: "Sophie",
    1014: "Hedy",
}
COMMENTS = (
    "Quick and friendly, thanks!",
    'He said "fine", then left,\nno answer to my second question.',
    '=HYPERLINK("http://example.invalid")',  # a formula start: the CSV defuses it
    "<img src=x onerror=alert(1)>",  # shown as text, never as markup
    "Très bien — ✓ 😀",
    None,
    None,
)
CHANNELS = ("web", "whatsapp", "sms", None)


def answers_with_comments(now_ms: int) -> list[dict[str, object]]:
    """A day of the demo's simulated answers, each with a conversation, most with a comment,
    a channel and display names (some skills and agents have none)."""
    simulated = AnswerSimulator(seed=7).between(now_ms - DAY_MS, now_ms, 5000)
    for n, answer in enumerate(simulated):
        skill, agent = answer["skillId"], answer["agentId"]
        for field in ("skillName", "agentName", "comment"):  # the demo's own: replaced here
            answer.pop(field, None)
        answer["conversationId"] = f"conv-{n:05d}"
        answer["comment"] = COMMENTS[n % len(COMMENTS)]
        answer["channel"] = CHANNELS[n % len(CHANNELS)]
        if skill in SKILL_NAMES:
            answer["skillName"] = SKILL_NAMES[skill]
        if agent in AGENT_NAMES:
            answer["agentName"] = AGENT_NAMES[agent]
    return simulated


@contextlib.contextmanager
def serving(tmp_path: Path, **settings: Any) -> Iterator[Board]:
    store = open_store(f"sqlite:///{tmp_path / 'answers.db'}")
    clock = FakeClock()
    report = ingest_answers(store, "acme", enumerate(answers_with_comments(clock())), clock(), 1445)
    assert report.accepted == 5000
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


@pytest.fixture
def page(browser: Any, board: Board) -> Iterator[Any]:  # noqa: F811 - the imported fixture
    context = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True)
    opened = context.new_page()
    opened.on("console", lambda m: m.type == "error" and board.console_errors.append(m.text))
    opened.on("request", lambda r: board.requests.append(r.url))
    yield opened
    context.close()


def shot(page: Any, name: str) -> None:
    """The screen as the user sees it (the drawer is as tall as the window, not the page)."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"))


def listing(board: Board, **params: str) -> list[dict[str, Any]]:
    """Every record the API lists for ``params``, page by page (as a script would read it)."""
    records: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": "1000", **({"cursor": cursor} if cursor else {})}
        response = httpx.get(
            f"{board.url}/api/account/acme/csat/answers",
            params=query,
            headers={"Authorization": f"Bearer {board.token}"},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        records += body["answers"]
        cursor = body["next"]
        if cursor is None:
            return records


def shown_ids(page: Any) -> list[str]:
    ids: list[str] = page.locator("#answers-rows tr").evaluate_all(
        "rows => rows.map(r => r.dataset.id)"
    )
    return ids


def load_everything(page: Any) -> int:
    """Click "Load more" until it goes; returns how many times it was clicked."""
    more = page.get_by_role("button", name="Load more")
    status = page.locator("#answers-status")
    clicks = 0
    expect(status).not_to_have_text(re.compile(r"^$|Loading"))
    while more.is_visible():
        more.click()  # its handler says "Loading more answers…" before it returns
        expect(status).not_to_have_text(re.compile(r"Loading"))
        clicks += 1
    return clicks


def answers_requests(board: Board) -> list[dict[str, list[str]]]:
    return [parse_qs(urlsplit(u).query) for u in board.requests if "/csat/answers" in u]


def window_of(board: Board) -> tuple[str, str]:
    response = httpx.get(
        f"{board.url}/operations/api/account/acme/msgcsatdistribution",
        params={"v": "1", "timeframe": "60"},
        headers={"Authorization": f"Bearer {board.token}"},
    )
    return response.headers["x-csat-window-start"], response.headers["x-csat-window-end"]


def test_a_score_bar_lists_exactly_its_answers_page_by_page(page: Any, board: Board) -> None:
    sign_in(page, board)
    totals = board.api()["metricsTotals"]
    count = totals["csat_score5_answers"]
    assert count > 100  # several pages of 50
    bar = page.locator('#distribution button[data-score="5"]')
    expect(bar).to_contain_text(f"{count:,}")
    bar.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#answers-title")).to_have_text(f"Score 5 · last 60 min — {count} answers")
    assert page.evaluate("document.getElementById('answers').contains(document.activeElement)")
    expect(page.locator("#answers-rows tr")).to_have_count(50)
    expect(page.locator("#answers-status")).to_have_text(f"Showing 50 of {count} answers.")
    assert load_everything(page) == count // 50

    ids = shown_ids(page)
    expected = listing(board, timeframe="60", scores="5")
    assert len(ids) == len(set(ids)) == count  # no duplicates, as many as the bar said
    assert ids == [r["id"] for r in expected]  # all of them, newest first
    expect(page.locator("#answers-status")).to_have_text(f"All {count} answers shown.")
    expect(page.get_by_role("button", name="Load more")).to_be_hidden()
    assert page.evaluate("document.activeElement.id") == "answers-status"  # not lost to <body>
    # The panel read the window the number was counted in, with a cursor after the first page.
    start, end = window_of(board)
    requested = answers_requests(board)
    assert len(requested) == count // 50 + 1
    assert all(q["from"] == [start] and q["to"] == [end] for q in requested)
    assert all(q["scores"] == ["5"] for q in requested)
    assert ["cursor" in q for q in requested] == [False] + [True] * (count // 50)

    # The columns: time, conversation, channel, skill (named, or its id), agent, score, comment.
    first = expected[0]
    cells = page.locator("#answers-rows tr").first.locator("td").all_inner_texts()
    assert cells[1] == first["conversationId"]
    assert cells[5] == "5"
    assert cells[6] == (first["comment"] or "—")
    assert all(
        n == 7
        for n in page.locator("#answers-rows tr").evaluate_all(
            "rows => rows.map(r => r.cells.length)"
        )
    )
    expect(page.locator("#answers-table th[scope=col]")).to_have_count(7)
    expect(page.locator("#answers-table caption")).to_contain_text("Score 5")
    # A comment with markup is text: nothing of it became an element.
    assert page.locator("#answers-rows img").count() == 0
    assert page.get_by_text("<img src=x onerror=alert(1)>").first.is_visible()
    shot(page, "answers-score")

    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert page.evaluate("document.activeElement.dataset.focusKey") == "score:5"
    assert board.console_errors == []
    assert board.token not in " ".join(board.requests)


def test_a_score_bar_combines_with_the_selected_agent(page: Any, board: Board) -> None:
    sign_in(page, board)
    agents = board.api(agentIds="all")["agentsMetrics"]["metricsPerAgent"]
    # A named agent with answers of several scores, one score empty (for the empty state).
    agent = next(
        a
        for a in sorted(agents, key=lambda a: -agents[a]["total_answers"])
        if int(a) in AGENT_NAMES and 0 in (agents[a][f"csat_score{s}_answers"] for s in range(1, 6))
    )
    metrics = agents[agent]
    score = max(range(1, 6), key=lambda s: metrics[f"csat_score{s}_answers"])
    empty = next(s for s in range(1, 6) if metrics[f"csat_score{s}_answers"] == 0)
    count = metrics[f"csat_score{score}_answers"]
    page.locator("#agents").select_option(agent)
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#total")).to_have_text(f"{metrics['total_answers']:,}")
    # Not applied: picking another agent without Apply changes nothing the panel reads.
    page.locator("#agents").select_option("all")

    page.locator(f'#distribution button[data-score="{score}"]').click()
    name = AGENT_NAMES[int(agent)]
    title = f"Score {score} · {name} (agent {agent}) · last 60 min — {count} answer"
    expect(page.locator("#answers-title")).to_contain_text(title)
    load_everything(page)
    expected = listing(board, timeframe="60", agentIds=agent, scores=str(score))
    assert shown_ids(page) == [r["id"] for r in expected]
    assert len(expected) == count
    assert {r["agentId"] for r in expected} == {int(agent)}
    agent_cells = page.locator("#answers-rows tr td:nth-child(5)").all_inner_texts()
    assert set(agent_cells) == {f"{name} ({agent})"}
    shot(page, "answers-agent-score")
    page.get_by_role("button", name="Close").click()

    page.locator(f'#distribution button[data-score="{empty}"]').click()
    expect(page.locator("#answers-title")).to_contain_text("— 0 answers")
    expect(page.locator("#answers-empty")).to_be_visible()
    expect(page.locator("#answers-rows tr")).to_have_count(0)
    shot(page, "answers-empty")
    page.keyboard.press("Escape")
    assert board.console_errors == []


def test_skill_and_agent_rows_open_their_answers(page: Any, board: Board) -> None:
    sign_in(page, board)
    body = board.api(skillIds="all", agentIds="all")
    skills = body["skillsMetricsPerAgent"]["metricsPerSkill"]
    skill = "11"
    count = skills[skill]["metricsTotals"]["total_answers"]
    # A click anywhere on the row (here its answers cell) opens it.
    row = page.locator('#skills-table tbody tr[data-id="11"]')
    row.locator("td").first.click()
    expect(page.locator("#answers-title")).to_have_text(
        f"Billing (skill 11) · last 60 min — {count} answers"
    )
    load_everything(page)
    expected = listing(board, timeframe="60", skillIds=skill)
    assert shown_ids(page) == [r["id"] for r in expected]
    assert len(expected) == count
    page.keyboard.press("Escape")

    # From the keyboard: the agent's name button, Enter; Escape puts focus back on it.
    agents = body["agentsMetrics"]["metricsPerAgent"]
    agent = max(agents, key=lambda a: agents[a]["total_answers"])
    button = page.locator(f'#agents-table tbody tr[data-id="{agent}"] th button')
    button.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_be_visible()
    who = (
        f"{AGENT_NAMES[int(agent)]} (agent {agent})"
        if int(agent) in AGENT_NAMES
        else f"Agent {agent}"
    )
    expect(page.locator("#answers-title")).to_have_text(
        f"{who} · last 60 min — {agents[agent]['total_answers']} answers"
    )
    load_everything(page)
    expected = listing(board, timeframe="60", agentIds=agent)
    assert shown_ids(page) == [r["id"] for r in expected]
    shot(page, "answers-agent")
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_be_hidden()
    focused = page.evaluate(
        "[document.activeElement.closest('table')?.id, document.activeElement.dataset.focusKey]"
    )
    assert focused == ["agents-table", f"row:{agent}"]
    assert board.console_errors == []


def test_the_csv_download_holds_the_listed_answers(page: Any, board: Board) -> None:
    sign_in(page, board)
    count = board.api()["metricsTotals"]["csat_score1_answers"]
    page.locator('#distribution button[data-score="1"]').click()
    expect(page.locator("#answers-rows tr").first).to_be_visible()
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download CSV").click()
    download = download_info.value
    start, _ = window_of(board)
    assert re.fullmatch(
        r"csat-answers_acme_score-1_60min_\d{8}T\d{4}Z\.csv", download.suggested_filename
    )
    saved = Path(download.path()).read_bytes()
    expect(page.locator("#answers-csv-status")).to_contain_text(download.suggested_filename)

    # Exactly what the API exports for the same window and filter, byte for byte.
    query = next(q for q in answers_requests(board) if "limit" in q)  # the panel's page
    api = httpx.get(
        f"{board.url}/api/account/acme/csat/answers",
        params={k: v[0] for k, v in query.items() if k not in ("limit", "cursor")},
        headers={"Authorization": f"Bearer {board.token}", "Accept": "text/csv"},
    )
    assert api.status_code == 200
    assert saved == api.content
    rows = list(csv.DictReader(io.StringIO(saved.decode())))
    expected = listing(board, timeframe="60", scores="1")
    assert [r["id"] for r in rows] == [r["id"] for r in expected]
    assert len(rows) == count
    assert {r["score"] for r in rows} == {"1"}
    by_id = {r["id"]: r for r in expected}
    for row in rows:
        comment = by_id[row["id"]]["comment"] or ""
        assert row["comment"] == ("'" + comment if comment.startswith("=") else comment)
    # The credential travelled in a header: in no request's URL, nor in the page's.
    assert board.token not in " ".join(board.requests)
    assert all(url.startswith((board.url, "blob:")) for url in board.requests)
    assert "token" not in page.url
    assert int(query["from"][0]) == int(start)
    assert board.console_errors == []  # CSP: no violation from the object URL


def test_new_answers_are_offered_not_shuffled_in(page: Any, board: Board) -> None:
    sign_in(page, board)
    count = board.api()["metricsTotals"]["csat_score5_answers"]
    page.locator('#distribution button[data-score="5"]').click()
    expect(page.locator("#answers-rows tr")).to_have_count(50)
    before = shown_ids(page)
    board.ingest(
        [
            {"id": f"late-{i}", "time": T_13_29 - 20_000 + i, "score": 5, "comment": "new"}
            for i in range(3)
        ]
        + [{"id": "other-score", "time": T_13_29 - 10_000, "score": 1}]
    )
    fresh = page.locator("#answers-fresh")
    expect(fresh).to_contain_text("3 new answers —", timeout=10_000)
    expect(page.locator('#distribution button[data-score="5"]')).to_contain_text(f"{count + 3:,}")
    assert shown_ids(page) == before  # nothing moved under the reader
    expect(page.locator("#answers-title")).to_contain_text(f"— {count} answers")
    shot(page, "answers-fresh")
    fresh.get_by_role("button", name="Refresh").click()
    expect(page.locator("#answers-title")).to_contain_text(f"— {count + 3} answers")
    expect(page.locator("#answers-rows tr")).to_have_count(50)
    assert shown_ids(page)[:3] == ["late-2", "late-1", "late-0"]
    assert shown_ids(page)[3:] == before[:47]
    expect(page.locator("#answers-refresh")).to_be_hidden()
    assert board.console_errors == []


def test_a_401_in_the_panel_asks_for_the_key_again(
    page: Any, board: Board, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the panel may notice the revocation here: the streams check again much later.
    monkeypatch.setattr(distribution_routes, "STREAM_RECHECK_SECONDS", 3600)
    token = add_key(board.store, "acme", "read")
    sign_in(page, board, token)
    page.locator('#distribution button[data-score="5"]').click()
    expect(page.locator("#answers-rows tr")).to_have_count(50)
    board.store.revoke_key(parse_bearer(token).record_id, T_13_29)  # type: ignore[union-attr]
    statuses: list[int] = []
    page.on("response", lambda r: "/csat/answers" in r.url and statuses.append(r.status))
    page.get_by_role("button", name="Load more").click()
    expect(page.locator("#signin")).to_be_visible(timeout=5_000)
    expect(page.locator("#signin-message")).to_contain_text("Sign in again")
    expect(page.get_by_role("dialog")).to_be_hidden()
    assert statuses == [401]
    assert page.evaluate("sessionStorage.length") == 0
    shot(page, "answers-401")


def test_a_429_in_the_panel_waits_as_told_and_retries(page: Any, board: Board) -> None:
    # A server busy at exactly the right moment cannot be arranged from outside: the first
    # listing request gets the 429 a full server sends; the retry reaches the real one.
    refused: list[str] = []

    def busy_once(route: Any) -> None:
        if refused:
            route.continue_()
            return
        refused.append(route.request.url)
        route.fulfill(
            status=429,
            headers={"Retry-After": "2", "Content-Type": "application/problem+json"},
            body='{"type":"urn:csatdist:problem:too-many-requests","status":429}',
        )

    page.route(re.compile(r".*/csat/answers\?.*"), busy_once)
    sign_in(page, board)
    page.locator('#distribution button[data-score="4"]').click()
    expect(page.locator("#answers-status")).to_have_text(
        "The server is busy (429) — retrying in 2 s."
    )
    shot(page, "answers-429")
    expect(page.locator("#answers-rows tr").first).to_be_visible(timeout=6_000)
    assert len(refused) == 1
    # Chromium logs the refused request itself; nothing else went wrong.
    assert all("429" in e for e in board.console_errors)


def test_a_window_that_moved_on_is_offered_afresh(page: Any, board: Board) -> None:
    sign_in(page, board)
    page.locator("#timeframe").select_option("1440")
    day = board.api(timeframe="1440")["metricsTotals"]
    expect(page.locator("#total")).to_have_text(f"{day['total_answers']:,}")
    page.locator('#distribution button[data-score="1"]').click()
    title = page.locator("#answers-title")
    expect(title).to_have_text(f"Score 1 · last 24 h — {day['csat_score1_answers']:,} answers")
    expect(page.locator("#answers-rows tr")).to_have_count(50)
    before = shown_ids(page)
    # 13:29 → 13:35:30: the window moves on two buckets, and the start of the one the panel
    # reads (13:25 yesterday) is no longer within the 1,445 minutes of retention, nor the
    # 5 minutes before it a listing still accepts.
    board.clock.advance(6.5)
    expect(page.locator("#answers-fresh")).to_contain_text("The window has moved on —")
    page.get_by_role("button", name="Load more").click()
    error = page.locator("#answers-error")
    expect(error).to_contain_text("The server refused this window: ")
    expect(error).to_contain_text("retention")
    assert shown_ids(page) == before
    shot(page, "answers-400")
    error.get_by_role("button", name="Refresh").click()
    day = board.api(timeframe="1440")["metricsTotals"]
    expect(title).to_have_text(f"Score 1 · last 24 h — {day['csat_score1_answers']:,} answers")
    expect(page.locator("#answers-rows tr")).to_have_count(50)
    expect(error).to_be_hidden()
    expect(page.locator("#answers-refresh")).to_be_hidden()
    expected = listing(board, timeframe="1440", scores="1")
    assert shown_ids(page) == [r["id"] for r in expected[:50]]
    assert all("400" in e for e in board.console_errors)  # Chromium logs the refused request
