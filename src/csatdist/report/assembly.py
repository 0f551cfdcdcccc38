"""From a store's sums to the report (pure): the seam to storage, and the JSON body.

**The seam.** The core never reads storage itself. For a :class:`ReportQuery` it describes what
to sum in a :class:`SumsRequest` (:func:`sums_request`); a store answers with :class:`SumRow`
rows; :func:`assemble_report` turns them into a :class:`Report`, which :func:`report_body` (JSON)
and :mod:`csatdist.report.csv_rows` render. :func:`build_report` does the three steps with any
callable of the :class:`ReportSums` shape, e.g. a store's bound method.

What a store must return for a :class:`SumsRequest` ``r`` with ``r.boundaries == (b0, …, bn)``:

- the population is the answers of ``r.account_id`` with ``b0 <= time < bn``, whose skill is in
  ``r.skills.ids`` and whose agent is in ``r.agents.ids`` — a filter that is ``None`` or ``all``
  (``ids is None``) lets every id through; an unassigned id is ``-1``, as in the distribution;
- for every segment ``i`` (answers with ``b_i <= time < b_(i+1)``) and every group with answers,
  one ``SumRow(i, skill_id, agent_id, (s1, …, s5))``: the answers per score 1..5. The group is
  the answer's skill when ``r.by_skill`` (else ``skill_id`` is None) and its agent when
  ``r.by_agent`` (else None).
- Rows may come in any order; rows of the same (segment, skill, agent) are added up; rows with
  zero counts, and groups without answers, may be left out or not.
- With ``r.limit`` (a :class:`GroupLimit`, set when ``all`` is asked for), a store should first
  count the ids the reply would list — the skills when ``r.by_skill`` plus the agents when
  ``r.by_agent``, among those of the population with answers in ``[r.limit.from_ms,
  r.limit.to_ms)`` — and, when they are more than ``r.limit.most``, raise
  :class:`TooManyGroups` instead of summing. It may stop counting each kind once it has seen
  more than ``most``, so such a refusal costs about what the ids it counted do, not the history.
  A store that does not count is still refused, by :func:`assemble_report`, after summing.

Every boundary is a multiple of :data:`csatdist.report.periods.RESOLUTION_MS` (15 minutes) since
the epoch, so a store that keeps counts per 15-minute step of UTC answers exactly by summing the
steps whose start ``s`` has ``b_i <= s < b_(i+1)``. With ``compare=previous`` the previous range
is simply one more segment in front (segment 0); a store needs to know nothing about it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, cast

import numpy as np

from csatdist.distribution import Counts, Int64Array
from csatdist.errors import InvalidParam, InvalidRequest
from csatdist.query import Selection
from csatdist.report.metrics import ZERO_COUNTS, report_metrics
from csatdist.report.params import MAX_SERIES_ENTRIES, ReportQuery
from csatdist.report.periods import Period


@dataclass(frozen=True, slots=True)
class GroupLimit:
    """At most ``most`` skills plus agents with answers in ``[from_ms, to_ms)`` (the report's
    range, without the previous one) fit a report's series entries."""

    from_ms: int
    to_ms: int
    most: int


class TooManyGroups(Exception):
    """A store's refusal of a :class:`SumsRequest` over its :class:`GroupLimit`: the skills and
    the agents it counted, each exact up to the limit's ``most`` and a lower bound above it."""

    def __init__(self, skills: int, agents: int) -> None:
        super().__init__(f"{skills} skills and {agents} agents")
        self.skills = skills
        self.agents = agents


@dataclass(frozen=True, slots=True)
class SumsRequest:
    """What a store must sum for one report; see the module docstring for the exact rules."""

    account_id: str
    #: ``b0 < b1 < … < bn``, each on a 15-minute step of UTC; segment ``i`` is ``[b_i, b_(i+1))``.
    boundaries: tuple[int, ...]
    skills: Selection | None
    agents: Selection | None
    by_skill: bool
    by_agent: bool
    #: Set when the ids come from the data (``all``): see :class:`GroupLimit`.
    limit: GroupLimit | None = None


class SumRow(NamedTuple):
    """The answers per score of one group in one segment of a :class:`SumsRequest`."""

    segment: int
    skill_id: int | None
    agent_id: int | None
    counts: Counts


class ReportSums(Protocol):
    """The storage seam: sums for a :class:`SumsRequest`, e.g. ``store.report_sums``."""

    def __call__(self, request: SumsRequest, /) -> Iterable[SumRow]: ...


@dataclass(frozen=True, slots=True)
class Report:
    """A report's counts, before rendering. Every list has one entry per period of
    ``query.periods``; ``skills``/``agents`` hold the ids with answers in the range, ascending,
    and are None when the query does not ask for them."""

    query: ReportQuery
    totals: list[Counts]
    skills: dict[int, list[Counts]] | None
    agents: dict[int, list[Counts]] | None
    #: The totals of ``query.previous`` (``compare=previous``), else None.
    previous: Counts | None


def _first_period_segment(query: ReportQuery) -> int:
    return 0 if query.previous is None else 1


def sums_request(
    account_id: str, query: ReportQuery, *, max_series_entries: int = MAX_SERIES_ENTRIES
) -> SumsRequest:
    """The sums a report needs: one segment per period, preceded by the previous range when
    ``compare=previous``; grouped by skill and/or agent as the reply's maps need. With ``all``,
    the most ids ``max_series_entries`` leaves room for: periods x (1 + ids) entries fit."""
    previous = query.previous
    bounds = query.boundaries if previous is None else (previous.start_ms, *query.boundaries)
    from_data = any(s is not None and s.ids is None for s in (query.skills, query.agents))
    periods = len(query.boundaries) - 1
    limit = GroupLimit(
        from_ms=query.from_ms,
        to_ms=query.to_ms,
        most=max(0, max_series_entries // periods - 1),
    )
    return SumsRequest(
        account_id=account_id,
        boundaries=bounds,
        skills=query.skills,
        agents=query.agents,
        by_skill=query.skills is not None,
        by_agent=query.agents is not None,
        limit=limit if from_data else None,
    )


def _columns(
    rows: Iterable[SumRow], segments: int, by_skill: bool, by_agent: bool
) -> tuple[Int64Array, Int64Array, Int64Array, Int64Array]:
    """Rows as columns (segments, skills, agents, counts of shape (n, 5)); an id column is all -1
    when not grouped by it. ``ValueError`` names the first row that breaks the seam's rules: a
    store that does has a bug."""
    rows = list(rows)

    def broken(index: int, rule: str) -> ValueError:
        return ValueError(f"{rule}: {rows[index]!r}")

    segment = np.array([row[0] for row in rows], dtype=np.int64)
    outside = (segment < 0) | (segment >= segments)
    if outside.any():
        index = int(outside.argmax())
        raise broken(index, f"segment {segment[index]} is outside 0..{segments - 1}")
    counts_list = [row[3] for row in rows]
    for index, row_counts in enumerate(counts_list):
        if len(row_counts) != 5:
            raise broken(index, "counts must be five non-negative integers")
    counts = np.array(counts_list, dtype=np.int64).reshape(-1, 5)
    negative = (counts < 0).any(axis=1)
    if negative.any():
        raise broken(int(negative.argmax()), "counts must be five non-negative integers")
    ids = []
    for position, grouped in ((1, by_skill), (2, by_agent)):
        column = [row[position] for row in rows]
        if (None in column) if grouped else (column.count(None) != len(column)):
            index = next(i for i, value in enumerate(column) if (value is None) == grouped)
            raise broken(index, f"rows grouped by skill={by_skill}, agent={by_agent} expected")
        ids.append(np.array(column, dtype=np.int64) if grouped else np.full(len(rows), -1))
    return segment, ids[0], ids[1], counts


def _series_of(table: Int64Array) -> list[Counts]:
    """Rows of five counts as tuples."""
    return cast("list[Counts]", list(map(tuple, table.tolist())))


def _too_many_entries(
    query: ReportQuery,
    skills: int,
    agents: int,
    max_series_entries: int,
    *,
    counted_to: int | None = None,
) -> InvalidRequest | None:
    """The 400 when ``skills`` and ``agents`` ids make too many series entries. A count above
    ``counted_to`` (a store's :class:`GroupLimit`, where it may have stopped) is a lower bound."""
    periods = len(query.boundaries) - 1
    entries = periods * (1 + skills + agents)
    if entries <= max_series_entries:
        return None

    def at_least(count: int) -> str:
        return "at least " if counted_to is not None and count > counted_to else ""

    bound = "at least " if at_least(skills) or at_least(agents) else ""
    size = (
        f"with {periods} {query.granularity} periods that makes {bound}{entries} series entries "
        f"(periods x (1 + skills + agents)), more than {max_series_entries}: choose a coarser "
        "granularity, a shorter range or a list of ids"
    )
    problems = [
        InvalidParam(
            name, f"all matches {at_least(count)}{count} {kind} with answers in this range; {size}"
        )
        for name, kind, selection, count in (
            ("skillIds", "skills", query.skills, skills),
            ("agentIds", "agents", query.agents, agents),
        )
        if selection is not None and selection.ids is None
    ]
    return InvalidRequest(problems or [InvalidParam("granularity", size)])


def assemble_report(
    query: ReportQuery,
    rows: Iterable[SumRow],
    *,
    max_series_entries: int = MAX_SERIES_ENTRIES,
) -> Report:
    """Counts per period and group from a store's rows for ``sums_request(…, query)``.

    Totals are sums of raw counts. Raises :class:`InvalidRequest` (400) when ``all`` matches so
    many ids that the series would exceed ``max_series_entries`` (explicit id lists were checked
    by :func:`csatdist.report.params.parse_report_query`), and ``ValueError`` for rows that break
    the seam's rules.
    """
    first = _first_period_segment(query)
    period_count = len(query.boundaries) - 1
    by_skill, by_agent = query.skills is not None, query.agents is not None
    segment, skill, agent, counts = _columns(rows, period_count + first, by_skill, by_agent)
    answered = counts.any(axis=1)
    current = answered & (segment >= first)  # rows of the range itself, not the previous one
    period, current_counts = segment[current] - first, counts[current]
    skill_ids = np.unique(skill[current]) if by_skill else np.empty(0, np.int64)
    agent_ids = np.unique(agent[current]) if by_agent else np.empty(0, np.int64)
    problem = _too_many_entries(query, len(skill_ids), len(agent_ids), max_series_entries)
    if problem:
        raise problem

    totals = np.zeros((period_count, 5), dtype=np.int64)
    np.add.at(totals, period, current_counts)

    def per_id(ids: Int64Array, column: Int64Array) -> dict[int, list[Counts]]:
        table = np.zeros((len(ids), period_count, 5), dtype=np.int64)
        np.add.at(table, (np.searchsorted(ids, column[current]), period), current_counts)
        return {group: _series_of(table[i]) for i, group in enumerate(ids.tolist())}

    previous = counts[answered & (segment < first)].sum(axis=0, keepdims=True)
    return Report(
        query=query,
        totals=_series_of(totals),
        skills=per_id(skill_ids, skill) if by_skill else None,
        agents=per_id(agent_ids, agent) if by_agent else None,
        previous=_series_of(previous)[0] if first else None,
    )


def build_report(
    account_id: str,
    query: ReportQuery,
    sums: ReportSums,
    *,
    max_series_entries: int = MAX_SERIES_ENTRIES,
) -> Report:
    """Ask ``sums`` (the store) for what ``query`` needs and assemble the report. A store that
    counts the ids of ``all`` first refuses before summing (:class:`TooManyGroups`): the same
    400 as :func:`assemble_report`'s, its counts possibly lower bounds."""
    request = sums_request(account_id, query, max_series_entries=max_series_entries)
    try:
        rows = sums(request)
    except TooManyGroups as too_many:
        most = None if request.limit is None else request.limit.most
        problem = _too_many_entries(
            query, too_many.skills, too_many.agents, max_series_entries, counted_to=most
        )
        if problem is None:  # a store that breaks the seam's rules
            raise ValueError(f"refused within the limit {request.limit}: {too_many}") from None
        raise problem from None
    return assemble_report(query, rows, max_series_entries=max_series_entries)


def total_of(series: Sequence[Counts]) -> Counts:
    """The counts of a whole series: raw counts added, never an average of scores."""
    if not series:
        return ZERO_COUNTS
    s1, s2, s3, s4, s5 = (sum(score) for score in zip(*series, strict=True))
    return (s1, s2, s3, s4, s5)


def _series(
    periods: Sequence[Period],
    counts: Sequence[Counts],
    metrics_of: Callable[[Counts], dict[str, Any]],
) -> list[dict[str, Any]]:
    return [
        {"start": period.start_ms, "end": period.end_ms, "metrics": metrics_of(period_counts)}
        for period, period_counts in zip(periods, counts, strict=True)
    ]


def report_body(report: Report) -> dict[str, Any]:
    """The JSON reply of EXTENSIONS.md section 7, keys in its order. Equal counts share one
    metrics object (most periods of most groups are empty), so callers must not mutate it."""
    query = report.query
    periods = query.periods
    metrics_of = functools.cache(report_metrics)

    def group(series: list[Counts]) -> dict[str, Any]:
        return {
            "metricsTotals": metrics_of(total_of(series)),
            "series": _series(periods, series, metrics_of),
        }

    body: dict[str, Any] = {
        "from": query.from_ms,
        "to": query.to_ms,
        "tz": query.tz,
        "granularity": query.granularity.value,
        "metricsTotals": metrics_of(total_of(report.totals)),
        "series": _series(periods, report.totals, metrics_of),
    }
    if report.skills is not None:
        body["skills"] = {str(skill): group(series) for skill, series in report.skills.items()}
    if report.agents is not None:
        body["agents"] = {str(agent): group(series) for agent, series in report.agents.items()}
    previous = query.previous
    if report.previous is not None and previous is not None:
        body["previous"] = {
            "from": previous.start_ms,
            "to": previous.end_ms,
            "metricsTotals": metrics_of(report.previous),
        }
    return body
