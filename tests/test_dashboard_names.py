"""Names and honest small samples on the dashboard, in a real browser (Debian's Chromium through
Playwright): "Billing (11)" instead of an id wherever one is shown, each score with its 95 %
Wilson interval, rows with too few answers greyed, and the "worst with confidence" order.

The same seeded account as the History tests (a day of answers with names, a small skill).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from csatdist.report.metrics import wilson_interval
from tests.helpers import T_13_29
from tests.test_dashboard import (
    Board,
    browser,  # noqa: F401 - a fixture
    expect,
    sign_in,
)
from tests.test_dashboard_history import (
    TINY_SKILL,
    clocked_page,
    open_history,
    put_directory,
    serving,
    shot,
    table_rows,
)


@pytest.fixture
def board(tmp_path: Path) -> Iterator[Board]:
    with serving(tmp_path, auth_cache_seconds=0) as served:
        yield served


@pytest.fixture
def page(browser: Any, board: Board) -> Iterator[Any]:  # noqa: F811 - the imported fixture
    with clocked_page(browser, board) as opened:
        yield opened


def whole_percent(ratio: float) -> int:
    return math.floor(ratio * 100 + 0.5)  # JavaScript's Math.round


def range_text(positive: int, total: int) -> str:
    low, high = wilson_interval(positive, total)
    return f"{whole_percent(low)}\u2013{whole_percent(high)}"


def test_names_replace_ids_everywhere(page: Any, board: Board) -> None:
    put_directory(board, {"skills": {"15": "Onboarding"}, "agents": {"1015": "Ana Lima"}})
    sign_in(page, board)
    body = board.api(skillIds="all", agentIds="all")
    skills = table_rows(page, "skills-table")
    names = {row["id"]: row["name"] for row in skills}
    assert set(names) == set(body["skillsMetricsPerAgent"]["metricsPerSkill"])
    assert names["11"] == "Billing (11)"  # named by the answers
    assert names["15"] == "Onboarding (15)"  # named by PUT …/directory
    assert names["-1"] == "Unassigned"
    assert names[str(TINY_SKILL)] == f"Tiny desk ({TINY_SKILL})"
    agents = {row["id"]: row["name"] for row in table_rows(page, "agents-table")}
    assert agents["1001"] == "Ada (1001)"
    assert agents["1015"] == "Ana Lima (1015)"
    unnamed = next(a for a in agents if 1016 <= int(a) <= 1020)
    assert agents[unnamed] == unnamed  # no name anywhere: the bare id
    # The pick lists, both views: names, "All …" first.
    options = page.locator("#skills option").all_inner_texts()
    assert options[0] == "All skills"
    assert {"Billing (11)", "Onboarding (15)", "Unassigned"} <= set(options)
    assert page.locator("#h-agents option", has_text="Ana Lima (1015)").count() == 1
    # The answers panel's title.
    page.locator('#skills-table tbody tr[data-id="15"] th button').click()
    expect(page.locator("#answers-title")).to_contain_text("Onboarding (skill 15) · last 60 min")
    page.keyboard.press("Escape")
    # History's tables.
    open_history(page, "Asia/Kolkata")
    history = {row["id"]: row["name"] for row in table_rows(page, "h-skills-table")}
    assert history["15"] == "Onboarding (15)"
    assert history["-1"] == "Unassigned"
    shot(page, "names")
    assert board.console_errors == []


def test_a_name_first_seen_in_the_answers_panel_renames_the_rows(page: Any, board: Board) -> None:
    sign_in(page, board)
    agents = board.api(agentIds="all")["agentsMetrics"]["metricsPerAgent"]
    agent = next(a for a in sorted(agents) if 1016 <= int(a) <= 1020)  # one without a name
    row = page.locator(f'#agents-table tbody tr[data-id="{agent}"]')
    expect(row.locator("th button")).to_have_text(agent)
    directory_reads: list[str] = []
    page.on("request", lambda r: "/directory" in r.url and directory_reads.append(r.url))
    board.ingest(
        [
            {
                "id": "renamed",
                "time": T_13_29 - 30_000,
                "agentId": int(agent),
                "agentName": "Zoë New",
                "score": 5,
            }
        ]
    )
    # The stream brings the count; the name comes with the next read of the directory, which
    # the panel asks for at once when its answers carry a name the page does not know.
    row.locator("th button").click()
    expect(page.locator("#answers-rows tr").first).to_contain_text("Zoë New")
    expect(page.locator("#answers-title")).to_contain_text(f"Zoë New (agent {agent})")
    page.keyboard.press("Escape")
    expect(row.locator("th button")).to_have_text(f"Zoë New ({agent})")
    assert len(directory_reads) == 1
    assert page.locator("#agents option", has_text=f"Zoë New ({agent})").count() == 1


def test_each_score_shows_its_wilson_interval_and_small_samples_are_greyed(
    page: Any, board: Board
) -> None:
    sign_in(page, board)
    tiny = page.locator(f'#skills-table tbody tr[data-id="{TINY_SKILL}"]')
    expect(tiny.locator(".pct")).to_have_text("71.4%")  # 5 of 7 positive
    expect(tiny.locator(".ci")).to_have_text(range_text(5, 7))
    assert range_text(5, 7) == "36\u201392"
    low, high = wilson_interval(5, 7)
    band = tiny.locator(".ci-band .range")
    assert band.evaluate("e => e.style.left") == f"{low * 100:.2f}%"
    assert band.evaluate("e => e.style.width") == f"{(high - low) * 100:.2f}%"
    assert tiny.locator(".ci-band .mark").evaluate("e => e.style.left") == "71.43%"
    # Every row: the interval of its own positive/total, by the formula of the report API.
    skills = board.api(skillIds="all")["skillsMetricsPerAgent"]["metricsPerSkill"]
    for row in table_rows(page, "skills-table"):
        m = skills[row["id"]]["metricsTotals"]
        assert row["range"] == range_text(m["positive_answers"], m["total_answers"]), row
    # Fewer than 10 answers (the default): greyed, and said so to screen readers.
    expect(tiny).to_have_class("drill thin")
    expect(tiny.locator("th .sr-only")).to_have_text(" (fewer than 10 answers: too few to judge)")
    thin = {r["id"] for r in table_rows(page, "skills-table") if r["thin"]}
    assert thin == {s for s, e in skills.items() if e["metricsTotals"]["total_answers"] < 10}
    colour = tiny.locator("td").first.evaluate("e => getComputedStyle(e).color")
    normal = page.locator("#skills-table tbody tr:not(.thin) td").first
    assert colour != normal.evaluate("e => getComputedStyle(e).color")
    shot(page, "wilson")
    # The threshold is a preference of this browser: 5 un-greys it, and survives a reload.
    page.locator("#min-answers").fill("5")
    expect(tiny).not_to_have_class("drill thin")
    page.reload()
    expect(page.locator("#main")).to_be_visible()
    expect(page.locator("#min-answers")).to_have_value("5")
    expect(tiny.locator(".pct")).to_have_text("71.4%")
    expect(tiny).to_have_class("drill")
    stored = page.evaluate("JSON.stringify(localStorage)")
    assert board.token not in stored  # the credential stays in sessionStorage only
    assert board.token in page.evaluate("JSON.stringify(sessionStorage)")
    assert board.console_errors == []


def test_worst_with_confidence_orders_by_the_upper_end(page: Any, board: Board) -> None:
    sign_in(page, board)
    agents = board.api(agentIds="all")["agentsMetrics"]["metricsPerAgent"]
    expect(page.locator("#agents-table tbody tr")).to_have_count(len(agents))
    page.locator("#order").select_option("worst")

    rows = table_rows(page, "agents-table")
    labels = {row["id"]: row["name"] for row in rows}

    def upper(agent: str) -> tuple[float, float, int, str]:
        m = agents[agent]
        return (
            wilson_interval(m["positive_answers"], m["total_answers"])[1],
            m["csat_score"],
            -m["total_answers"],
            labels[agent].casefold(),  # equal evidence: by the name shown (the page's collator)
        )

    expected = sorted(agents, key=upper)
    shown = [r["id"] for r in rows]
    assert shown == expected
    # Not the same as the worst score first: small samples do not jump the queue.
    by_score = sorted(agents, key=lambda a: (agents[a]["csat_score"], a))
    assert shown != by_score
    expect(page.locator("#agents-table th[aria-sort]")).to_have_count(0)
    expect(page.locator("#agents-table caption")).to_contain_text("worst with confidence first")
    shot(page, "worst-with-confidence")
    # The same order applies in History; a column heading returns to ordering by it.
    open_history(page)
    expect(page.locator("#order")).to_have_value("worst")
    page.locator("#h-agents-table thead th").nth(1).get_by_role("button").click()
    expect(page.locator("#order")).to_have_value("column")
    expect(page.locator("#h-agents-table thead th").nth(1)).to_have_attribute(
        "aria-sort", "descending"
    )
    assert board.console_errors == []
