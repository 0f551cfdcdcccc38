"""`csatdist report`: the HTTP report's rules and bytes from the command line (typer's CliRunner,
in process), against the same store as the HTTP API; the table a user reads."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from typer.testing import CliRunner, Result

from csatdist import cli
from csatdist.cli import output, report
from csatdist.http import create_app
from csatdist.store import Store, open_store
from tests.conftest import add_key, make_settings
from tests.helpers import bearer

ACCOUNT = "acme"
HOUR = 3_600_000
DAY = 24 * HOUR
REPORT_URL = f"/api/account/{ACCOUNT}/csat/report"
#: The HTTP parameters and the CLI options that carry them.
OPTIONS = {
    "from": "--from",
    "to": "--to",
    "tz": "--tz",
    "granularity": "--granularity",
    "skillIds": "--skills",
    "agentIds": "--agents",
}


def date_of(ms: int, tz: str = "UTC") -> str:
    return datetime.fromtimestamp(ms / 1000, ZoneInfo(tz)).strftime("%Y-%m-%d")


def rfc3339(ms: int, tz: str = "UTC") -> str:
    return datetime.fromtimestamp(ms / 1000, ZoneInfo(tz)).isoformat()


def last_dst_change(tz: str, today: int) -> int:
    """The latest instant before ``today`` (a midnight UTC) at which ``tz`` changed its UTC
    offset (on an hour boundary)."""
    zone = ZoneInfo(tz)

    def offset(ms: int) -> timedelta | None:
        return datetime.fromtimestamp(ms / 1000, zone).utcoffset()

    day = today
    while offset(day - DAY) == offset(day):
        day -= DAY
    hour = day
    while offset(hour - HOUR) == offset(day):
        hour -= HOUR
    return hour


def history_row(start_ms: int, skill: int, agent: int, *counts: int) -> tuple[int, ...]:
    """Counts of answers in the 5-minute bucket that starts at ``start_ms`` (its end labels it)."""
    return (start_ms + 5 * 60_000, skill, agent, *counts)


@dataclass
class Seeded:
    client: TestClient
    read: dict[str, str]
    database: str
    today: int
    dst_change: int

    def http(self, params: Mapping[str, str], accept: str | None = None) -> bytes:
        headers = {**self.read, **({"Accept": accept} if accept else {})}
        response = self.client.get(REPORT_URL, params=dict(params), headers=headers)
        assert response.status_code == 200, response.text
        content: bytes = response.content
        return content

    def http_problem(self, params: Mapping[str, str]) -> str:
        response = self.client.get(REPORT_URL, params=dict(params), headers=self.read)
        assert response.status_code == 400, response.text
        detail: str = response.json()["detail"]
        return detail

    def cli(self, *args: str) -> Result:
        return run("--database", self.database, *args)

    def cli_for(self, params: Mapping[str, str], *extra: str) -> Result:
        """The same request as the HTTP parameters ``params``, as CLI options."""
        args = [option for name, value in params.items() for option in cli_option(name, value)]
        return self.cli(*args, *extra)


def cli_option(name: str, value: str) -> list[str]:
    if name == "compare":
        assert value == "previous"
        return ["--compare"]
    return [OPTIONS[name], value]


def run(*args: str) -> Result:
    return CliRunner().invoke(cli.app, ["report", "--account", ACCOUNT, *args])


def seed(store: Store, database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Seeded]:
    """History over the last two weeks (imported, as from before the counters), answers of the
    last hour with names, and counts either side of the latest DST change of New York. The CLI
    and the API read the same clock, stopped, so messages that name the history limit agree."""
    now = int(time.time() * 1000)
    monkeypatch.setattr(report, "system_clock_ms", lambda: now)
    today = now - now % DAY
    change = last_dst_change("America/New_York", today)
    store.import_history(
        ACCOUNT,
        [
            history_row(change - 30 * 60_000, 12, 7, 0, 0, 0, 1, 0),
            history_row(change + 30 * 60_000, 14, 8, 1, 0, 0, 0, 0),
            history_row(today - 10 * DAY + 12 * HOUR, 12, 7, 1, 0, 0, 1, 0),
            history_row(today - 8 * DAY + 10 * HOUR, 12, 7, 0, 0, 0, 2, 3),
            history_row(today - 7 * DAY + 13 * HOUR, 12, 8, 1, 1, 0, 0, 0),
            history_row(today - 5 * DAY + 23 * HOUR + 30 * 60_000, 14, 7, 0, 0, 1, 0, 1),
        ],
    )
    app = create_app(make_settings(), store=store, clock=lambda: now)
    with TestClient(app) as client:
        live = now - HOUR
        response = client.post(
            f"/api/account/{ACCOUNT}/csat/answers",
            json={
                "answers": [
                    {"id": "l1", "time": live, "skillId": 12, "agentId": 7, "score": 4,
                     "skillName": "Billing", "agentName": "Ana Lima"},
                    {"id": "l2", "time": live, "skillId": 14, "agentId": 8, "score": 1},
                    {"id": "l3", "time": live, "skillId": None, "agentId": 7, "score": 5},
                ]
            },
            headers=bearer(add_key(store, ACCOUNT, "write")),
        )  # fmt: skip
        assert response.status_code == 200, response.text
        yield Seeded(client, bearer(add_key(store, ACCOUNT, "read")), database, today, change)


@pytest.fixture
def seeded(store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Seeded]:
    """Both stores (the CLI opens its own connection to the same database)."""
    yield from seed(store, database_url, monkeypatch)


@pytest.fixture
def seeded_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Seeded]:
    """SQLite only: for what does not depend on the store (the table, the errors)."""
    url = f"sqlite:///{tmp_path}/report.db"
    store = open_store(url)
    try:
        yield from seed(store, url, monkeypatch)
    finally:
        store.close()


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """stdout as a 100-column terminal without colours or styles (for the command and for the
    tables it prints)."""
    console = Console(force_terminal=True, color_system=None, width=100, soft_wrap=True)
    for module in (report, output):
        monkeypatch.setattr(module, "console", console)


def requests(s: Seeded) -> list[dict[str, str]]:
    """Reports of every shape: levels, zones (with :30 offsets and a DST change), granularities,
    --compare."""
    change_day = date_of(s.dst_change, "America/New_York")
    return [
        {"from": date_of(s.today - 12 * DAY), "to": date_of(s.today + DAY)},
        {
            "from": date_of(s.today - 8 * DAY),
            "to": date_of(s.today - 4 * DAY),
            "tz": "Asia/Kolkata",
            "skillIds": "all",
            "compare": "previous",
        },
        {
            "from": str(s.today - 14 * DAY),
            "to": rfc3339(s.today + DAY, "Asia/Kolkata"),
            "tz": "Asia/Kolkata",
            "granularity": "week",
            "skillIds": "12",
            "agentIds": "7,8",
            "compare": "previous",
        },
        {
            "from": date_of(s.dst_change - DAY, "America/New_York"),
            "to": date_of(s.dst_change + DAY, "America/New_York"),
            "tz": "America/New_York",
            "granularity": "hour",
            "agentIds": "all",
            "compare": "previous",
        },
        {
            "from": change_day,
            "to": date_of(s.today + DAY),
            "tz": "America/New_York",
            "granularity": "month",
            "skillIds": "all",
            "agentIds": "all",
        },
        {
            "from": date_of(s.today - 30 * DAY),
            "to": date_of(s.today + DAY),
            "granularity": "total",
            "agentIds": "-1,7",
            "compare": "previous",
        },
    ]


def test_json_and_csv_are_the_http_reply(seeded: Seeded) -> None:
    for params in requests(seeded):
        as_json = seeded.cli_for(params, "--json")
        assert as_json.exit_code == 0, (params, as_json.output)
        assert as_json.stdout_bytes == seeded.http(params) + b"\n", params
        # Not all zeros: each request counts some of the seeded answers.
        assert orjson.loads(as_json.stdout)["metricsTotals"]["total_answers"] > 0, params
        as_csv = seeded.cli_for(params, "--csv")
        assert as_csv.exit_code == 0, (params, as_csv.output)
        assert as_csv.stdout_bytes == seeded.http(params, accept="text/csv"), params


def rows(result: Result) -> dict[str, list[list[str]]]:
    """A terminal's tables: each title's rows as lists of words, the rules left out."""
    tables: dict[str, list[list[str]]] = {}
    current: list[list[str]] = []
    for line in result.stdout.splitlines()[1:]:
        words = line.split()
        if not words or set(line.strip()) == {"─"}:
            continue
        if words[0] in {"period", "1"} or words[:2] == ["period", "1"]:
            continue  # a header line
        if len(words) < 6 and not words[0].startswith(("total", "previous", "change")):
            current = tables.setdefault(line.strip(), [])
            continue
        current.append(words)
    return tables


def test_the_table_shows_each_period_the_total_the_previous_range_and_the_change(
    seeded_sqlite: Seeded, terminal: None
) -> None:
    s = seeded_sqlite
    result = s.cli(
        "--from", date_of(s.today - 8 * DAY), "--to", date_of(s.today - 4 * DAY),
        "--compare", "--skills", "all",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        f"account acme, {rfc3339(s.today - 8 * DAY)} .. {rfc3339(s.today - 4 * DAY)} "
        f"(end exclusive) in UTC, by day; previous range {rfc3339(s.today - 12 * DAY)} .. "
        f"{rfc3339(s.today - 8 * DAY)}"
    )
    tables = rows(result)
    assert list(tables) == ["all answers", "skill Billing (12)", "skill 14"]
    day = [date_of(s.today - n * DAY) for n in (8, 7, 6, 5)]
    assert tables["all answers"] == [
        [day[0], "0", "0", "0", "2", "3", "5", "5", "100.0%", "56.6%", "100.0%"],
        [day[1], "1", "1", "0", "0", "0", "2", "0", "0.0%", "0.0%", "65.8%"],
        [day[2], "0", "0", "0", "0", "0", "0", "0", "-", "-", "-"],
        [day[3], "0", "0", "1", "0", "1", "2", "1", "50.0%", "9.5%", "90.5%"],
        ["total", "1", "1", "1", "2", "4", "9", "6", "66.7%", "35.4%", "87.9%"],
        ["previous", "1", "0", "0", "1", "0", "2", "1", "50.0%", "9.5%", "90.5%"],
        ["change", "+7", "+16.7", "pp"],
    ]
    billing = tables["skill Billing (12)"]
    assert billing[-3:] == [
        ["total", "1", "1", "0", "2", "3", "7", "5", "71.4%", "35.9%", "91.8%"],
        ["previous", "1", "0", "0", "1", "0", "2", "1", "50.0%", "9.5%", "90.5%"],
        ["change", "+5", "+21.4", "pp"],
    ]
    assert tables["skill 14"][-3:] == [
        ["total", "0", "0", "1", "0", "1", "2", "1", "50.0%", "9.5%", "90.5%"],
        ["previous", "0", "0", "0", "0", "0", "0", "0", "-", "-", "-"],
        ["change", "+2", "-"],  # no score before: no change in points
    ]


def test_the_table_counts_periods_of_the_zone(seeded_sqlite: Seeded, terminal: None) -> None:
    s = seeded_sqlite
    # 23:30 UTC is 05:00 the next day in Kolkata.
    kolkata = s.cli(
        "--from", date_of(s.today - 6 * DAY), "--to", date_of(s.today - 3 * DAY),
        "--tz", "Asia/Kolkata", "--agents", "7",
    )  # fmt: skip
    assert kolkata.exit_code == 0, kolkata.output
    assert "in Asia/Kolkata, by day" in kolkata.stdout.splitlines()[0]
    agent = rows(kolkata)["agent Ana Lima (7)"]
    assert [row[:7] for row in agent] == [
        [date_of(s.today - 6 * DAY), "0", "0", "0", "0", "0", "0"],
        [date_of(s.today - 5 * DAY), "0", "0", "0", "0", "0", "0"],
        [date_of(s.today - 4 * DAY), "0", "0", "1", "0", "1", "2"],
        ["total", "0", "0", "1", "0", "1", "2"],
    ]
    # Across a DST change every hour shows its offset: a repeated 01:00 is two rows.
    change = s.dst_change
    ny = s.cli(
        "--from", str(change - 2 * HOUR), "--to", str(change + 2 * HOUR),
        "--tz", "America/New_York", "--granularity", "hour",
    )  # fmt: skip
    assert ny.exit_code == 0, ny.output
    table = rows(ny)["all answers"]
    zone = ZoneInfo("America/New_York")

    def label(ms: int) -> list[str]:
        """2026-11-01 01:00 -04:00"""
        moment = datetime.fromtimestamp(ms / 1000, zone)
        return [*moment.strftime("%Y-%m-%d %H:%M").split(), moment.isoformat()[-6:]]

    hours = [change + n * HOUR for n in (-2, -1, 0, 1)]
    assert [row[:3] for row in table[:4]] == [label(hour) for hour in hours]
    assert label(hours[1])[2] != label(hours[2])[2]
    assert table[1][3:9] == ["0", "0", "0", "1", "0", "1"]  # the hour before the change
    assert table[2][3:9] == ["1", "0", "0", "0", "0", "1"]  # the hour after it


def test_in_a_pipe_rows_are_tab_separated_and_the_range_goes_to_stderr(
    seeded_sqlite: Seeded,
) -> None:
    s = seeded_sqlite
    result = s.cli(
        "--from", date_of(s.today - 8 * DAY), "--to", date_of(s.today - 6 * DAY),
        "--agents", "7", "--compare",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"account acme, {rfc3339(s.today - 8 * DAY)} .. ")
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert lines[0] == [
        "period", "skill", "agent", "name", "1", "2", "3", "4", "5", "total", "positive", "CSAT",
        "95% low", "95% high",
    ]  # fmt: skip
    first = rfc3339(s.today - 8 * DAY)
    assert [first, "", "", "", "0", "0", "0", "2", "3", "5", "5", "100.0%"] == lines[1][:12]
    assert [first, "", "7", "Ana Lima", "0", "0", "0", "2", "3", "5", "5", "100.0%"] in [
        line[:12] for line in lines
    ]
    assert lines[-1][:10] == ["change", "", "7", "Ana Lima", "", "", "", "", "", "+3"]
    assert all(len(line) == 14 for line in lines)


def test_bad_input_exits_2_with_the_apis_message(seeded_sqlite: Seeded) -> None:
    s = seeded_sqlite
    day, next_day = date_of(s.today - DAY), date_of(s.today)
    for params in [
        {"from": day, "to": next_day, "tz": "Mars/Olympus"},
        {"from": day, "to": next_day, "tz": "europe/berlin"},
        {"from": next_day, "to": day},
        {"from": day, "to": next_day, "granularity": "fortnight"},
        {"to": next_day},
        {"from": date_of(s.today - 500 * DAY), "to": day, "skillIds": "x"},
        {"from": date_of(s.today - 399 * DAY), "to": day, "compare": "previous"},
    ]:
        detail = s.http_problem(params)
        for extra in ((), ("--json",), ("--csv",)):
            result = s.cli_for(params, *extra)
            assert (result.exit_code, result.stdout) == (2, ""), params
            assert result.stderr == f"error: {detail}\n", params
    assert "tz: unknown time zone 'Mars/Olympus'" in s.http_problem(
        {"from": day, "to": next_day, "tz": "Mars/Olympus"}
    )
    both = s.cli("--from", day, "--to", next_day, "--json", "--csv")
    assert (both.exit_code, both.stderr) == (2, "error: choose one of --json and --csv\n")
