from __future__ import annotations

from csatdist.buckets import window_for
from csatdist.distribution import CountRow, assemble, grouping_for, metrics
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
