"""A large body right after a change, in-process: built afresh vs rebuilt from the entries the
change touched (``csatdist.incremental``), in the same run on the same data.

    .venv/bin/python bench/after_change.py                       # SQLite, `large` in a temp dir
    .venv/bin/python bench/after_change.py --database /tmp/large.db   # kept: loaded if empty

Before each timed render one new answer is acknowledged (untimed), so the account's version
moves and no rendered response can be reused, as on a busy account. "fresh" renders with no
response memory (every body built whole: what every render cost before the parts were kept);
"rebuilt" renders with the server's memory, so each body starts from the previous one's parts.
Both include catching the in-memory counters up, the sums, the body and the ETag; HTTP adds the
worker-thread hop and sending the body (see docs/performance.md's HTTP table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import datasets  # noqa: E402
from bench.run import SHAPES, ingest_direct, load_average, percentiles  # noqa: E402

from csatdist.aggregates import AggregateCache  # noqa: E402
from csatdist.allocator import fix_mmap_threshold  # noqa: E402
from csatdist.memo import ResponseMemo  # noqa: E402
from csatdist.query import parse_query  # noqa: E402
from csatdist.service import ingest_answers, render_distribution  # noqa: E402
from csatdist.store import Store, open_store  # noqa: E402

ACCOUNT = "bench"
NAMES = ["agents_all_60", "skills_all_60", "both_all_60"]
NAMES += ["agents_all_1440", "skills_all_1440", "both_all_1440"]


def measure(store: Store, repeat: int) -> dict[str, Any]:
    cache = AggregateCache(store)
    answers = iter(range(10**9))

    def new_answer() -> None:
        number = next(answers)
        now = int(time.time() * 1000)
        answer = {
            "id": f"after-change-{time.time_ns()}-{number}",
            "time": now,
            "skillId": 1 + number % 5,
            "agentId": 1 + number % 20,
            "score": 1 + number % 5,
        }
        ingest_answers(store, ACCOUNT, enumerate([answer]), now, 1445)

    results: dict[str, Any] = {}
    for name in NAMES:
        query = parse_query({"v": "1", **{k: str(v) for k, v in SHAPES[name].items()}})
        row: dict[str, Any] = {}
        for label, memo in (("fresh", ResponseMemo(0)), ("rebuilt", ResponseMemo(64 << 20))):
            render_distribution(cache, memo, ACCOUNT, query, int(time.time() * 1000))
            samples = []
            for _ in range(repeat):
                new_answer()
                started = time.perf_counter()
                render_distribution(cache, memo, ACCOUNT, query, int(time.time() * 1000))
                samples.append((time.perf_counter() - started) * 1000)
            row[label] = percentiles(samples)
        row["speedup"] = round(row["fresh"]["p50_ms"] / row["rebuilt"]["p50_ms"], 2)
        results[name] = row
        print(name, row, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", help="a SQLite path or PostgreSQL URL (default: temp)")
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--output", default=str(ROOT / "bench/results/after_change.json"))
    args = parser.parse_args()
    # As the server does: every block over the fixed threshold is a mapping of its own,
    # whose page faults a body pays here as it does there.
    fix_mmap_threshold()
    with tempfile.TemporaryDirectory() as tmp:
        target = args.database or os.path.join(tmp, "large.db")
        url = target if "://" in target else f"sqlite:///{target}"
        store = open_store(url)
        if store.account_version(ACCOUNT) == 0:
            print("loading large (1,000,000 answers)…", flush=True)
            data = list(datasets.answers(datasets.DATASETS["large"], int(time.time() * 1000)))
            print(ingest_direct(url, data), flush=True)
        load_before = load_average()
        results = measure(store, args.repeat)
        store.close()
    output = {
        "dataset": "large",
        "store": url.split(":", 1)[0],
        "repeat": args.repeat,
        "load_average": {"before": load_before, "after": load_average()},
        "shapes": results,
    }
    Path(args.output).write_text(json.dumps(output, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
