"""`csatdist query`: the distribution, as a table or as the exact HTTP body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import typer

from csatdist.cli.common import check_account, opened_store, read_settings
from csatdist.cli.options import AccountOpt, DatabaseOpt, JsonOpt
from csatdist.cli.output import METRIC_HEADERS, console, fail, notice, print_json, print_rows, when
from csatdist.clock import system_clock_ms
from csatdist.errors import CsatError
from csatdist.query import parse_query
from csatdist.service import query_distribution

app = typer.Typer()


@app.command()
def query(
    account: AccountOpt,
    timeframe: Annotated[int, typer.Option(help="Minutes, 1..1440.")],
    skills: Annotated[str | None, typer.Option(help="'all' or comma-separated ids.")] = None,
    agents: Annotated[str | None, typer.Option(help="'all' or comma-separated ids.")] = None,
    interval: Annotated[int | None, typer.Option(help="Minutes per interval.")] = None,
    database: DatabaseOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Print the distribution, as a table or as the exact HTTP body (--json)."""
    check_account(account)
    settings = read_settings(database_url=database)
    try:
        parsed = parse_query(
            {
                "v": "1",
                "timeframe": str(timeframe),
                "skillIds": skills,
                "agentIds": agents,
                "interval": None if interval is None else str(interval),
            },
            settings.max_ids_per_list,
        )
    except CsatError as exc:
        raise fail(exc.detail, 2) from None
    with opened_store(settings) as store:
        result = query_distribution(store, account, parsed, system_clock_ms())
    if json_output:
        print_json(result.body)
        return
    window = (
        f"account {account}, window {when(result.window.start_ms)} .. "
        f"{when(result.window.end_ms)} (end exclusive)"
    )
    rows = _distribution_rows(result.body)
    if not console.is_terminal:
        # Rows for grep and awk on stdout; the window, a sentence, beside them on stderr.
        notice(window)
        headers = ("table", "interval end", "skill", "agent", *METRIC_HEADERS)
        print_rows(headers, [r.cells() for r in rows])
        return
    console.print(window)
    for title in dict.fromkeys(row.table for row in rows):
        print_rows(
            ("", *METRIC_HEADERS),
            [(row.label(), *row.metrics) for row in rows if row.table == title],
            numeric=METRIC_HEADERS,
            title=title,
        )


@dataclass(frozen=True, slots=True)
class _DistributionRow:
    """One line of the distribution: ``skill``/``agent`` empty stand for all of them."""

    table: str
    skill: str
    agent: str
    metrics: tuple[str, ...]
    interval_end: str = ""

    def label(self) -> str:
        if self.interval_end:
            return self.interval_end
        if self.agent and self.skill:
            return "  " + _label("agent", self.agent)
        if self.agent or self.skill:
            return _label("agent", self.agent) if self.agent else _label("skill", self.skill)
        return "total"

    def cells(self) -> tuple[str, ...]:
        return (self.table, self.interval_end, self.skill, self.agent, *self.metrics)


def _metrics(metrics: dict[str, Any]) -> tuple[str, ...]:
    return (
        *(str(metrics[f"csat_score{i}_answers"]) for i in range(1, 6)),
        str(metrics["total_answers"]),
        str(metrics["positive_answers"]),
        f"{metrics['csat_score'] * 100:.1f}%",
    )


def _label(entity: str, key: str) -> str:
    return f"{entity} {key}" if key != "-1" else f"{entity} (unassigned)"


def _distribution_rows(body: dict[str, Any]) -> list[_DistributionRow]:
    rows = []
    if "metricsTotals" in body:
        rows.append(_DistributionRow("account", "", "", _metrics(body["metricsTotals"])))
    if "skillsMetricsPerAgent" in body:
        section = body["skillsMetricsPerAgent"]
        for skill, entry in section["metricsPerSkill"].items():
            rows.append(_DistributionRow("per skill", skill, "", _metrics(entry["metricsTotals"])))
            for agent, metrics in entry["metricsPerAgent"].items():
                rows.append(_DistributionRow("per skill", skill, agent, _metrics(metrics)))
        rows.append(_DistributionRow("per skill", "", "", _metrics(section["metricsTotals"])))
    if "agentsMetrics" in body:
        section = body["agentsMetrics"]
        for agent, metrics in section["metricsPerAgent"].items():
            rows.append(_DistributionRow("per agent", "", agent, _metrics(metrics)))
        rows.append(_DistributionRow("per agent", "", "", _metrics(section["metricsTotals"])))
    for interval in body.get("metricsByIntervals", []):
        data = interval["metricsData"]
        totals = data.get("metricsTotals") or next(iter(data.values()))["metricsTotals"]
        end = when(interval["timestamp"])
        rows.append(_DistributionRow("per interval (by end)", "", "", _metrics(totals), end))
    return rows
