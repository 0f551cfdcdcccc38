"""``bench/history.py`` measures the right thing: its quick dataset, generated and loaded through
``import_history`` on SQLite in-process, is what reports over the loaded range count — in total,
per skill and per agent, in a zone with a DST change and one at :45, and the 400-day request of
case (b) is accepted. No timing is asserted; the benchmark reports those."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from csatdist.report import build_report, parse_report_query, report_body
from csatdist.store import Store
from csatdist.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]
#: 2026-11-30T07:15Z: a 90-day range before it crosses Europe/Berlin's change of 2026-10-25
END_MS = 1_796_022_900_000


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_history", ROOT / "bench" / "history.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _bench()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The quick mode's dataset (30 days x 2,000 answers, 2,000 agents, 50 skills), loaded."""
    store = SQLiteStore(str(tmp_path_factory.mktemp("histbench") / "history.db"))
    data = bench.Dataset(30, 2000, 2000, 50, END_MS)
    figures = bench.load(store, data)
    yield store, data, figures
    store.close()


def _report(store: Store, **params: str) -> dict[str, Any]:
    query = parse_report_query(params, now_ms=END_MS)
    return report_body(build_report(bench.ACCOUNT, query, store.report_sums))


def _counts(metrics: dict[str, Any]) -> list[int]:
    return [metrics[f"csat_score{s}_answers"] for s in range(1, 6)]


def test_generated_rows_add_up_to_the_dataset() -> None:
    data = bench.Dataset(3, 500, 40, 5, END_MS, chunk_days=2)
    rows = np.vstack(list(bench.generate(data)))
    assert rows[:, 3:].sum() == data.answers == data.totals.sum() == 1500
    assert len(rows) == data.bucket_rows
    assert (rows[:, 0] % bench.BUCKET_MS == 0).all()
    assert rows[:, 0].min() > data.start_ms
    assert rows[:, 0].max() <= data.end_ms
    assert set(rows[:, 1].tolist()) <= set(data.skill_ids().tolist())
    assert set(rows[:, 2].tolist()) <= set(data.agent_ids().tolist())
    # scores lean to 4-5, and the same seed gives the same rows
    assert data.totals[3:].sum() > 0.7 * data.answers
    again = bench.Dataset(3, 500, 40, 5, END_MS, chunk_days=2)
    assert np.array_equal(rows, np.vstack(list(bench.generate(again))))


def test_the_loaded_history_is_what_a_report_counts(loaded: Any) -> None:
    store, data, figures = loaded
    assert figures["answers"] == data.answers == 60_000
    body = _report(
        store, **{"from": str(data.start_ms), "to": str(data.end_ms), "granularity": "total"}
    )
    assert _counts(body["metricsTotals"]) == data.totals.tolist()


@pytest.mark.parametrize("tz", ["Europe/Berlin", "Asia/Kathmandu"])
def test_skills_and_agents_add_up_in_any_zone(loaded: Any, tz: str) -> None:
    store, data, _ = loaded
    span = {"from": str(data.start_ms), "to": str(data.end_ms), "tz": tz, "granularity": "day"}
    for group in ("skillIds", "agentIds"):
        body = _report(store, **span, **{group: "all"})
        assert _counts(body["metricsTotals"]) == data.totals.tolist()
        entries = body["skills" if group == "skillIds" else "agents"]
        per_group = np.array([_counts(e["metricsTotals"]) for e in entries.values()])
        assert per_group.sum(axis=0).tolist() == data.totals.tolist()
        by_period = np.array([_counts(p["metrics"]) for p in body["series"]])
        assert by_period.sum(axis=0).tolist() == data.totals.tolist()


def test_the_cases_requests_are_accepted(loaded: Any) -> None:
    """Every case's request parses as the server would see it (c, 7 days by hour of 2,000
    agents, is refused by the report's entry limit, on purpose), and 400 days by month counts
    all that was loaded."""
    store, data, _ = loaded
    for case in bench.CASES:
        params = bench.query_params(case, 3, END_MS)
        query = parse_report_query(params, now_ms=END_MS)
        assert query.boundaries[-1] - query.boundaries[0] == case.days * bench.DAY_MS
    month = next(c for c in bench.CASES if c.name == "b_account_400d_month")
    body = _report(store, **bench.query_params(month, 0, END_MS))
    assert _counts(body["metricsTotals"]) == data.totals.tolist()
