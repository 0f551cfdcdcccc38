"""Ingest throughput and query latency on a generated 24-hour dataset, per store backend.

    .venv/bin/python bench/ingest_query.py [--answers 200000] [--backends sqlite,postgresql]
                                           [--out bench/results/ingest_query.json]

Each backend gets the same seeded dataset: ingested directly through the service function, then
again over HTTP (NDJSON, batches of 5,000) into a real ``csatdist serve``, which then answers
every query shape 200 times.

Prints the figures and writes them as JSON. Medians and p99 over repeated requests; nothing here
asserts a duration.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import create_key, postgres_schema, start_server  # noqa: E402

from csatdist import __version__  # noqa: E402
from csatdist.service import ingest_answers  # noqa: E402
from csatdist.store import open_store  # noqa: E402

BATCH = 5000


def dataset(count: int, now_ms: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    agents = list(range(1, 201))
    weights = [1 / (rank + 1) for rank in range(len(agents))]  # Zipf-like activity
    skills_of = {a: rng.sample(range(1, 21), 3) for a in agents}
    answers = []
    for i in range(count):
        agent = rng.choices(agents, weights)[0]
        answers.append(
            {
                "id": f"b-{i}",
                "time": now_ms - rng.randrange(0, 24 * 3600 * 1000),
                "skillId": rng.choice(skills_of[agent]),
                "agentId": agent,
                "score": rng.choices((5, 4, 3, 2, 1), (55, 20, 10, 5, 10))[0],
            }
        )
    return answers


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.contextmanager
def database(backend: str, tmp: Path, name: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp / (name + '.db')}"
    else:
        with postgres_schema() as url:
            yield url


def bench_direct(answers: list[dict[str, Any]], url: str) -> float:
    store = open_store(url)
    started = time.perf_counter()
    for start in range(0, len(answers), BATCH):
        batch = answers[start : start + BATCH]
        ingest_answers(store, "bench", enumerate(batch), int(time.time() * 1000), 1445)
    elapsed = time.perf_counter() - started
    store.close()
    return len(answers) / elapsed


def bench_http(answers: list[dict[str, Any]], url: str, tmp: Path) -> tuple[float, dict[str, Any]]:
    token = create_key(url, "bench", "read,write")
    server = start_server(url, tmp / "server.log", "--log-level", "warning")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"}
    bodies = [
        b"\n".join(orjson.dumps(a) for a in answers[s : s + BATCH])
        for s in range(0, len(answers), BATCH)
    ]
    try:
        with httpx.Client(timeout=60) as client:
            started = time.perf_counter()
            for body in bodies:
                response = client.post(
                    f"{server.url}/api/account/bench/csat/answers", content=body, headers=headers
                )
                assert response.status_code == 200, response.text
            rate = len(answers) / (time.perf_counter() - started)
            latencies = bench_queries(client, server.url, token)
        rss_kb = int(
            Path(f"/proc/{server.process.pid}/status").read_text().split("VmRSS:")[1].split()[0]
        )
        latencies["server_rss_mb"] = round(rss_kb / 1024, 1)
    finally:
        server.stop()
    return rate, latencies


QUERIES = {
    "account_60": {"timeframe": 60},
    "account_1440": {"timeframe": 1440},
    "agents_all_60": {"timeframe": 60, "agentIds": "all"},
    "agents_all_1440": {"timeframe": 1440, "agentIds": "all"},
    "skills_all_1440": {"timeframe": 1440, "skillIds": "all"},
    "both_all_1440": {"timeframe": 1440, "skillIds": "all", "agentIds": "all"},
    "agents_10_1440": {"timeframe": 1440, "agentIds": ",".join(map(str, range(1, 11)))},
    "interval_60_1440": {"timeframe": 1440, "interval": 60},
}


def bench_queries(client: httpx.Client, url: str, token: str, repeat: int = 200) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, params in QUERIES.items():
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(
                f"{url}/operations/api/account/bench/msgcsatdistribution",
                params={"v": 1, **params},
                headers={"Authorization": f"Bearer {token}"},
            )
            samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
        results[name] = {
            "p50_ms": round(statistics.median(samples), 2),
            "p99_ms": round(percentile(samples, 0.99), 2),
            "samples": repeat,
            "bytes": len(response.content),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--answers", type=int, default=200_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/ingest_query.json")
    args = parser.parse_args()
    answers = dataset(args.answers, int(time.time() * 1000))
    backends: dict[str, Any] = {}
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            with database(backend, tmp, "direct") as url:
                direct = bench_direct(answers, url)
            with database(backend, tmp, "http") as url:
                http_rate, queries = bench_http(answers, url, tmp)
        backends[backend] = {
            "ingest_direct_answers_per_s": round(direct),
            "ingest_http_ndjson_answers_per_s": round(http_rate),
            "queries": queries,
        }
        print(backend, orjson.dumps(backends[backend]).decode(), flush=True)
    result = {
        "csatdist": __version__,
        "python": platform.python_version(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "sqlite": sqlite3.sqlite_version,
        "answers": args.answers,
        "backends": backends,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
