"""Where ingest time goes on SQLite: the service against the store alone and raw-SQL floors.

    .venv/bin/python bench/ingest_floor.py [--answers 300000]

Takes the first ``--answers`` of the seeded ``large`` dataset and loads it, in batches of 5,000
with one durable commit each (WAL, synchronous=FULL), six ways, each on a fresh database:

1. ``service``: ``ingest_answers`` — validation, de-duplication and the store write;
2. ``store``: ``store.record_answers`` with answers validated beforehand (no Python validation);
3. ``raw_all``: the same three writes as the store (idempotency keys, counter upserts, change
   log) as bare ``executemany`` calls on prepared tuples — the floor of this schema;
4. ``raw_keys_and_counters``: without the change log;
5. ``raw_keys``: idempotency keys only;
6. ``raw_append``: one append-only rowid table, no index — the floor of any design that must
   write each answer durably.

Writes bench/results/ingest_floor.json.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.datasets import DATASETS, answers  # noqa: E402
from bench.run import RESULTS, machine  # noqa: E402

from csatdist.answers import AcceptanceWindow, bucket_deltas, validate_all  # noqa: E402
from csatdist.service import ingest_answers  # noqa: E402
from csatdist.store import open_store  # noqa: E402

BATCH = 5000


def timed(label: str, work: Callable[[], None], total: int) -> dict[str, Any]:
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    print(f"{label:24} {total / seconds:10,.0f} answers/s", flush=True)
    return {"seconds": round(seconds, 2), "answers_per_s": round(total / seconds)}


def raw_connection(path: Path) -> sqlite3.Connection:
    """A connection with the store's pragmas on a database the store has migrated."""
    open_store(f"sqlite:///{path}").close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--answers", type=int, default=300_000)
    args = parser.parse_args()
    now = int(time.time() * 1000)
    account, rows = next(answers(DATASETS["large"], now))
    rows = rows[: args.answers]
    batches = [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]
    window = AcceptanceWindow(now, 1445)
    validated = [validate_all(enumerate(batch), window)[0] for batch in batches]
    keys = [[(account, a.id, a.time_ms) for a in batch] for batch in validated]
    deltas = [
        [(account, *key, *counts) for key, counts in bucket_deltas(batch).items()]
        for batch in validated
    ]
    total = len(rows)
    result: dict[str, Any] = {"dataset": f"{total} answers of large", "machine": machine()}
    upsert = (
        "INSERT INTO buckets (account_id, bucket_end, skill_id, agent_id,"
        " score1, score2, score3, score4, score5) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET score1 = score1 + excluded.score1,"
        " score2 = score2 + excluded.score2, score3 = score3 + excluded.score3,"
        " score4 = score4 + excluded.score4, score5 = score5 + excluded.score5"
    )
    change = (
        "INSERT INTO bucket_changes (account_id, version, bucket_end, skill_id, agent_id,"
        " score1, score2, score3, score4, score5, created_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    key_insert = "INSERT INTO answer_ids (account_id, answer_id, answer_time) VALUES (?, ?, ?)"

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)

        def service() -> None:
            store = open_store(f"sqlite:///{tmp / 'service.db'}")
            for batch in batches:
                ingest_answers(store, account, enumerate(batch), now, 1445)
            store.close()

        def store_only() -> None:
            store = open_store(f"sqlite:///{tmp / 'store.db'}")
            for batch in validated:
                store.record_answers(account, batch)
            store.close()

        def raw(name: str, with_counters: bool, with_changes: bool) -> Callable[[], None]:
            def work() -> None:
                conn = raw_connection(tmp / f"{name}.db")
                for version, (key_rows, delta_rows) in enumerate(zip(keys, deltas, strict=True), 1):
                    conn.execute("BEGIN IMMEDIATE")
                    conn.executemany(key_insert, key_rows)
                    if with_counters:
                        conn.executemany(upsert, delta_rows)
                    if with_changes:
                        conn.executemany(change, [(r[0], version, *r[1:], now) for r in delta_rows])
                    conn.execute("COMMIT")
                conn.close()

            return work

        def append_only() -> None:
            conn = raw_connection(tmp / "append.db")
            conn.execute(
                "CREATE TABLE log (account_id TEXT, answer_id TEXT, bucket_end INTEGER,"
                " skill_id INTEGER, agent_id INTEGER, score INTEGER)"
            )
            for batch in validated:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "INSERT INTO log VALUES (?, ?, ?, ?, ?, ?)",
                    [(account, a.id, a.bucket_end, a.skill_id, a.agent_id, a.score) for a in batch],
                )
                conn.execute("COMMIT")
            conn.close()

        result["service"] = timed("service", service, total)
        result["store"] = timed("store", store_only, total)
        result["raw_all"] = timed("raw_all", raw("all", True, True), total)
        result["raw_keys_and_counters"] = timed(
            "raw_keys_and_counters", raw("kc", True, False), total
        )
        result["raw_keys"] = timed("raw_keys", raw("k", False, False), total)
        result["raw_append"] = timed("raw_append", append_only, total)
        started = time.perf_counter()
        for batch in batches:
            validate_all(enumerate(batch), window)
        result["validation_only"] = {
            "answers_per_s": round(total / (time.perf_counter() - started))
        }
        print(f"{'validation_only':24} {result['validation_only']['answers_per_s']:10,} answers/s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest_floor.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    subprocess.run([sys.executable, str(ROOT / "bench" / "report.py")], check=True)


if __name__ == "__main__":
    main()
