"""Turning counts into the response body (pure). Shapes are CONTRACT.md section 2."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from csatdist.buckets import Window, interval_ends
from csatdist.query import DistributionQuery

#: Answers per score, 1..5.
Counts = tuple[int, int, int, int, int]
Int64Array = npt.NDArray[np.int64]


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


class CountTable(NamedTuple):
    """Rows as columns: what the in-memory aggregates produce without a Python object per row.

    ``skills``, ``agents`` and ``interval_ends`` are None when the query does not group by them.
    """

    interval_ends: Int64Array | None
    skills: Int64Array | None
    agents: Int64Array | None
    counts: Int64Array  # (rows, 5): answers per score


def table_of(rows: Sequence[CountRow]) -> CountTable:
    def column(values: list[int | None]) -> Int64Array | None:
        if not values or values[0] is None:
            return None
        return np.array([-1 if v is None else v for v in values], dtype=np.int64)

    counts = np.array([row.counts for row in rows], dtype=np.int64).reshape(-1, 5)
    return CountTable(
        column([row.interval_end for row in rows]),
        column([row.skill_id for row in rows]),
        column([row.agent_id for row in rows]),
        counts,
    )


def rows_of(table: CountTable) -> list[CountRow]:
    size = len(table.counts)

    def column(values: Int64Array | None) -> list[int | None]:
        return [None] * size if values is None else values.tolist()

    return [
        CountRow(interval, skill, agent, tuple(counts))
        for interval, skill, agent, counts in zip(
            column(table.interval_ends),
            column(table.skills),
            column(table.agents),
            table.counts.tolist(),
            strict=True,
        )
    ]


#: Below this many rows, looking for repeated counts costs more than it saves.
_SHARE_FROM_ROWS = 16
_PACK_BITS = 12  # five counts below 4,096 pack into one int64


def metrics_list(counts: Int64Array) -> list[dict[str, Any]]:
    """:func:`metrics` of every row at once. Rows with equal counts share one metrics object:
    over short timeframes most agents have the same few answers (on ``large``, 3,197 skill and
    agent entries of an hour had 328 distinct counts), and building the objects is the cost."""
    if len(counts) >= _SHARE_FROM_ROWS and int(counts.max()) < 1 << _PACK_BITS:
        packed = counts[:, 0].copy()
        for score in range(1, 5):
            packed |= counts[:, score] << (_PACK_BITS * score)
        _, first, inverse = np.unique(packed, return_index=True, return_inverse=True)
        if 2 * len(first) <= len(counts):
            distinct = _metrics_rows(counts[first])
            return [distinct[i] for i in inverse.reshape(-1).tolist()]
    return _metrics_rows(counts)


def _metrics_rows(counts: Int64Array) -> list[dict[str, Any]]:
    """:func:`metrics` of each row, with the same values (an int64 ratio computed in float64 is
    the correctly rounded quotient, as Python's own division gives)."""
    total = counts.sum(axis=1)
    positive = counts[:, 3] + counts[:, 4]
    score = np.divide(positive, total, out=np.zeros(len(counts)), where=total > 0)
    ints = np.column_stack((counts, total, positive)).tolist()
    return [
        {
            "csat_score1_answers": s1,
            "csat_score2_answers": s2,
            "csat_score3_answers": s3,
            "csat_score4_answers": s4,
            "csat_score5_answers": s5,
            "total_answers": t,
            "positive_answers": p,
            "csat_score": ratio,
        }
        for (s1, s2, s3, s4, s5, t, p), ratio in zip(ints, score.tolist(), strict=True)
    ]


def nonzero_rows(counts: Int64Array) -> npt.NDArray[np.bool_]:
    """Which rows hold a count other than 0: ``counts.any(axis=1)`` in a fifth of its time on
    the (rows, 5) arrays of a query (NumPy reduces short rows one at a time; this ORs five
    columns, each a vector operation)."""
    combined = counts[:, 0].copy()
    for column in range(1, counts.shape[1]):
        combined |= counts[:, column]
    answered: npt.NDArray[np.bool_] = combined != 0
    return answered


def run_starts(ordered: Int64Array) -> Int64Array:
    """Where each run of equal values begins in a sorted array."""
    return np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])


class Groups(NamedTuple):
    """How rows group by their key tuple: the order that sorts them (the first key most
    significant) and where each group starts in it."""

    order: Int64Array
    starts: Int64Array


def groups_of(keys: list[Int64Array]) -> Groups:
    order = np.lexsort(keys[::-1])
    boundary = np.zeros(len(order), dtype=bool)
    boundary[:1] = True
    for key in keys:
        ordered = key[order]
        boundary[1:] |= ordered[1:] != ordered[:-1]
    return Groups(order, np.flatnonzero(boundary))


def summed(
    groups: Groups, keys: list[Int64Array], counts: Int64Array
) -> tuple[list[Int64Array], Int64Array]:
    """Counts summed per group of ``groups`` (those of ``keys``), ascending; groups without
    answers are left out: ids with no answers never appear."""
    if not len(counts):
        return keys, counts
    first = groups.order[groups.starts]
    sums = np.add.reduceat(counts[groups.order], groups.starts, axis=0)
    present = nonzero_rows(sums)
    return [key[first][present] for key in keys], sums[present]


def group_sums(keys: list[Int64Array], counts: Int64Array) -> tuple[list[Int64Array], Int64Array]:
    """Counts summed per distinct key tuple: :func:`summed` over :func:`groups_of`."""
    if not len(counts):
        return keys, counts
    return summed(groups_of(keys), keys, counts)


def id_column(column: Int64Array | None, counts: Int64Array) -> Int64Array:
    """A grouped id column; a row without one is the unassigned id -1."""
    return column if column is not None else np.full(len(counts), -1, dtype=np.int64)


def _per_agent(agents: Int64Array, counts: Int64Array) -> dict[str, dict[str, Any]]:
    (agent_ids,), sums = group_sums([agents], counts)
    return dict(zip(map(str, agent_ids.tolist()), metrics_list(sums), strict=True))


def _per_skill(
    skills: Int64Array, agents: Int64Array, counts: Int64Array
) -> dict[str, dict[str, Any]]:
    (pair_skills, pair_agents), sums = group_sums([skills, agents], counts)
    if not len(sums):
        return {}
    starts = run_starts(pair_skills)
    skill_totals = metrics_list(np.add.reduceat(sums, starts, axis=0))
    per_pair = metrics_list(sums)
    agent_keys = list(map(str, pair_agents.tolist()))
    bounds = [*starts.tolist(), len(sums)]
    return {
        str(skill): {
            "metricsPerAgent": dict(zip(agent_keys[a:b], per_pair[a:b], strict=True)),
            "metricsTotals": total,
        }
        for skill, a, b, total in zip(
            pair_skills[starts].tolist(), bounds[:-1], bounds[1:], skill_totals, strict=True
        )
    }


def _body(
    query: DistributionQuery,
    skills: Int64Array | None,
    agents: Int64Array | None,
    counts: Int64Array,
) -> dict[str, Any]:
    """The body for one span of time, from rows already filtered to the requested ids."""
    totals = metrics_list(counts.sum(axis=0, keepdims=True))[0]
    if query.skills is None and query.agents is None:
        return {"metricsTotals": totals}
    body: dict[str, Any] = {}
    if query.skills is not None:  # both sections cover the same population
        body["skillsMetricsPerAgent"] = {
            "metricsPerSkill": _per_skill(
                id_column(skills, counts), id_column(agents, counts), counts
            ),
            "metricsTotals": totals,
        }
    if query.agents is not None:
        body["agentsMetrics"] = {
            "metricsPerAgent": _per_agent(id_column(agents, counts), counts),
            "metricsTotals": totals,
        }
    return body


def response_entries(query: DistributionQuery, window: Window, table: CountTable) -> int:
    """About how many metrics objects the body for ``table`` holds (a skill's total per
    interval is not counted): known from the sums, before the costly part — building the
    objects and the JSON — starts."""
    return entries_of_rows(query, window, len(table.counts))


def entries_of_rows(query: DistributionQuery, window: Window, rows: int) -> int:
    """The metrics objects of :func:`response_entries` for a table of ``rows`` rows."""
    both = query.skills is not None and query.agents is not None
    intervals = len(interval_ends(window, query.interval)) if query.interval else 0
    return rows * (2 if both else 1) + intervals + 1


def assemble(query: DistributionQuery, window: Window, rows: Sequence[CountRow]) -> dict[str, Any]:
    """The full response body from rows (a store's sums): see :func:`assemble_table`."""
    return assemble_table(query, window, table_of(rows))


def assemble_table(query: DistributionQuery, window: Window, table: CountTable) -> dict[str, Any]:
    """The full response body: the whole window, plus ``metricsByIntervals`` when asked."""
    skills, agents, counts = table.skills, table.agents, table.counts
    body = _body(query, skills, agents, counts)
    if query.interval is not None:
        spans: dict[int, dict[str, Any]] = {}
        if table.interval_ends is not None and len(counts):
            order = np.argsort(table.interval_ends, kind="stable")
            ends = table.interval_ends[order]
            starts = run_starts(ends)
            bounds = [*starts.tolist(), len(order)]
            for a, b in itertools.pairwise(bounds):
                rows = order[a:b]
                spans[int(ends[a])] = _body(
                    query,
                    None if skills is None else skills[rows],
                    None if agents is None else agents[rows],
                    counts[rows],
                )
        body["metricsByIntervals"] = [
            {
                "timestamp": end,
                "metricsData": spans[end] if end in spans else _body(query, None, None, counts[:0]),
            }
            for end in interval_ends(window, query.interval)
        ]
    return body
