"""Ingest speed on SQLite: the store write alone and HTTP NDJSON batches of 5,000.

    .venv/bin/python bench/sqlite_ingest.py --label before|after [--answers 300000]
        [--preload 300000] [--repeat 3]

Each repetition starts from a fresh database holding ``--preload`` answers of the seeded
``large`` dataset (loaded untimed), then times the next ``--answers`` of it in batches of 5,000,
one durable commit each (WAL, synchronous=FULL, the store's defaults):

- ``store``: ``store.record_answers`` with answers validated beforehand;
- ``http``: NDJSON bodies of 5,000 POSTed one after another to a real ``csatdist serve``.

Each figure is also given per CPU second (of this process for ``store``, of the server for
``http``), which a machine shared with other work disturbs less than wall time, with the median
time one batch took to be acknowledged. It prints the
median of the repetitions and records them, with the load average at the time,
under ``--label`` in bench/results/sqlite_ingest.json (other labels are kept, so a run before
a change and one after it sit side by side; with ``--accumulate`` the runs are added to the
label's earlier ones, for alternating rounds of the code before and after).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.datasets import ingest_workload  # noqa: E402
from bench.run import RESULTS, cpu_seconds, machine, runs_and_medians  # noqa: E402
from tests.helpers import start_server  # noqa: E402

from csatdist.answers import Answer  # noqa: E402
from csatdist.keys import issue_key  # noqa: E402
from csatdist.store import open_store  # noqa: E402

ACCOUNT = "bench"


def preloaded(path: Path, preload: list[list[Answer]]) -> None:
    store = open_store(f"sqlite:///{path}")
    for batch in preload:
        store.record_answers(ACCOUNT, batch)
    store.close()


def store_rate(
    path: Path, preload: list[list[Answer]], timed: list[list[Answer]]
) -> tuple[float, float, float]:
    """Answers per second of wall time and per CPU second (this process: the writer), and the
    median milliseconds one batch took to be acknowledged."""
    preloaded(path, preload)
    store = open_store(f"sqlite:///{path}")
    total = sum(len(b) for b in timed)
    acknowledged = []
    cpu = time.process_time()
    started = time.perf_counter()
    for batch in timed:
        sent = time.perf_counter()
        store.record_answers(ACCOUNT, batch)
        acknowledged.append(time.perf_counter() - sent)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    store.close()
    return total / seconds, total / cpu, statistics.median(acknowledged) * 1000


def http_rate(
    path: Path, preload: list[list[Answer]], bodies: list[bytes], total: int
) -> tuple[float, float, float]:
    """Answers per second of wall time and per CPU second of the server process."""
    preloaded(path, preload)
    store = open_store(f"sqlite:///{path}")
    issued = issue_key(ACCOUNT, frozenset({"read", "write"}), "bench", 0)
    store.add_key(issued.key)
    store.close()
    server = start_server(
        path,
        path.with_suffix(".log"),
        "--log-level",
        "warning",
        # The store's ingest capacity, not an account's rate of answers (a policy).
        env={"CSATDIST_WARM_UP_ACCOUNTS": "0", "CSATDIST_INGEST_ANSWERS_PER_SECOND": "0"},
    )
    headers = {
        "Authorization": f"Bearer {issued.token}",
        "Content-Type": "application/x-ndjson",
    }
    acknowledged = []
    try:
        with httpx.Client(timeout=300) as client:
            cpu = cpu_seconds(server.process.pid)
            started = time.perf_counter()
            for body in bodies:
                sent = time.perf_counter()
                response = client.post(
                    f"{server.url}/api/account/{ACCOUNT}/csat/answers",
                    content=body,
                    headers=headers,
                )
                acknowledged.append(time.perf_counter() - sent)
                assert response.status_code == 200, response.text
            seconds = time.perf_counter() - started
            cpu = cpu_seconds(server.process.pid) - cpu
    finally:
        server.stop()
    return total / seconds, total / cpu, statistics.median(acknowledged) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", required=True)
    parser.add_argument("--answers", type=int, default=300_000)
    parser.add_argument("--preload", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--modes", default="store,http")
    parser.add_argument(
        "--accumulate",
        action="store_true",
        help="add these runs to the label's earlier ones (alternating rounds of two trees)",
    )
    args = parser.parse_args()
    preload, timed, bodies, total = ingest_workload(
        args.preload, args.answers, int(time.time() * 1000)
    )
    runs: dict[str, list[int]] = {mode: [] for mode in args.modes.split(",")}
    per_cpu: dict[str, list[int]] = {mode: [] for mode in runs}
    batch_ms: dict[str, list[float]] = {mode: [] for mode in runs}
    loads = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        for repetition in range(args.repeat):
            for mode, rates in runs.items():
                path = Path(tmp_dir) / f"{mode}-{repetition}.db"
                loads.append(os.getloadavg()[0])
                rate, rate_cpu, batch = (
                    store_rate(path, preload, timed)
                    if mode == "store"
                    else http_rate(path, preload, bodies, total)
                )
                rates.append(round(rate))
                per_cpu[mode].append(round(rate_cpu))
                batch_ms[mode].append(round(batch, 1))
                print(
                    f"{args.label} {mode:6} run {repetition + 1}: {rate:10,.0f} answers/s,"
                    f" {rate_cpu:10,.0f} per CPU second, a batch acknowledged in {batch:.1f} ms"
                    " (median)"
                )
    out = RESULTS / "sqlite_ingest.json"
    saved = orjson.loads(out.read_bytes()) if out.exists() else {}
    earlier = saved.get(args.label) if args.accumulate else None
    figures = {
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "preload": args.preload,
        "answers": total,
        "load_average_1min": [
            *(earlier or {}).get("load_average_1min", []),
            *(round(x, 2) for x in loads),
        ],
        **runs_and_medians({"": runs, "_per_cpu_s": per_cpu, "_batch_ms": batch_ms}, earlier),
    }
    for mode in runs:
        print(
            f"{args.label} {mode:6} median {figures[f'{mode}_median']:10,} answers/s,"
            f" {figures[f'{mode}_per_cpu_s_median']:10,} per CPU second"
            f" ({len(figures[f'{mode}_runs'])} runs)"
        )
    saved[args.label] = figures
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(saved, option=orjson.OPT_INDENT_2) + b"\n")


if __name__ == "__main__":
    os.environ.setdefault("CSATDIST_LOG_LEVEL", "warning")
    main()
