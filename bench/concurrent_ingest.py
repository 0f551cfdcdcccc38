"""Many accounts ingesting small batches at once, over HTTP: what the single SQLite writer gives
them (each batch durable before its reply), this code against the code in other source trees,
in alternating rounds on one database.

    .venv/bin/python bench/concurrent_ingest.py                    # this code
    git archive <commit> src | tar -x -C /tmp/before
    .venv/bin/python bench/concurrent_ingest.py --variant before=/tmp/before/src

Each round starts ``csatdist serve --workers 1`` on SQLite once per variant, in turn (``this``:
this checkout's code; ``NAME=SRC`` puts SRC first on the server's ``PYTHONPATH``), then
``--clients`` clients, each with its own account and key and one kept-alive connection, post
batches of ``--batch`` new answers one after another for ``--seconds``. Reported per variant:
answers and requests per second, and the latency of a batch's reply (p50 / p99 over every
round), with the 1-minute load average before each round. Writes
bench/results/concurrent_ingest.json. Nothing here asserts a duration.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from bench.run import (  # noqa: E402
    RESULTS,
    code_variants,
    issue_tokens,
    load_average,
    percentiles,
)
from tests.helpers import start_server  # noqa: E402


def one_round(
    url: str, tokens: dict[str, str], src: str | None, args: argparse.Namespace, log: Path
) -> dict[str, Any]:
    """Replies' latencies (ms) and counts from one server under every client at once."""
    # The writer's behaviour under many writers, not an account's rate of answers (a policy).
    env = {"CSATDIST_INGEST_ANSWERS_PER_SECOND": "0", **({"PYTHONPATH": src} if src else {})}
    server = start_server(url, log, "--log-level", "warning", env=env)
    latencies: list[list[float]] = [[] for _ in tokens]
    stop = threading.Event()
    failures: list[str] = []

    def client(number: int, account: str, token: str) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            sent = 0
            while not stop.is_set():
                answers = [
                    {
                        "id": f"{account}-{time.time_ns()}-{sent + i}",
                        "time": int(time.time() * 1000) - 60_000,
                        "skillId": 1 + i % 5,
                        "agentId": 1 + i % 20,
                        "score": 1 + i % 5,
                    }
                    for i in range(args.batch)
                ]
                sent += args.batch
                started = time.perf_counter()
                reply = http.post(
                    f"/api/account/{account}/csat/answers",
                    json={"answers": answers},
                    headers={"Authorization": f"Bearer {token}"},
                )
                if reply.status_code != 200:
                    failures.append(f"{reply.status_code} {reply.text[:200]}")
                    return
                latencies[number].append((time.perf_counter() - started) * 1000)

    threads = [
        threading.Thread(target=client, args=(n, account, token))
        for n, (account, token) in enumerate(tokens.items())
    ]
    try:
        for thread in threads:
            thread.start()
        time.sleep(args.seconds)
        stop.set()
        for thread in threads:
            thread.join(60)
    finally:
        server.stop()
    if failures:
        raise SystemExit(f"a client was refused: {failures[0]}")
    replies = [ms for each in latencies for ms in each]
    return {
        "replies": len(replies),
        "requests_per_s": round(len(replies) / args.seconds, 1),
        "answers_per_s": round(len(replies) * args.batch / args.seconds, 1),
        "latencies_ms": replies,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=SRC")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--clients", type=int, default=8, help="at most the global ingest limit (8)"
    )
    parser.add_argument("--batch", type=int, default=10, help="answers per request")
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    variants = code_variants(args.variant)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        url = f"sqlite:///{tmp / 'concurrent.db'}"
        tokens = issue_tokens(url, [f"c{n:03}" for n in range(args.clients)])
        names = list(variants)
        for number in range(args.rounds):
            for name in names if number % 2 == 0 else names[::-1]:
                load = load_average()
                measured = one_round(url, tokens, variants[name], args, tmp / f"{name}.log")
                runs[name].append({"load_average": load, **measured})
                print(
                    name,
                    load,
                    measured["requests_per_s"],
                    "requests/s",
                    percentiles(measured["latencies_ms"]),
                    flush=True,
                )
    summary = {
        name: {
            "requests_per_s": [r["requests_per_s"] for r in measured],
            "answers_per_s": [r["answers_per_s"] for r in measured],
            **percentiles([ms for r in measured for ms in r["latencies_ms"]]),
        }
        for name, measured in runs.items()
    }
    print(json.dumps(summary, indent=1))
    output = {
        "clients": args.clients,
        "batch": args.batch,
        "seconds": args.seconds,
        "variants": variants,
        "summary": summary,
        "load_averages": {name: [r["load_average"] for r in m] for name, m in runs.items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "concurrent_ingest.json").write_text(json.dumps(output, indent=2) + "\n")


if __name__ == "__main__":
    main()
