"""Turning counts into the response body (pure). Shapes are CONTRACT.md section 2."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from csatdist.buckets import Window, interval_ends
from csatdist.query import DistributionQuery

#: Answers per score, 1..5.
Counts = tuple[int, int, int, int, int]
ZERO: Counts = (0, 0, 0, 0, 0)


class CountRow(NamedTuple):
    """Summed counts for one group; a field is None when the query does not group by it.

    A named tuple rather than a dataclass: large bodies have thousands of rows, and a tuple is
    several times cheaper to build."""

    interval_end: int | None
    skill_id: int | None
    agent_id: int | None
    counts: Counts


@dataclass(frozen=True, slots=True)
class Grouping:
    """Which keys the store must group by for a query's response shape."""

    by_skill: bool
    by_agent: bool
    by_interval: bool


def grouping_for(query: DistributionQuery) -> Grouping:
    # Skill entries list their agents, so a skills query needs (skill, agent) pairs.
    return Grouping(
        by_skill=query.skills is not None,
        by_agent=query.skills is not None or query.agents is not None,
        by_interval=query.interval is not None,
    )


def add(a: Counts, b: Counts) -> Counts:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4])


def metrics(counts: Counts) -> dict[str, Any]:
    """The metrics object ``M``, keys in contract order; the score is a ratio in [0, 1]."""
    s1, s2, s3, s4, s5 = counts
    total = s1 + s2 + s3 + s4 + s5
    positive = s4 + s5
    return {
        "csat_score1_answers": s1,
        "csat_score2_answers": s2,
        "csat_score3_answers": s3,
        "csat_score4_answers": s4,
        "csat_score5_answers": s5,
        "total_answers": total,
        "positive_answers": positive,
        "csat_score": positive / total if total else 0.0,
    }


def _sum(rows: Iterable[CountRow]) -> Counts:
    columns = list(zip(*(row.counts for row in rows), strict=True))
    if not columns:
        return ZERO
    return (sum(columns[0]), sum(columns[1]), sum(columns[2]), sum(columns[3]), sum(columns[4]))


def _per_key(pairs: Iterable[tuple[int, Counts]]) -> dict[str, dict[str, Any]]:
    sums: dict[int, Counts] = {}
    for key, counts in pairs:  # keys are mostly unique already: add only on a repeat
        sums[key] = add(sums[key], counts) if key in sums else counts
    # Ids with no answers never appear: stored counts only grow from zero.
    return {str(key): metrics(sums[key]) for key in sorted(sums) if any(sums[key])}


def _body(query: DistributionQuery, rows: list[CountRow]) -> dict[str, Any]:
    """The body for one span of time, from rows already filtered to the requested ids."""
    if query.skills is None and query.agents is None:
        return {"metricsTotals": metrics(_sum(rows))}
    totals = _sum(rows)  # both sections cover the same population
    body: dict[str, Any] = {}
    if query.skills is not None:
        by_skill: dict[int, list[CountRow]] = defaultdict(list)
        for row in rows:
            by_skill[row.skill_id if row.skill_id is not None else -1].append(row)
        per_skill = {}
        for skill in sorted(by_skill):
            skill_totals = _sum(by_skill[skill])
            if any(skill_totals):
                per_skill[str(skill)] = {
                    "metricsPerAgent": _per_key(
                        (r.agent_id if r.agent_id is not None else -1, r.counts)
                        for r in by_skill[skill]
                    ),
                    "metricsTotals": metrics(skill_totals),
                }
        body["skillsMetricsPerAgent"] = {
            "metricsPerSkill": per_skill,
            "metricsTotals": metrics(totals),
        }
    if query.agents is not None:
        body["agentsMetrics"] = {
            "metricsPerAgent": _per_key(
                (r.agent_id if r.agent_id is not None else -1, r.counts) for r in rows
            ),
            "metricsTotals": metrics(totals),
        }
    return body


def assemble(query: DistributionQuery, window: Window, rows: list[CountRow]) -> dict[str, Any]:
    """The full response body: the whole window, plus ``metricsByIntervals`` when asked."""
    body = _body(query, rows)
    if query.interval is not None:
        by_interval: dict[int, list[CountRow]] = defaultdict(list)
        for row in rows:
            if row.interval_end is not None:
                by_interval[row.interval_end].append(row)
        body["metricsByIntervals"] = [
            {"timestamp": end, "metricsData": _body(query, by_interval.get(end, []))}
            for end in interval_ends(window, query.interval)
        ]
    return body
