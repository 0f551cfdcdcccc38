from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from csatdist.buckets import Window, interval_ends, window_for
from csatdist.distribution import (
    CountRow,
    Counts,
    assemble,
    grouping_for,
    metrics,
    metrics_list,
)
from csatdist.query import ALL, DistributionQuery, Selection
from tests.helpers import T_13_29

ZERO_METRICS = {
    "csat_score1_answers": 0,
    "csat_score2_answers": 0,
    "csat_score3_answers": 0,
    "csat_score4_answers": 0,
    "csat_score5_answers": 0,
    "total_answers": 0,
    "positive_answers": 0,
    "csat_score": 0.0,
}


def test_metrics_keys_in_contract_order_and_ratio() -> None:
    result = metrics((1, 0, 1, 1, 1))
    assert list(result) == list(ZERO_METRICS)
    assert result["total_answers"] == 4
    assert result["positive_answers"] == 2
    assert result["csat_score"] == 0.5
    assert isinstance(metrics((0, 0, 0, 0, 0))["csat_score"], float)


def test_account_level_empty() -> None:
    window = window_for(T_13_29, 60)
    assert assemble(DistributionQuery(60), window, []) == {"metricsTotals": ZERO_METRICS}


def test_groupings_per_shape() -> None:
    ids = Selection(frozenset({1}))
    assert grouping_for(DistributionQuery(60)).by_agent is False
    assert grouping_for(DistributionQuery(60, skills=ids)).by_agent is True
    assert grouping_for(DistributionQuery(60, agents=ALL)).by_skill is False
    assert grouping_for(DistributionQuery(60, interval=5)).by_interval is True


def test_skill_shape_nests_agents_and_totals_from_raw_counts() -> None:
    window = window_for(T_13_29, 60)
    rows = [
        CountRow(None, 4, 7, (0, 0, 0, 0, 3)),
        CountRow(None, 4, 8, (1, 0, 0, 0, 0)),
        CountRow(None, -1, 7, (0, 0, 1, 0, 0)),
    ]
    body = assemble(DistributionQuery(60, skills=ALL), window, rows)
    per_skill = body["skillsMetricsPerAgent"]["metricsPerSkill"]
    assert list(per_skill) == ["-1", "4"]
    assert per_skill["4"]["metricsTotals"]["total_answers"] == 4
    assert per_skill["4"]["metricsTotals"]["csat_score"] == 0.75
    assert set(per_skill["4"]["metricsPerAgent"]) == {"7", "8"}
    assert body["skillsMetricsPerAgent"]["metricsTotals"]["total_answers"] == 5
    assert "agentsMetrics" not in body


# The row-by-row assembly the vectorised one replaced, kept as its reference: plain dicts and
# sums, one row at a time.
def _reference_body(query: DistributionQuery, rows: list[CountRow]) -> dict[str, Any]:
    def total(group: list[CountRow]) -> tuple[int, ...]:
        return tuple(sum(row.counts[i] for row in group) for i in range(5))

    def per_id(pairs: list[tuple[int, tuple[int, ...]]]) -> dict[str, Any]:
        sums: dict[int, list[int]] = {}
        for key, counts in pairs:
            into = sums.setdefault(key, [0] * 5)
            for i in range(5):
                into[i] += counts[i]
        return {str(k): metrics(tuple(sums[k])) for k in sorted(sums) if any(sums[k])}  # type: ignore[arg-type]

    def unassigned(value: int | None) -> int:
        return -1 if value is None else value

    everything = metrics(total(rows))  # type: ignore[arg-type]
    if query.skills is None and query.agents is None:
        return {"metricsTotals": everything}
    body: dict[str, Any] = {}
    if query.skills is not None:
        per_skill = {}
        for skill in sorted({unassigned(r.skill_id) for r in rows}):
            mine = [r for r in rows if unassigned(r.skill_id) == skill]
            if any(total(mine)):
                per_skill[str(skill)] = {
                    "metricsPerAgent": per_id([(unassigned(r.agent_id), r.counts) for r in mine]),
                    "metricsTotals": metrics(total(mine)),  # type: ignore[arg-type]
                }
        body["skillsMetricsPerAgent"] = {"metricsPerSkill": per_skill, "metricsTotals": everything}
    if query.agents is not None:
        body["agentsMetrics"] = {
            "metricsPerAgent": per_id([(unassigned(r.agent_id), r.counts) for r in rows]),
            "metricsTotals": everything,
        }
    return body


def _reference_assemble(
    query: DistributionQuery, window: Window, rows: list[CountRow]
) -> dict[str, Any]:
    body = _reference_body(query, rows)
    if query.interval is not None:
        body["metricsByIntervals"] = [
            {
                "timestamp": end,
                "metricsData": _reference_body(query, [r for r in rows if r.interval_end == end]),
            }
            for end in interval_ends(window, query.interval)
        ]
    return body


_WINDOW = window_for(T_13_29, 60)
_COUNTS = (
    st.tuples(*[st.integers(0, 2**40)] * 5)
    | st.tuples(*[st.integers(0, 1)] * 5)
    | st.tuples(*[st.integers(4094, 4097)] * 5)  # either side of what packs into one int64
)


@given(
    shape=st.sampled_from(["account", "skills", "agents", "both"]),
    interval=st.sampled_from([None, 15, 30]),
    data=st.data(),
)
@settings(max_examples=400, deadline=None)
def test_assembly_equals_the_row_by_row_reference(
    shape: str, interval: int | None, data: st.DataObject
) -> None:
    """Byte for byte, key order included: duplicates of a group (one per interval), groups with
    no answers, the unassigned id -1 and counts far past 2**32."""
    query = DistributionQuery(
        60,
        skills=ALL if shape in ("skills", "both") else None,
        agents=ALL if shape in ("agents", "both") else None,
        interval=interval,
    )
    grouping = grouping_for(query)
    ends = interval_ends(_WINDOW, interval) if interval else [None]
    rows = data.draw(
        st.lists(
            st.builds(
                CountRow,
                st.sampled_from(ends),
                st.integers(-1, 4) if grouping.by_skill else st.none(),
                st.integers(-1, 9) if grouping.by_agent else st.none(),
                _COUNTS,
            ),
            max_size=80,  # past the size where equal counts share one metrics object
        )
    )
    ours = assemble(query, _WINDOW, rows)
    assert orjson.dumps(ours) == orjson.dumps(_reference_assemble(query, _WINDOW, rows))


_EDGE_COUNTS = st.tuples(*[st.sampled_from([0, 1, 2, 2047, 2048, 4095, 4096, 2**33])] * 5)


@given(
    pool=st.lists(_EDGE_COUNTS, min_size=1, max_size=6),
    picks=st.lists(st.integers(0, 5), min_size=16, max_size=120),
)
# A count one field up must not read as a big count in the field below, nor 4,096 as 0 + 1.
@example(pool=[(2048, 0, 0, 0, 0), (0, 1, 0, 0, 0)], picks=[0, 1] * 8)
@example(pool=[(4096, 0, 0, 0, 0), (0, 1, 0, 0, 0)], picks=[0, 1] * 8)
@example(pool=[(0, 0, 0, 4095, 1), (0, 0, 0, 4095, 2)], picks=[0, 1] * 8)
@settings(max_examples=300, deadline=None)
def test_shared_metrics_objects_equal_one_per_row(pool: list[Counts], picks: list[int]) -> None:
    """Rows repeat (a few distinct counts, many rows) so objects are shared; counts either side
    of what packs into one integer must never be mistaken for one another."""
    rows = [pool[i % len(pool)] for i in picks]
    assert metrics_list(np.array(rows, dtype=np.int64)) == [metrics(row) for row in rows]
