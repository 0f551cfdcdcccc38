"""Where ingest time goes on SQLite: the service against the store alone and raw-SQL floors.

    .venv/bin/python bench/ingest_floor.py [--answers 300000] [--preload 300000]

Writes ``--answers`` of the seeded ``large`` dataset, in batches of 5,000 with one durable
commit each (WAL, synchronous=FULL), onto a fresh database holding the ``--preload`` answers
before them (written the same way, untimed: B-trees of a real size), each way:

1. ``service``: ``ingest_answers`` — validation, de-duplication and the store write, with the
   fold of the log into the records and counters (the store is closed, so folded, in the time);
2. ``store``: ``store.record_answers`` with answers validated beforehand (no Python
   validation), the fold included likewise;
3. ``raw_reply_path``: the writes an ingest's reply waits for, as bare SQL on prepared values —
   the answers into a log keyed by (account, id), one packed change row, the version: the floor
   of the acknowledging transaction;
4. ``raw_indexed_records``: the records into a table keyed by (account, id) with an index by
   time, as the fold leaves them, one batch per commit (the floor of writing them in place);
5. ``raw_keys_counters_changes``: the write path before the log — idempotency keys, counter
   upserts and a change-log row per counter, at random places (that design's floor);
6. ``raw_keys``: idempotency keys only;
7. ``raw_append``: one append-only rowid table, no index — the floor of any design that must
   write each answer durably.

The raw floors create their own tables on a bare database (no migration): they measure SQLite
on this machine, not the schema of a release. Writes bench/results/ingest_floor.json.
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

from bench.datasets import BATCH, DATASETS, answers, batches_of  # noqa: E402
from bench.run import RESULTS, load_average, machine  # noqa: E402

from csatdist.answers import AcceptanceWindow, bucket_deltas, validate_all  # noqa: E402
from csatdist.service import ingest_answers  # noqa: E402
from csatdist.store import open_store  # noqa: E402
from csatdist.store.packed import pack  # noqa: E402
from csatdist.store.sql import record_values  # noqa: E402


def timed(
    label: str, prepare: Callable[[], None], work: Callable[[], None], total: int
) -> dict[str, Any]:
    prepare()
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    print(f"{label:28} {total / seconds:10,.0f} answers/s", flush=True)
    return {"seconds": round(seconds, 2), "answers_per_s": round(total / seconds)}


def raw_connection(path: Path) -> sqlite3.Connection:
    """A connection to a new database with the store's durability pragmas."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--answers", type=int, default=300_000)
    parser.add_argument("--preload", type=int, default=300_000)
    args = parser.parse_args()
    now = int(time.time() * 1000)
    account, rows = next(answers(DATASETS["large"], now))
    rows = rows[: args.preload + args.answers]
    batches = batches_of(rows)
    preloaded = range(args.preload // BATCH)
    measured = range(args.preload // BATCH, len(batches))
    window = AcceptanceWindow(now, 1445)
    validated = [validate_all(enumerate(batch), window)[0] for batch in batches]
    keys = [[(account, a.id, a.time_ms) for a in batch] for batch in validated]
    deltas = [
        [(account, *key, *counts) for key, counts in bucket_deltas(batch).items()]
        for batch in validated
    ]
    total = len(rows) - args.preload
    result: dict[str, Any] = {
        "dataset": f"{total:,} answers of large onto {args.preload:,}",
        "machine": machine(),
        "load_average_start": load_average(),
    }
    tables = {
        "log": "CREATE TABLE log (account_id TEXT NOT NULL, answer_id TEXT NOT NULL,"
        " answer_time INTEGER NOT NULL, skill_id INTEGER, agent_id INTEGER, score INTEGER,"
        " updated_ms INTEGER NOT NULL, conversation_id TEXT, comment TEXT, channel TEXT,"
        " skill_name TEXT, agent_name TEXT, PRIMARY KEY (account_id, answer_id)) WITHOUT ROWID",
        "changes": "CREATE TABLE changes (account_id TEXT NOT NULL, version INTEGER NOT NULL,"
        " created_ms INTEGER NOT NULL, changes BLOB NOT NULL,"
        " PRIMARY KEY (account_id, version)) WITHOUT ROWID",
        "versions": "CREATE TABLE versions (account_id TEXT PRIMARY KEY, version INTEGER)",
        "keys": "CREATE TABLE keys (account_id TEXT NOT NULL, answer_id TEXT NOT NULL,"
        " answer_time INTEGER NOT NULL, PRIMARY KEY (account_id, answer_id)) WITHOUT ROWID",
        "counters": "CREATE TABLE counters (account_id TEXT NOT NULL, bucket_end INTEGER NOT NULL,"
        " skill_id INTEGER NOT NULL, agent_id INTEGER NOT NULL, score1 INTEGER, score2 INTEGER,"
        " score3 INTEGER, score4 INTEGER, score5 INTEGER,"
        " PRIMARY KEY (account_id, bucket_end, skill_id, agent_id)) WITHOUT ROWID",
        "counter_changes": "CREATE TABLE counter_changes (account_id TEXT NOT NULL,"
        " version INTEGER NOT NULL, bucket_end INTEGER NOT NULL, skill_id INTEGER NOT NULL,"
        " agent_id INTEGER NOT NULL, score1 INTEGER, score2 INTEGER, score3 INTEGER,"
        " score4 INTEGER, score5 INTEGER, created_ms INTEGER NOT NULL,"
        " PRIMARY KEY (account_id, version, bucket_end, skill_id, agent_id)) WITHOUT ROWID",
    }
    upsert = (
        "INSERT INTO counters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET score1 = score1 + excluded.score1,"
        " score2 = score2 + excluded.score2, score3 = score3 + excluded.score3,"
        " score4 = score4 + excluded.score4, score5 = score5 + excluded.score5"
    )
    change = "INSERT INTO counter_changes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    records = [[record_values(account, a) for a in batch] for batch in validated]
    packed = [pack([row[1:] for row in batch]) for batch in deltas]

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)

        def store_ways(name: str, validate: bool) -> tuple[Callable[[], None], ...]:
            """Preload (validated, untimed, folded at close), then the timed batches through
            ``ingest_answers`` (``validate``) or ``store.record_answers``."""
            url = f"sqlite:///{tmp / name}.db"

            def prepare() -> None:
                store = open_store(url)
                for number in preloaded:
                    store.record_answers(account, validated[number])
                store.close()

            def work() -> None:
                store = open_store(url)
                for number in measured:
                    if validate:
                        ingest_answers(store, account, enumerate(batches[number]), now, 1445)
                    else:
                        store.record_answers(account, validated[number])
                store.close()

            return prepare, work

        def raw(
            name: str, *created: str
        ) -> Callable[[Callable[..., None]], tuple[Callable[[], None], ...]]:
            """A floor: ``write(conn, batch number)`` per batch, one commit each, on a bare
            database holding the ``created`` tables; the preload's batches untimed."""

            def wrap(write: Callable[..., None]) -> tuple[Callable[[], None], ...]:
                conn = raw_connection(tmp / f"{name}.db")

                def run(numbers: range) -> None:
                    for number in numbers:
                        conn.execute("BEGIN IMMEDIATE")
                        write(conn, number)
                        conn.execute("COMMIT")

                def prepare() -> None:
                    for table in created:
                        conn.execute(tables[table])
                    conn.execute("INSERT INTO versions VALUES (?, 0)", (account,))
                    run(preloaded)

                def work() -> None:
                    run(measured)
                    conn.close()

                return prepare, work

            return wrap

        @raw("reply", "log", "changes", "versions")
        def reply_path(conn: sqlite3.Connection, number: int) -> None:
            conn.executemany(f"INSERT INTO log VALUES ({', '.join('?' * 12)})", records[number])
            conn.execute(
                "INSERT INTO changes VALUES (?, ?, ?, ?)", (account, number, now, packed[number])
            )
            conn.execute(
                "UPDATE versions SET version = version + 1 WHERE account_id = ?", (account,)
            )

        @raw("indexed", "log", "versions")
        def indexed_records(conn: sqlite3.Connection, number: int) -> None:
            if number == 0:
                conn.execute("CREATE INDEX log_by_time ON log (account_id, answer_time)")
            ordered = sorted(records[number], key=lambda row: row[2])
            conn.executemany(f"INSERT INTO log VALUES ({', '.join('?' * 12)})", ordered)

        @raw("old", "keys", "counters", "counter_changes", "versions")
        def keys_counters_changes(conn: sqlite3.Connection, number: int) -> None:
            conn.executemany("INSERT INTO keys VALUES (?, ?, ?)", keys[number])
            conn.executemany(upsert, deltas[number])
            conn.executemany(change, [(r[0], number, *r[1:], now) for r in deltas[number]])

        @raw("keys", "keys", "versions")
        def keys_only(conn: sqlite3.Connection, number: int) -> None:
            conn.executemany("INSERT INTO keys VALUES (?, ?, ?)", keys[number])

        append = "CREATE TABLE append (account_id TEXT, answer_id TEXT, bucket_end INTEGER,"
        tables["append"] = append + " skill_id INTEGER, agent_id INTEGER, score INTEGER)"

        @raw("append", "append", "versions")
        def append_only(conn: sqlite3.Connection, number: int) -> None:
            conn.executemany(
                "INSERT INTO append VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (account, a.id, a.bucket_end, a.skill_id, a.agent_id, a.score)
                    for a in validated[number]
                ],
            )

        result["service"] = timed("service", *store_ways("service", True), total)
        result["store"] = timed("store", *store_ways("store", False), total)
        result["raw_reply_path"] = timed("raw_reply_path", *reply_path, total)
        result["raw_indexed_records"] = timed("raw_indexed_records", *indexed_records, total)
        result["raw_keys_counters_changes"] = timed(
            "raw_keys_counters_changes", *keys_counters_changes, total
        )
        result["raw_keys"] = timed("raw_keys", *keys_only, total)
        result["raw_append"] = timed("raw_append", *append_only, total)
        started = time.perf_counter()
        for number in measured:
            validate_all(enumerate(batches[number]), window)
        result["validation_only"] = {
            "answers_per_s": round(total / (time.perf_counter() - started))
        }
        print(f"{'validation_only':24} {result['validation_only']['answers_per_s']:10,} answers/s")
    result["load_average_end"] = load_average()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest_floor.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    subprocess.run([sys.executable, str(ROOT / "bench" / "report.py")], check=True)


if __name__ == "__main__":
    main()
