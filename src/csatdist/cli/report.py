"""`csatdist report`: CSAT over any range by calendar period in a time zone, with the HTTP report's
rules (EXTENSIONS.md section 7)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from csatdist.cli.common import check_account, opened_store, read_settings
from csatdist.cli.options import AccountOpt, AgentsOpt, DatabaseOpt, SkillsOpt
from csatdist.cli.output import METRIC_HEADERS, console, fail, notice, print_json, print_rows
from csatdist.clock import system_clock_ms
from csatdist.errors import CsatError

app = typer.Typer()

REPORT_METRIC_HEADERS = (*METRIC_HEADERS, "95% low", "95% high")
#: The rows of a report in a pipe: period is its start in RFC 3339 in the zone, or total,
#: previous or change; skill and agent are ids, name the skill's or agent's name when known.
REPORT_PIPE_HEADERS = ("period", "skill", "agent", "name", *REPORT_METRIC_HEADERS)


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.1f}%"


def _report_metrics(metrics: dict[str, Any]) -> tuple[str, ...]:
    """The cells of a metrics object ``M``; a score of no answers is ``-``, not 0.0%."""
    counts = tuple(str(metrics[f"csat_score{i}_answers"]) for i in range(1, 6))
    total = metrics["total_answers"]
    scores: tuple[str, ...] = ("-", "-", "-")
    if total:
        scores = tuple(
            _percent(metrics[key]) for key in ("csat_score", "csat_score_low", "csat_score_high")
        )
    return (*counts, str(total), str(metrics["positive_answers"]), *scores)


def _report_change(now: dict[str, Any], before: dict[str, Any]) -> tuple[str, ...]:
    """The change from the previous range: answers as a signed count, the score in percentage
    points (``-`` when either range has no answers)."""
    answers = now["total_answers"] - before["total_answers"]
    points = "-"
    if now["total_answers"] and before["total_answers"]:
        points = f"{(now['csat_score'] - before['csat_score']) * 100:+.1f} pp"
    return ("", "", "", "", "", f"{answers:+d}", "", points, "", "")


def _named(entity_id: str, name: str | None) -> str:
    """``Billing (12)``: a name where the directory has one, else the id (-1: unassigned)."""
    if name:
        return f"{name} ({entity_id})"
    return "unassigned (-1)" if entity_id == "-1" else entity_id


@dataclass(frozen=True, slots=True)
class _ReportGroup:
    """One table of a report: the totals (``kind`` empty), a skill or an agent."""

    kind: str  # "", "skill" or "agent"
    key: str
    name: str | None
    entry: dict[str, Any]  # metricsTotals and series
    previous: dict[str, Any] | None  # the previous range's metricsTotals, with --compare

    def title(self, everything: str) -> str:
        return f"{self.kind} {_named(self.key, self.name)}" if self.kind else everything


def _report_groups(
    body: dict[str, Any],
    previous_body: dict[str, Any] | None,
    skill_names: dict[int, str],
    agent_names: dict[int, str],
) -> list[_ReportGroup]:
    previous = body.get("previous")
    groups = [_ReportGroup("", "", None, body, previous and previous["metricsTotals"])]
    for kind, section, known in (
        ("skill", "skills", skill_names),
        ("agent", "agents", agent_names),
    ):
        before = (previous_body or {}).get(section, {})
        for key, entry in body.get(section, {}).items():
            earlier = None
            if previous_body is not None:
                earlier = before[key]["metricsTotals"] if key in before else _zero_metrics()
            groups.append(_ReportGroup(kind, key, known.get(int(key)), entry, earlier))
    return groups


def _zero_metrics() -> dict[str, Any]:
    from csatdist.report import report_metrics

    return report_metrics((0, 0, 0, 0, 0))


def _report_labels(starts: Sequence[int], tz: str, granularity: str) -> list[str]:
    """Period starts in the zone: the date, its time unless midnight (always by hour), and the
    UTC offset on every row when it changes within the range (a DST change)."""
    from zoneinfo import ZoneInfo

    from csatdist.report.periods import format_offset, local_datetime

    zone = ZoneInfo(tz)
    moments = [local_datetime(zone, start) for start in starts]
    offsets = {moment.utcoffset() for moment in moments}
    labels = []
    for moment in moments:
        text = moment.strftime("%Y-%m-%d")
        if granularity == "hour" or (moment.hour, moment.minute) != (0, 0):
            text += moment.strftime(" %H:%M")
        if len(offsets) > 1:
            offset = moment.utcoffset()
            text += " " + format_offset(int(offset.total_seconds() * 1000) if offset else 0)
        labels.append(text)
    return labels


def _report_selection(skills: str | None, agents: str | None) -> str:
    parts = [
        f"{what} {ids}"
        for what, ids in (("skills", skills), ("agents", agents))
        if ids is not None and ids.strip().lower() not in ("", "all")
    ]
    return "answers of " + " and ".join(parts) if parts else "all answers"


@app.command()
def report(
    account: AccountOpt,
    start: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="TIME",
            help="Start (required): RFC 3339 with an offset, epoch ms, or a date YYYY-MM-DD "
            "(midnight in --tz).",
            show_default=False,
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="TIME",
            help="End, exclusive (required); the same forms as --from.",
            show_default=False,
        ),
    ] = None,
    tz: Annotated[
        str | None,
        typer.Option(
            "--tz", metavar="ZONE", help="IANA time zone of the periods and dates (default UTC)."
        ),
    ] = None,
    granularity: Annotated[
        str | None,
        typer.Option(
            metavar="PERIOD", help="hour, day, week (from Monday), month or total (default day)."
        ),
    ] = None,
    skills: SkillsOpt = None,
    agents: AgentsOpt = None,
    compare: Annotated[
        bool, typer.Option("--compare", help="Also the previous range of the same length.")
    ] = False,
    database: DatabaseOpt = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the HTTP report's JSON body.")
    ] = False,
    csv_output: Annotated[
        bool, typer.Option("--csv", help="Print the HTTP report's CSV (Accept: text/csv).")
    ] = False,
) -> None:
    """CSAT over any range by calendar period in a time zone, with the HTTP report's rules.

    A table per group on a terminal: one row per period (its start in the zone), the total and,
    with --compare, the previous range and the change (answers, score in percentage points);
    a table per skill with --skills, per agent with --agents. In a pipe, tab-separated rows
    under a header line, and the range on stderr. --json and --csv print exactly the HTTP
    reply of GET /api/account/ID/csat/report with the same parameters."""
    from csatdist.report import build_report, parse_report_query, report_body, report_csv

    check_account(account)
    if json_output and csv_output:
        raise fail("choose one of --json and --csv", 2)
    settings = read_settings(database_url=database)
    values = {
        name: value
        for name, value in (
            ("from", start),
            ("to", end),
            ("tz", tz),
            ("granularity", granularity),
            ("skillIds", skills),
            ("agentIds", agents),
            ("compare", "previous" if compare else None),
        )
        if value is not None
    }
    limits = {
        "history_days": settings.history_days,
        "max_ids": settings.max_ids_per_list,
    }
    try:
        query = parse_report_query(values, now_ms=system_clock_ms(), **limits)
    except CsatError as exc:
        raise fail(exc.detail, 2) from None
    previous = query.previous
    with opened_store(settings) as store:
        try:
            built = build_report(account, query, store.report_sums)
            if csv_output:
                names = store.directory(account)  # as the HTTP CSV: names beside the ids
                for chunk in report_csv(built, skill_names=names.skills, agent_names=names.agents):
                    sys.stdout.write(chunk)
                return
            body = report_body(built)
            if json_output:
                print_json(body)
                return
            # Each skill's and agent's own previous range: a report of it in total, as the
            # dashboard asks (the body's "previous" has the totals only).
            previous_body = None
            if previous is not None and (query.skills or query.agents):
                whole = parse_report_query(
                    {
                        **values,
                        "from": str(previous.start_ms),
                        "to": str(previous.end_ms),
                        "granularity": "total",
                        "compare": None,
                    },
                    now_ms=system_clock_ms(),
                    **limits,
                )
                previous_body = report_body(build_report(account, whole, store.report_sums))
        except CsatError as exc:
            raise fail(exc.detail, 2) from None
        skill_names: dict[int, str] = {}
        agent_names: dict[int, str] = {}
        if query.skills or query.agents:
            names = store.directory(account)
            skill_names, agent_names = dict(names.skills), dict(names.agents)
    _print_report(
        account, body, previous_body, skill_names, agent_names, _report_selection(skills, agents)
    )


def _print_report(
    account: str,
    body: dict[str, Any],
    previous_body: dict[str, Any] | None,
    skill_names: dict[int, str],
    agent_names: dict[int, str],
    everything: str,
) -> None:
    from zoneinfo import ZoneInfo

    from csatdist.report.periods import rfc3339

    zone = ZoneInfo(body["tz"])

    granularity = body["granularity"]
    by = "in total" if granularity == "total" else f"by {granularity}"
    window = (
        f"account {account}, {rfc3339(body['from'], zone)} .. {rfc3339(body['to'], zone)} "
        f"(end exclusive) in {body['tz']}, {by}"
    )
    if "previous" in body:
        before = body["previous"]
        window += (
            f"; previous range {rfc3339(before['from'], zone)} .. {rfc3339(before['to'], zone)}"
        )
    series = body["series"]
    labels = _report_labels([period["start"] for period in series], body["tz"], granularity)
    groups = _report_groups(body, previous_body, skill_names, agent_names)
    terminal = console.is_terminal
    if terminal:
        console.print(window, highlight=False)
    else:
        notice(window)  # a sentence beside the rows, not among them
    pipe_rows: list[tuple[str, ...]] = []
    for group in groups:
        rows: list[tuple[str, ...]] = [
            (label, *_report_metrics(period["metrics"]))
            for label, period in zip(labels, group.entry["series"], strict=True)
        ]
        rows.append(("total", *_report_metrics(group.entry["metricsTotals"])))
        if group.previous is not None:
            rows.append(("previous", *_report_metrics(group.previous)))
            rows.append(("change", *_report_change(group.entry["metricsTotals"], group.previous)))
        if terminal:
            print_rows(
                ("period", *REPORT_METRIC_HEADERS),
                rows,
                numeric=REPORT_METRIC_HEADERS,
                title=group.title(everything),
            )
            continue
        skill, agent = (group.key, "") if group.kind == "skill" else ("", group.key)
        name = group.name or ""
        for index, row in enumerate(rows):
            period = rfc3339(series[index]["start"], zone) if index < len(series) else row[0]
            pipe_rows.append((period, skill, agent, name, *row[1:]))
    if not terminal:
        print_rows(REPORT_PIPE_HEADERS, pipe_rows)
