"""What a report over the series limit costs to refuse, in-process: ``build_report`` against a
store holding bench/history.py's dataset (2,000 agents), timed in CPU and wall milliseconds.

    .venv/bin/python bench/report_refusal.py --database /tmp/history400.db   # loads it if empty
    .venv/bin/python bench/report_refusal.py --database postgresql://…/db --days 60

With ``agentIds=all`` the number of series is known only from the data. The store counts the
agents first and stops once more than fit, so (c), 7 days by hour, is refused after reading a
few hundred agents' rows instead of summing the week. To time another tree (e.g. the one before
that change), run this script with ``PYTHONPATH=<that tree>/src``: it uses only
``build_report`` and the store. The reports that fit are timed too, to show what the count adds
to them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import csatdist
from csatdist.errors import InvalidRequest
from csatdist.report import build_report, parse_report_query, report_body
from csatdist.store import Store, open_store

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import history as bench  # noqa: E402

#: 2026-11-30T07:15Z, as tests/test_bench_history.py: the dataset ends here, reports end at 07:00
END_MS = 1_796_022_900_000
HOUR_MS = 3_600_000
CASES = {  # name: (what, days, parameters); c and c2 are bench/history.py's
    "c": ("7 days by hour, refused", 7, {"granularity": "hour", "agentIds": "all"}),
    "c400": ("400 days by day, refused", 400, {"granularity": "day", "agentIds": "all"}),
    "c2": ("2 days by hour, fits", 2, {"granularity": "hour", "agentIds": "all"}),
    "m400": ("400 days by month, fits", 400, {"granularity": "month", "agentIds": "all"}),
}


def loaded(store: Store, to_ms: int) -> int:
    query = parse_report_query(
        {"from": str(to_ms - 400 * bench.DAY_MS), "to": str(to_ms), "granularity": "total"},
        now_ms=to_ms,
    )
    body = report_body(build_report(bench.ACCOUNT, query, store.report_sums))
    return int(body["metricsTotals"]["total_answers"])


def measure(store: Store, days: int, params: dict[str, str], repeat: int) -> dict[str, Any]:
    to = END_MS - END_MS % HOUR_MS
    query = parse_report_query(
        {"from": str(to - days * bench.DAY_MS), "to": str(to), **params}, now_ms=to
    )
    cpu, wall, outcome = [], [], ""
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        try:
            body = report_body(build_report(bench.ACCOUNT, query, store.report_sums))
            outcome = f"200: {len(body['agents'])} agents"
        except InvalidRequest as refused:
            outcome = f"400: {refused.invalid_params[0].reason}"
        cpu.append((time.process_time() - c0) * 1000)
        wall.append((time.perf_counter() - t0) * 1000)
    return {
        "cpu_ms": round(statistics.median(cpu), 2),
        "wall_ms": round(statistics.median(wall), 2),
        "outcome": outcome,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", required=True, help="a SQLite path or a database URL")
    parser.add_argument("--days", type=int, default=400, help="of history, when loading")
    parser.add_argument("--per-day", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=11, help="runs a case; medians shown")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated names")
    args = parser.parse_args()
    print(f"csatdist from {Path(csatdist.__file__).parent}", flush=True)
    store = open_store(args.database)
    try:
        if not loaded(store, END_MS - END_MS % HOUR_MS):
            data = bench.Dataset(args.days, args.per_day, 2000, 50, END_MS)
            print(f"loading {data.answers:,} answers: {bench.load(store, data)}", flush=True)
        for name in args.cases.split(","):
            what, days, params = CASES[name]
            result = measure(store, days, params, args.repeat)
            print(
                f"{name} ({what}): median {result['cpu_ms']} ms CPU, {result['wall_ms']} ms wall "
                f"(n={args.repeat})\n    {result['outcome']}",
                flush=True,
            )
    finally:
        store.close()


if __name__ == "__main__":
    main()
