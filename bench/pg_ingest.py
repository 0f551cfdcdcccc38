"""Ingest speed on PostgreSQL: the store write alone, HTTP NDJSON batches of 5,000, and floors.

    .venv/bin/python bench/pg_ingest.py --label before|after [--answers 300000]
        [--preload 300000] [--repeat 3] [--modes store,http,statements,copy_bare,copy_pk]
        [--accumulate]

Each repetition starts from a new, empty schema on the test PostgreSQL server
(``CSATDIST_TEST_POSTGRES_URL``, dropped afterwards) holding ``--preload`` answers of the seeded
``large`` dataset (loaded untimed), then times the next ``--answers`` of it in batches of 5,000,
one durable commit each (synchronous_commit on, the server's default):

- ``store``: ``store.record_answers`` with answers validated beforehand;
- ``http``: NDJSON bodies of 5,000 POSTed one after another to a real ``csatdist serve``;
- ``copy_bare``: the same records' columns by ``COPY … FROM STDIN (FORMAT BINARY)`` into a
  table without any index, one commit per 5,000: the floor of any design that writes each
  answer durably on this server;
- ``copy_pk``: the same into a table with the records' primary key (account, answer id), the
  floor of any design that keeps the idempotency keys in one B-tree;
- ``statements``: the store's own statements for each batch before its reply (lock, read of
  the stored and erased ids, COPY into the answer log, the change-log row), their parameters
  built beforehand: what this schema costs PostgreSQL without any Python work per answer
  (the fold, later, not included).

Each figure is also given per CPU second of the writer (this process for ``store`` and the
floors, the server for ``http``) and per CPU second of PostgreSQL (every ``postgres`` process of
the machine, read from /proc: the backends, WAL writer, checkpointer; the machine is shared, so
this includes anything else the server did meanwhile), with the median time one batch took to be
acknowledged and, for ``store`` and ``http``, the answers per second until everything is folded
as well (the timed batches, then a fold of what the replies left pending: the rate the store
sustains, which the acknowledged rate exceeds while a backlog grows). It prints the median of
the repetitions and records them, with the load average at the time, under ``--label`` in
bench/results/pg_ingest.json (other labels are kept, so a run
before a change and one after it sit side by side). With ``--accumulate`` the runs are added
to the label's earlier ones, so that rounds of the code before and after a change can alternate:

    for round in 1 2 3; do
        PYTHONPATH=/path/to/the/old/tree/src .venv/bin/python bench/pg_ingest.py \\
            --label before --modes store,http --repeat 1 --accumulate
        .venv/bin/python bench/pg_ingest.py --label after --repeat 1 --accumulate
    done
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.datasets import ingest_workload  # noqa: E402
from bench.run import RESULTS, cpu_seconds, machine, runs_and_medians  # noqa: E402
from tests.helpers import postgres_schema, start_server  # noqa: E402

from csatdist.answers import Answer  # noqa: E402
from csatdist.keys import issue_key  # noqa: E402
from csatdist.store import open_store  # noqa: E402
from csatdist.store.postgres import RECORD_COPY_TYPES  # noqa: E402
from csatdist.store.sql import record_values  # noqa: E402

ACCOUNT = "bench"
#: The floors' table: the records' columns (migration 5), with or without the primary key.
_FLOOR_TABLE = """
CREATE TABLE floor_answers (
    account_id TEXT NOT NULL, answer_id TEXT NOT NULL, answer_time BIGINT NOT NULL,
    skill_id BIGINT, agent_id BIGINT, score SMALLINT, updated_ms BIGINT NOT NULL,
    conversation_id TEXT, comment TEXT, channel TEXT, skill_name TEXT, agent_name TEXT{pk})
"""


def postgres_cpu() -> float:
    """CPU seconds of every process named ``postgres`` on this machine, so far (a backend that
    exited meanwhile is not counted: the bench's connections outlive what they measure)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            total += cpu_seconds(int(entry.name))
        except (OSError, ValueError):
            continue
    return total


def preloaded(url: str, preload: list[list[Answer]]) -> None:
    """The preload written and, with an answer log, folded: the timed part starts from records
    and counters, as a store does once its backlog is folded. Then analyzed, as autovacuum
    would have soon: a new table's planner estimates, for one account of 300,000 records, read
    every record of the account for a batch's 5,000 ids (77 ms, against a few for the index)."""
    store = open_store(url)
    for batch in preload:
        store.record_answers(ACCOUNT, batch)
    store.close()
    fold_pending(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")


def timed_loop(
    batches: list[Any],
    write: Callable[[Any], None],
    writer_cpu: Callable[[], float],
    total: int,
    drain: Callable[[], None] | None = None,
) -> tuple[float, float, float, float, float]:
    """Answers per second of wall time, per CPU second of the writer and of PostgreSQL, the
    median milliseconds one batch took to be acknowledged, and answers per second until
    ``drain`` (the work left after the replies: a fold of what is still pending) returned."""
    acknowledged = []
    cpu, pg_cpu = writer_cpu(), postgres_cpu()
    started = time.perf_counter()
    for batch in batches:
        sent = time.perf_counter()
        write(batch)
        acknowledged.append(time.perf_counter() - sent)
    seconds = time.perf_counter() - started
    cpu, pg_cpu = writer_cpu() - cpu, postgres_cpu() - pg_cpu
    if drain is not None:
        drain()
    drained = time.perf_counter() - started
    return (
        total / seconds,
        total / max(cpu, 1e-9),
        total / max(pg_cpu, 1e-9),
        statistics.median(acknowledged) * 1000,
        total / drained,
    )


def fold_pending(url: str) -> None:
    """Fold everything pending (a store with an answer log; nothing to do for one without)."""
    store = open_store(url)
    try:
        fold = getattr(store, "_fold_all", None)
        if fold is not None:
            fold()
    finally:
        store.close()


def store_rate(
    url: str, preload: list[list[Answer]], timed: list[list[Answer]]
) -> tuple[float, float, float, float, float]:
    preloaded(url, preload)
    store = open_store(url)
    try:
        return timed_loop(
            timed,
            lambda batch: store.record_answers(ACCOUNT, batch),
            time.process_time,
            sum(len(b) for b in timed),
            lambda: fold_pending(url),
        )
    finally:
        store.close()


def http_rate(
    url: str, preload: list[list[Answer]], bodies: list[bytes], total: int
) -> tuple[float, float, float, float, float]:
    preloaded(url, preload)
    store = open_store(url)
    issued = issue_key(ACCOUNT, frozenset({"read", "write"}), "bench", 0)
    store.add_key(issued.key)
    store.close()
    log = Path(tempfile.gettempdir()) / "csatdist-pg_ingest-server.log"
    server = start_server(
        url,
        log,
        "--log-level",
        "warning",
        # The store's ingest capacity, not an account's rate of answers (a policy).
        env={"CSATDIST_WARM_UP_ACCOUNTS": "0", "CSATDIST_INGEST_ANSWERS_PER_SECOND": "0"},
    )
    headers = {
        "Authorization": f"Bearer {issued.token}",
        "Content-Type": "application/x-ndjson",
    }
    try:
        with httpx.Client(timeout=300) as client:

            def post(body: bytes) -> None:
                response = client.post(
                    f"{server.url}/api/account/{ACCOUNT}/csat/answers",
                    content=body,
                    headers=headers,
                )
                assert response.status_code == 200, response.text

            pid = server.process.pid
            figures = timed_loop(
                bodies, post, lambda: cpu_seconds(pid), total, lambda: fold_pending(url)
            )
    finally:
        server.stop()
    return figures


def floor_rows(batch: list[Answer]) -> list[tuple[Any, ...]]:
    """The batch as the store copies its records in."""
    return [record_values(ACCOUNT, a) for a in batch]


def copy_rate(
    url: str, preload: list[list[Answer]], timed: list[list[Answer]], *, pk: bool
) -> tuple[float, float, float, float, float]:
    """COPY of the records' columns, one durable commit per batch (rows built beforehand)."""
    table = _FLOOR_TABLE.format(pk=", PRIMARY KEY (account_id, answer_id)" if pk else "")
    with psycopg.connect(url) as conn:
        conn.execute(table)
        conn.commit()

        def copy(rows: list[tuple[Any, ...]]) -> None:
            copy_sql = "COPY floor_answers FROM STDIN (FORMAT BINARY)"
            with conn.cursor() as cursor, cursor.copy(copy_sql) as copying:
                copying.set_types(RECORD_COPY_TYPES)
                for row in rows:
                    copying.write_row(row)
            conn.commit()

        for batch in preload:
            copy(floor_rows(batch))
        return timed_loop(
            [floor_rows(b) for b in timed], copy, time.process_time, sum(len(b) for b in timed)
        )


def statements_rate(
    url: str, preload: list[list[Answer]], timed: list[list[Answer]]
) -> tuple[float, float, float, float, float]:
    """The store's statements with parameters built beforehand, one commit per batch."""
    from csatdist.records import delta_rows, plan_ingest
    from csatdist.store import packed
    from csatdist.store import postgres as pg
    from csatdist.store.sql import record_values

    preloaded(url, preload)
    prepared = []
    for batch in timed:
        rows = delta_rows(plan_ingest(batch, {}, []).deltas)
        prepared.append(
            (
                [a.id for a in batch],
                [record_values(ACCOUNT, a) for a in batch],
                {
                    "account": ACCOUNT,
                    "created": int(time.time() * 1000),
                    "packed": packed.pack(rows),
                },
            )
        )
    with psycopg.connect(url) as conn:

        def write(work: tuple[list[str], list[tuple[Any, ...]], dict[str, Any]]) -> None:
            ids, records, changes = work
            pg._lock_account(conn, ACCOUNT)
            conn.execute(pg._STORED_AMONG, {"account": ACCOUNT, "ids": ids}).fetchall()
            conn.execute(pg._ERASED_AMONG, (ACCOUNT, ids)).fetchall()
            with conn.cursor() as cursor, cursor.copy(pg._COPY_LOGGED) as copy:
                copy.set_types(RECORD_COPY_TYPES)
                for record in records:
                    copy.write_row(record)
            conn.execute(pg._LOG_CHANGES, changes)
            conn.commit()

        return timed_loop(prepared, write, time.process_time, sum(len(b) for b in timed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", required=True)
    parser.add_argument("--answers", type=int, default=300_000)
    parser.add_argument("--preload", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--modes", default="store,http,statements,copy_bare,copy_pk")
    parser.add_argument(
        "--accumulate",
        action="store_true",
        help="add these runs to the label's earlier ones (alternating rounds of two trees)",
    )
    args = parser.parse_args()
    preload, timed, bodies, total = ingest_workload(
        args.preload, args.answers, int(time.time() * 1000)
    )
    modes = args.modes.split(",")
    runs: dict[str, list[int]] = {mode: [] for mode in modes}
    per_cpu: dict[str, list[int]] = {mode: [] for mode in modes}
    per_pg_cpu: dict[str, list[int]] = {mode: [] for mode in modes}
    batch_ms: dict[str, list[float]] = {mode: [] for mode in modes}
    sustained: dict[str, list[int]] = {mode: [] for mode in modes}
    loads = []
    for repetition in range(args.repeat):
        for mode in modes:
            loads.append(os.getloadavg()[0])
            with postgres_schema() as url:
                if mode == "store":
                    figures = store_rate(url, preload, timed)
                elif mode == "http":
                    figures = http_rate(url, preload, bodies, total)
                elif mode == "statements":
                    figures = statements_rate(url, preload, timed)
                else:
                    figures = copy_rate(url, preload, timed, pk=mode == "copy_pk")
            rate, rate_cpu, rate_pg, batch, folded = figures
            sustained[mode].append(round(folded))
            runs[mode].append(round(rate))
            per_cpu[mode].append(round(rate_cpu))
            per_pg_cpu[mode].append(round(rate_pg))
            batch_ms[mode].append(round(batch, 1))
            print(
                f"{args.label} {mode:9} run {repetition + 1}: {rate:10,.0f} answers/s,"
                f" {rate_cpu:10,.0f} per writer CPU s, {rate_pg:10,.0f} per PostgreSQL CPU s,"
                f" a batch acknowledged in {batch:.1f} ms (median), {folded:10,.0f} answers/s"
                f" until folded, load {loads[-1]:.2f}",
                flush=True,
            )

    out = RESULTS / "pg_ingest.json"
    saved = orjson.loads(out.read_bytes()) if out.exists() else {}
    figures_out: dict[str, Any] = {
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "postgresql": server_settings(),
        "preload": args.preload,
        "answers": total,
        "load_average_1min": [round(x, 2) for x in loads],
    }
    earlier = saved.get(args.label) if args.accumulate else None
    if earlier is not None:  # one more round of an alternating comparison
        figures_out["load_average_1min"] = earlier["load_average_1min"] + [
            round(x, 2) for x in loads
        ]
    figures_out |= runs_and_medians(
        {
            "": runs,
            "_per_cpu_s": per_cpu,
            "_per_pg_cpu_s": per_pg_cpu,
            "_batch_ms": batch_ms,
            "_folded": sustained,
        },
        earlier,
    )
    for mode in modes:
        print(
            f"{args.label} {mode:9} median {figures_out[f'{mode}_median']:10,} answers/s,"
            f" {figures_out[f'{mode}_per_cpu_s_median']:10,} per writer CPU s,"
            f" {figures_out[f'{mode}_per_pg_cpu_s_median']:10,} per PostgreSQL CPU s"
            f" ({len(figures_out[f'{mode}_runs'])} runs)"
        )
    saved[args.label] = figures_out
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(saved, option=orjson.OPT_INDENT_2) + b"\n")


def server_settings() -> dict[str, str]:
    """The PostgreSQL server's version and the settings durability and speed depend on."""
    from tests.helpers import POSTGRES_URL

    names = ["server_version", "fsync", "synchronous_commit", "wal_sync_method"]
    names += ["shared_buffers", "full_page_writes"]
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s)", (names,)
        ).fetchall()
    return {name: f"{setting} ({unit})" if unit else setting for name, setting, unit in rows}


if __name__ == "__main__":
    os.environ.setdefault("CSATDIST_LOG_LEVEL", "warning")
    main()
