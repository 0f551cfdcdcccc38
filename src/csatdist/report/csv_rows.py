"""A report as CSV (``Accept: text/csv``): one row per (period, group) (pure).

Columns, always all of them, in this order:

==================================== ==========================================================
``range``                            ``current``; ``previous`` on the one row of
                                     ``compare=previous``
``period_start``, ``period_end``     RFC 3339 in ``tz`` with its offset
                                     (``2026-03-29T03:00:00+02:00``); the end is exclusive
``period_start_ms``, ``period_end_ms`` the same instants in epoch milliseconds
``skill_id``, ``skill_name``         the skill of a skill row, and its name when known; empty
                                     on totals and agent rows
``agent_id``, ``agent_name``         likewise for agent rows
``csat_score1_answers`` …            the metrics object ``M`` of the report, same keys, same
``csat_score5_answers``,             values: counts as integers, scores as ratios in [0, 1]
``total_answers``,                   (the shortest text that reads back as the same float)
``positive_answers``, ``csat_score``,
``csat_score_low``, ``csat_score_high``
==================================== ==========================================================

Rows: for each period, oldest first, the totals row (``skill_id`` and ``agent_id`` empty), then
one row per skill of the JSON ``skills`` map (ascending id), then one per agent of ``agents`` —
the same groups and the same empty periods (zero counts) as the JSON series. With both
``skillIds`` and ``agentIds``, a skill row counts that skill's answers from the selected agents,
and an agent row that agent's answers in the selected skills. Last, with ``compare=previous``,
one ``previous`` row with the previous range's totals.

Names come from a mapping the caller passes (the directory, EXTENSIONS.md section 9); a name that
begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'``, so a
spreadsheet shows it as text instead of running it as a formula (OWASP "CSV injection"). Lines end
with CRLF (RFC 4180); the header is the first line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from csatdist.distribution import Counts
from csatdist.report.assembly import Report
from csatdist.report.metrics import report_metrics
from csatdist.report.periods import Period, rfc3339

METRIC_COLUMNS = (
    "csat_score1_answers",
    "csat_score2_answers",
    "csat_score3_answers",
    "csat_score4_answers",
    "csat_score5_answers",
    "total_answers",
    "positive_answers",
    "csat_score",
    "csat_score_low",
    "csat_score_high",
)
CSV_COLUMNS = (
    "range",
    "period_start",
    "period_end",
    "period_start_ms",
    "period_end_ms",
    "skill_id",
    "skill_name",
    "agent_id",
    "agent_name",
    *METRIC_COLUMNS,
)
NO_NAMES: Mapping[int, str] = MappingProxyType({})
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
#: Rows per yielded chunk: large enough to keep the overhead per chunk low.
_CHUNK_ROWS = 500


def _safe_name(name: str | None) -> str:
    if not name:
        return ""
    return "'" + name if name.startswith(_FORMULA_STARTS) else name


def report_csv_rows(
    report: Report,
    *,
    skill_names: Mapping[int, str] = NO_NAMES,
    agent_names: Mapping[int, str] = NO_NAMES,
) -> Iterator[list[str]]:
    """The header, then every row, as lists of cell texts (see the module docstring)."""
    query = report.query
    zone = query.zone
    metrics_cells: dict[Counts, list[str]] = {}

    def cells(counts: Counts) -> list[str]:
        if counts not in metrics_cells:
            metrics = report_metrics(counts)
            metrics_cells[counts] = [str(metrics[column]) for column in METRIC_COLUMNS]
        return metrics_cells[counts]

    def span(kind: str, period: Period) -> list[str]:
        start, end = period
        return [kind, rfc3339(start, zone), rfc3339(end, zone), str(start), str(end)]

    yield list(CSV_COLUMNS)
    skills = report.skills or {}
    agents = report.agents or {}
    for index, period in enumerate(query.periods):
        when = span("current", period)
        yield [*when, "", "", "", "", *cells(report.totals[index])]
        for skill, series in skills.items():
            name = _safe_name(skill_names.get(skill))
            yield [*when, str(skill), name, "", "", *cells(series[index])]
        for agent, series in agents.items():
            name = _safe_name(agent_names.get(agent))
            yield [*when, "", "", str(agent), name, *cells(series[index])]
    previous = query.previous
    if report.previous is not None and previous is not None:
        yield [*span("previous", previous), "", "", "", "", *cells(report.previous)]


def report_csv(
    report: Report,
    *,
    skill_names: Mapping[int, str] = NO_NAMES,
    agent_names: Mapping[int, str] = NO_NAMES,
) -> Iterator[str]:
    """The CSV text in chunks of whole lines, for a streaming response."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    rows = report_csv_rows(report, skill_names=skill_names, agent_names=agent_names)
    for count, row in enumerate(rows, start=1):
        writer.writerow(row)
        if count % _CHUNK_ROWS == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()
