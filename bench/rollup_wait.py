"""How long another account's one-answer write waits while the SQLite writer rolls a large
account's counters up into the history, with a roll-up step in one part and in parts that
yield to a waiting write, in alternating rounds on copies of one database.

    .venv/bin/python bench/rollup_wait.py                   # 3 rounds, one busy thread
    .venv/bin/python bench/rollup_wait.py --rounds 5 --busy-threads 0
    git worktree add /tmp/before <commit>                   # the code of another commit:
    PYTHONPATH=/tmp/before/src .venv/bin/python bench/rollup_wait.py --output /tmp/before.json

The database is bench/abuse.py's cached ``large`` day (1,000,000 answers of one account, built
once in ``~/.cache/csatdist-bench/``), never rolled up: its first roll-up, which a server makes a
minute after it starts (and after any long stop), is a day of counters. Each round copies it,
opens the store in this process with the server's 1 ms switch interval, and rolls the first
``--hours`` of that day up (``store.roll_up``) while a victim thread writes one answer at a
time to another account every 10 ms and ``--busy-threads`` threads run Python meanwhile (as a
server's event loop and workers do under load: each takes the GIL from the writer thread
between its statements). Variants, alternating: ``one_part`` (each 5,000-row step one part, as
before the parts) and ``parts`` (the step in parts of ``ROLL_PART_ROWS``; code without them
runs its own way in both). Reported per variant: the victim's write latency p50 / p90 / p99 /
max over every round (writes made while the roll-up ran), and how long the roll-up took.
Writes bench/results/rollup_wait.json. Nothing here asserts a duration.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any
from unittest import mock

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from bench.abuse import cached_database, copy_database, percentiles  # noqa: E402
from bench.run import RESULTS, machine  # noqa: E402

from csatdist.buckets import BUCKET_MS, floor_to_bucket  # noqa: E402
from csatdist.store import Answer  # noqa: E402
from csatdist.store import history as history_sql  # noqa: E402
from csatdist.store import sqlite as sqlite_store  # noqa: E402

VARIANTS = {
    "one_part": history_sql.ROLL_STEP_ROWS,
    "parts": getattr(sqlite_store, "ROLL_PART_ROWS", history_sql.ROLL_STEP_ROWS),
}


def busy(stop: threading.Event) -> None:
    """Pure Python work, as an event loop parsing bodies does: it holds the GIL between its
    switch intervals."""
    while not stop.is_set():
        sum(i * i for i in range(2_000))


def oldest_bucket(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT min(bucket_end) FROM buckets").fetchone()[0])


def one_round(source: Path, part_rows: int, busy_threads: int, hours: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="csatdist-rollup-") as tmp:
        path = Path(tmp) / "db.sqlite"
        copy_database(source, path)
        start = oldest_bucket(path) - BUCKET_MS
        store = sqlite_store.SQLiteStore(path)
        stop = threading.Event()
        waits: list[float] = []
        done = threading.Event()

        def victim() -> None:
            n = 0
            while not done.is_set():
                answer = Answer(0, f"v-{os.getpid()}-{n}", int(time.time() * 1000), 1, 10, 5)
                started = time.perf_counter()
                store.record_answers("victim", [answer])
                if not done.is_set():
                    waits.append((time.perf_counter() - started) * 1000)
                n += 1
                time.sleep(0.01)

        threads = [threading.Thread(target=busy, args=(stop,)) for _ in range(busy_threads)]
        threads.append(threading.Thread(target=victim))
        try:
            with mock.patch.object(sqlite_store, "ROLL_PART_ROWS", part_rows, create=True):
                for thread in threads:
                    thread.start()
                time.sleep(0.5)  # the victim's writes under way
                started = time.perf_counter()
                now_point = floor_to_bucket(int(time.time() * 1000)) - BUCKET_MS
                store.roll_up(min(now_point, start + floor_to_bucket(int(hours * 3_600_000))))
                seconds = time.perf_counter() - started
        finally:
            done.set()
            stop.set()
            for thread in threads:
                thread.join()
            store.close()
        return {"waits_ms": waits, "roll_up_seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--busy-threads", type=int, default=1)
    parser.add_argument(
        "--hours", type=float, default=2.0, help="Hours of the day rolled up (24: all of it)."
    )
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS / "rollup_wait.json")
    args = parser.parse_args()
    sys.setswitchinterval(0.001)  # as `serve` sets it (CSATDIST_SWITCH_INTERVAL_MS)
    source, meta = cached_database("large", args.cache_dir, 3.0, print)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    for number in range(args.rounds):
        for name, part_rows in VARIANTS.items():
            load = os.getloadavg()[0]
            result = one_round(source, part_rows, args.busy_threads, args.hours)
            result["load"] = round(load, 2)
            rounds[name].append(result)
            waits = percentiles(result["waits_ms"])
            print(
                f"round {number + 1} {name:8} (parts of {part_rows:,} rows): victim {waits},"
                f" roll-up {result['roll_up_seconds']} s, load {load:.2f}"
            )
    summary = {
        name: {
            "part_rows": VARIANTS[name],
            "victim_write_ms": percentiles([w for r in runs for w in r["waits_ms"]]),
            "roll_up_seconds_median": statistics.median(r["roll_up_seconds"] for r in runs),
            "roll_up_seconds": [r["roll_up_seconds"] for r in runs],
            "loads": [r["load"] for r in runs],
        }
        for name, runs in rounds.items()
    }
    print("\nvariant   victim write p50/p90/p99/max ms (n)          roll-up s (median)")
    for name, row in summary.items():
        w = row["victim_write_ms"]
        print(
            f"{name:9} {w['p50_ms']}/{w['p90_ms']}/{w['p99_ms']}/{w['max_ms']} ({w['count']})"
            f"{'':14}{row['roll_up_seconds_median']}"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": machine(),
        "dataset": meta,
        "code": str(Path(sqlite_store.__file__).parents[2]),
        "busy_threads": args.busy_threads,
        "hours": args.hours,
        "rounds": args.rounds,
        "variants": summary,
    }
    args.output.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
