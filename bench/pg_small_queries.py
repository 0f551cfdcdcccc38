"""Small account-level queries on PostgreSQL under load: before and after, in one run.

    .venv/bin/python bench/pg_small_queries.py [--baseline main] [--rounds 3] [--seconds 10]

Seeds the ``tenants`` dataset (1,000 accounts x 1,000 answers) once into a new PostgreSQL
schema, then, round after round, starts ``csatdist serve`` (one worker) from the ``--baseline``
commit's sources (``git archive``) and from this tree's, alternately, and drives each with the
same wrk load as ``bench/run.py`` (``wrk -t1 -c8``, a random account per request, 60-minute
account-level query). Medians over the rounds, with the 1-minute load average before each
measurement, the server's CPU time per request and how long its event loop waited for a CPU
(the machine's other load), go to bench/results/pg_small_queries.json. The schema is dropped
afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from datasets import DATASETS, answers  # noqa: E402
from run import RESULTS, ingest_direct, issue_tokens, machine, wrk_throughput  # noqa: E402
from tests.helpers import postgres_schema, start_server  # noqa: E402


def baseline_sources(ref: str, into: Path) -> Path:
    """The ``src`` directory of commit ``ref``, exported (no work tree needed)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def process_times(pid: int) -> dict[str, Any]:
    """CPU seconds of the server process, and of its event loop's thread the seconds it ran and
    the seconds it waited for a CPU (runnable, not running: the machine's other load)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ran, waited = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[:2]
    return {
        "server_cpu_s": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
        "loop_ran_s": int(ran) / 1e9,
        "loop_waited_for_cpu_s": int(waited) / 1e9,
    }


def measure(url: str, sources: Path, tokens: dict[str, str], seconds: int, log: Path) -> Any:
    server = start_server(
        url,
        log,
        "--log-level",
        "warning",
        "--max-concurrent-requests-global",
        "1000",
        env={"PYTHONPATH": str(sources)},
    )
    try:
        load = os.getloadavg()[0]
        pid = server.process.pid
        result = wrk_throughput(server.url, tokens, seconds, lambda: process_times(pid))
        result["load_average_1m_before"] = round(load, 2)
        requests = result["requests_per_s"] * seconds
        result["server_cpu_ms_per_request"] = round(result.pop("server_cpu_s") * 1000 / requests, 3)
        for name in ("loop_ran_s", "loop_waited_for_cpu_s"):
            result[name] = round(result[name], 2)
        return result
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", default="main", help="commit to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    dataset = DATASETS["tenants"]
    data = list(answers(dataset, int(time.time() * 1000)))
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp_dir, postgres_schema() as url:
        tmp = Path(tmp_dir)
        variants = {"before": baseline_sources(args.baseline, tmp), "after": ROOT / "src"}
        seeded = ingest_direct(url, data)
        print(f"seeded {seeded}", flush=True)
        tokens = issue_tokens(url, [a for a, _ in data])
        for number in range(args.rounds):
            order = ["before", "after"] if number % 2 == 0 else ["after", "before"]
            for name in order:
                result = measure(url, variants[name], tokens, args.seconds, tmp / "server.log")
                runs[name].append(result)
                print(name, orjson.dumps(result).decode(), flush=True)
    summary: dict[str, Any] = {}
    for name, results in runs.items():
        summary[name] = {
            field: statistics.median(r[field] for r in results)
            for field in (
                "requests_per_s",
                "p50_ms",
                "p99_ms",
                "server_cpu_ms_per_request",
                "loop_waited_for_cpu_s",
                "load_average_1m_before",
            )
            if all(field in r for r in results)
        }
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    document = {
        "workload": "tenants on PostgreSQL: wrk -t1 -c8, random account, timeframe=60",
        "machine": machine(),
        "baseline": args.baseline,
        "after": f"{commit} (work tree)",
        "rounds": args.rounds,
        "median": summary,
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pg_small_queries.json").write_bytes(
        orjson.dumps(document, option=orjson.OPT_INDENT_2)
    )
    print(orjson.dumps(summary).decode())


if __name__ == "__main__":
    main()
