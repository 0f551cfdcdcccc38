"""The benchmark suite: datasets x stores, written to bench/results/ and docs/performance.md.

    .venv/bin/python bench/run.py --set quick     # make bench: small, and 100 of the tenants
    .venv/bin/python bench/run.py --set full      # make bench-full: small, large, tenants

For each dataset and store (SQLite, PostgreSQL) it measures: ingest through the service function
and over HTTP (NDJSON, batches of 5,000) on separate databases; each query shape over HTTP end to
end (p50/p99); the same shapes in-process against two same-run baselines — (a) the naive design
(raw answers, GROUP BY at query time, same store) and (b) the floor (orjson-serialising the
identical body); the server's RSS; and for ``tenants``, account-level throughput under load with
wrk. Nothing here asserts a duration.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from datasets import DATASETS, Dataset, answers  # noqa: E402
from naive import NaiveStore  # noqa: E402
from tests.helpers import postgres_schema, start_server  # noqa: E402

from csatdist import __version__  # noqa: E402
from csatdist.aggregates import AggregateCache  # noqa: E402
from csatdist.answers import AcceptanceWindow, validate_all  # noqa: E402
from csatdist.keys import issue_key  # noqa: E402
from csatdist.memo import ResponseMemo  # noqa: E402
from csatdist.query import parse_query  # noqa: E402
from csatdist.service import ingest_answers, query_distribution, render_distribution  # noqa: E402
from csatdist.store import open_store  # noqa: E402

RESULTS = ROOT / "bench" / "results"
BATCH = 5000
SHAPES: dict[str, dict[str, Any]] = {}
for minutes in (60, 1440):
    SHAPES[f"account_{minutes}"] = {"timeframe": minutes}
    SHAPES[f"agents_all_{minutes}"] = {"timeframe": minutes, "agentIds": "all"}
    SHAPES[f"skills_all_{minutes}"] = {"timeframe": minutes, "skillIds": "all"}
    SHAPES[f"both_all_{minutes}"] = {"timeframe": minutes, "skillIds": "all", "agentIds": "all"}
    SHAPES[f"agents_10_{minutes}"] = {"timeframe": minutes, "agentIds": "1,2,3,4,5,6,7,8,9,10"}
SHAPES["interval_60_at_1440"] = {"timeframe": 1440, "interval": 60}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
        "samples": len(ordered),
    }


def timed(
    work: Callable[[], object], repeat: int, before: Callable[[], object] | None = None
) -> list[float]:
    """Milliseconds per call of ``work``; ``before`` runs untimed ahead of each call."""
    samples = []
    for _ in range(repeat):
        if before is not None:
            before()
        started = time.perf_counter()
        work()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


@contextlib.contextmanager
def database(backend: str, tmp: Path, name: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp / (name + '.db')}"
    else:
        with postgres_schema() as url:
            yield url


def ingest_direct(url: str, data: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    store = open_store(url)
    total = sum(len(a) for _, a in data)
    started = time.perf_counter()
    for account, rows in data:
        for start in range(0, len(rows), BATCH):
            batch = enumerate(rows[start : start + BATCH])
            ingest_answers(store, account, batch, int(time.time() * 1000), 1445)
    elapsed = time.perf_counter() - started
    store.close()
    return {"answers": total, "seconds": round(elapsed, 2), "answers_per_s": round(total / elapsed)}


def issue_tokens(url: str, accounts: list[str]) -> dict[str, str]:
    store = open_store(url)
    tokens = {}
    for account in accounts:
        issued = issue_key(account, frozenset({"read", "write"}), "bench", 0)
        store.add_key(issued.key)
        tokens[account] = issued.token
    store.close()
    return tokens


def ingest_http(
    url: str, tokens: dict[str, str], data: list[tuple[str, list[dict[str, Any]]]]
) -> dict[str, Any]:
    total = sum(len(a) for _, a in data)
    bodies = [
        (account, b"\n".join(orjson.dumps(a) for a in rows[s : s + BATCH]))
        for account, rows in data
        for s in range(0, len(rows), BATCH)
    ]
    with httpx.Client(timeout=120) as client:
        started = time.perf_counter()
        for account, body in bodies:
            response = client.post(
                f"{url}/api/account/{account}/csat/answers",
                content=body,
                headers={
                    "Authorization": f"Bearer {tokens[account]}",
                    "Content-Type": "application/x-ndjson",
                },
            )
            assert response.status_code == 200, response.text
        elapsed = time.perf_counter() - started
    return {"answers": total, "seconds": round(elapsed, 2), "answers_per_s": round(total / elapsed)}


def http_queries(
    url: str, account: str, token: str, repeat: int, *, changed: bool = False
) -> dict[str, Any]:
    """p50/p99 of each shape over HTTP. ``changed``: one new answer is acknowledged (over HTTP,
    untimed) before every timed query, so no response can be reused — the cold path, and what a
    dashboard sees on a busy account; otherwise queries repeat on unchanged data (the rendered
    response is reused, as for a wall of dashboards between two answers)."""
    results = {}
    headers = {"Authorization": f"Bearer {token}"}
    answers = iter(range(10**9))
    with httpx.Client(timeout=120) as client:

        def new_answer() -> None:
            number = next(answers)
            response = client.post(
                f"{url}/api/account/{account}/csat/answers",
                json={
                    "answers": [
                        {
                            "id": f"bench-change-{number}",
                            "time": int(time.time() * 1000),
                            "skillId": 1 + number % 5,
                            "agentId": 1 + number % 20,
                            "score": 1 + number % 5,
                        }
                    ]
                },
                headers=headers,
            )
            assert response.status_code == 200, response.text

        for name, params in SHAPES.items():
            target = f"{url}/operations/api/account/{account}/msgcsatdistribution"
            client.get(target, params={"v": 1, **params}, headers=headers)  # warm

            def one(target: str = target, params: dict[str, Any] = params) -> None:
                response = client.get(target, params={"v": 1, **params}, headers=headers)
                assert response.status_code == 200

            results[name] = percentiles(timed(one, repeat, before=new_answer if changed else None))
    return results


def cold_start(url: str, tmp: Path, account: str | None, token: str | None) -> dict[str, Any]:
    """A restart of the server on the loaded database: seconds from the process's start to
    /readyz answering 200, and the first query of each shape after it; the same without the
    start-up warm-up (``CSATDIST_WARM_UP_ACCOUNTS=0``) for comparison."""
    results: dict[str, Any] = {}
    for name, env in (("warm_up", {}), ("no_warm_up", {"CSATDIST_WARM_UP_ACCOUNTS": "0"})):
        started = time.perf_counter()
        server = start_server(url, tmp / f"cold-{name}.log", "--log-level", "warning", env=env)
        try:
            while httpx.get(server.url + "/readyz", timeout=30).status_code != 200:
                time.sleep(0.02)
            entry: dict[str, Any] = {"restart_to_ready_s": round(time.perf_counter() - started, 2)}
            if account is not None and token is not None:
                headers = {"Authorization": f"Bearer {token}"}
                first = {}
                for shape, params in SHAPES.items():  # each shape's very first query
                    began = time.perf_counter()
                    response = httpx.get(
                        f"{server.url}/operations/api/account/{account}/msgcsatdistribution",
                        params={"v": 1, **params},
                        headers=headers,
                        timeout=120,
                    )
                    assert response.status_code == 200, response.text
                    first[shape] = round((time.perf_counter() - began) * 1000, 1)
                entry["first_query_ms"] = first
            entry["rss_mb"] = rss_mb(server.process.pid)
            results[name] = entry
        finally:
            server.stop()
    return results


def in_process(
    url: str, account: str, data: list[dict[str, Any]], repeat: int, naive_repeat: int
) -> dict[str, Any]:
    """Ours (aggregates) vs (a) naive GROUP BY over raw answers vs (b) serialising only."""
    store = open_store(url)
    cache = AggregateCache(store)
    no_memo = ResponseMemo(0)
    naive = NaiveStore(url)
    now = int(time.time() * 1000)
    valid, _ = validate_all(enumerate(data), AcceptanceWindow(now, 1445))
    naive.load(account, valid)
    results = {}
    for name, params in SHAPES.items():
        query = parse_query({"v": "1", **{k: str(v) for k, v in params.items()}})
        ours = query_distribution(cache, account, query, now)
        baseline = query_distribution(naive, account, query, now)
        assert ours.body == baseline.body, f"{name}: the naive baseline disagrees"
        rendered = render_distribution(cache, no_memo, account, query, now).data
        assert rendered == orjson.dumps(baseline.body), f"{name}: the rendered body disagrees"
        body = ours.body
        # The server's own path, with nothing reused: sums, assembly, JSON and ETag.
        ours_ms = timed(
            lambda q=query: render_distribution(cache, no_memo, account, q, now), repeat
        )
        naive_ms = timed(
            lambda q=query: orjson.dumps(query_distribution(naive, account, q, now).body),
            naive_repeat,
        )
        floor_ms = timed(lambda b=body: orjson.dumps(b), repeat)
        ours_p50 = statistics.median(ours_ms)
        results[name] = {
            "ours": percentiles(ours_ms),
            "naive": percentiles(naive_ms),
            "floor": percentiles(floor_ms),
            "speedup_over_naive": round(statistics.median(naive_ms) / ours_p50, 1),
            "times_floor": round(ours_p50 / max(statistics.median(floor_ms), 1e-6), 1),
            "body_bytes": len(orjson.dumps(body)),
        }
    naive.close()
    store.close()
    return results


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return round(int(status.split("VmRSS:")[1].split()[0]) / 1024, 1)


def wrk_throughput(
    url: str,
    tokens: dict[str, str],
    seconds: int = 10,
    around: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Requests/s and latency under wrk. ``around`` is called just before and just after the
    load; the differences of the numbers it returns are added to the result."""
    wrk = shutil.which("wrk")
    if not wrk:
        return {"skipped": "wrk is not installed (apt-get install wrk)"}
    with httpx.Client(timeout=60) as client:  # warm: each account's aggregate is loaded once
        for account, token in tokens.items():
            client.get(
                f"{url}/operations/api/account/{account}/msgcsatdistribution",
                params={"v": 1, "timeframe": 60},
                headers={"Authorization": f"Bearer {token}"},
            )
    accounts = list(tokens)
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(
        "local paths = {"
        + ",".join(
            f'"/operations/api/account/{a}/msgcsatdistribution?v=1&timeframe=60"' for a in accounts
        )
        + "}\nlocal tokens = {"
        + ",".join(f'"Bearer {tokens[a]}"' for a in accounts)
        + "}\n"
        "request = function()\n  local i = math.random(#paths)\n"
        '  return wrk.format("GET", paths[i], {["Authorization"] = tokens[i]})\nend\n'
    )
    before = around() if around is not None else {}
    output = subprocess.run(
        [wrk, "-t1", "-c8", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    after = around() if around is not None else {}
    script.unlink()
    result: dict[str, Any] = {"tool": "wrk -t1 -c8", "seconds": seconds}
    result.update({name: after[name] - before[name] for name in after})
    for line in output.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            result["requests_per_s"] = float(parts[1])
        elif parts[:1] in (["50%"], ["99%"]):
            result[f"p{parts[0][:-1]}_ms"] = _ms(parts[1])
        elif "Non-2xx" in line:
            result["non_2xx"] = int(parts[-1])
    return result


def _ms(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return round(float(text[: -len(unit)]) * factor, 3)
    return float(text)


def run_dataset(dataset: Dataset, backend: str, repeat: int) -> dict[str, Any]:
    now = int(time.time() * 1000)
    data = list(answers(dataset, now))
    result: dict[str, Any] = {"dataset": dataset.name, "backend": backend, "answers": dataset.total}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        with database(backend, tmp, "direct") as url:
            result["ingest_direct"] = ingest_direct(url, data)
            if dataset.accounts == 1:
                naive_repeat = 5 if dataset.total > 100_000 else repeat
                result["in_process"] = in_process(url, data[0][0], data[0][1], repeat, naive_repeat)
        with database(backend, tmp, "http") as url:
            tokens = issue_tokens(url, [a for a, _ in data])
            server = start_server(
                url,
                tmp / "server.log",
                "--log-level",
                "warning",
                "--max-concurrent-requests-global",
                "1000",
            )
            try:
                result["ingest_http_ndjson"] = ingest_http(server.url, tokens, data)
                if dataset.accounts == 1:
                    account = data[0][0]
                    result["http_queries"] = http_queries(
                        server.url, account, tokens[account], repeat
                    )
                    result["http_queries_after_change"] = http_queries(
                        server.url, account, tokens[account], repeat, changed=True
                    )
                else:
                    result["throughput_account_level"] = wrk_throughput(server.url, tokens)
                result["server_rss_mb"] = rss_mb(server.process.pid)
            finally:
                server.stop()
            single = data[0][0] if dataset.accounts == 1 else None
            result["cold_start"] = cold_start(
                url, tmp, single, tokens[single] if single is not None else None
            )
    return result


def machine() -> dict[str, Any]:
    return {
        "csatdist": __version__,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(11, 4.5))
    names = list(SHAPES)
    series = [
        (backend, kind, label)
        for backend in ("sqlite", "postgresql")
        for kind, label in (("http_queries", "unchanged"), ("http_queries_after_change", "changed"))
        if result.get(backend, {}).get(kind)
    ]
    width = 0.8 / max(1, len(series))
    for offset, (backend, kind, label) in enumerate(series):
        runs = result[backend][kind]
        positions = [i - 0.4 + (offset + 0.5) * width for i in range(len(names))]
        axis.bar(
            positions, [runs[n]["p50_ms"] for n in names], width, label=f"{backend} {label} p50"
        )
        axis.scatter(positions, [runs[n]["p99_ms"] for n in names], s=8, color="black")
    axis.set_yscale("log")
    axis.set_ylabel("ms, HTTP end to end (log); dots: p99")
    axis.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    axis.set_title(f"csatdist query latency — dataset {result['dataset']}")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", choices=("quick", "full"), default="quick")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument(
        "--datasets", help="Comma-separated subset of the set's datasets, e.g. tenants."
    )
    args = parser.parse_args()
    names = ["small", "tenants"] if args.set == "quick" else ["small", "large", "tenants"]
    if args.datasets:
        names = [name for name in names if name in args.datasets.split(",")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in names:
        dataset = DATASETS[name]
        if args.set == "quick" and name == "tenants":
            dataset = Dataset(
                "tenants-100", 100, dataset.agents, dataset.skills, dataset.answers_per_account
            )
        result: dict[str, Any] = {"dataset": dataset.name, "machine": machine()}
        for backend in args.backends.split(","):
            print(f"== {dataset.name} on {backend}", flush=True)
            result[backend] = run_dataset(dataset, backend, args.repeat)
            print(orjson.dumps(result[backend]).decode()[:400], flush=True)
        (RESULTS / f"{dataset.name}.json").write_bytes(
            orjson.dumps(result, option=orjson.OPT_INDENT_2)
        )
        if any("http_queries" in result.get(b, {}) for b in ("sqlite", "postgresql")):
            plot(result, RESULTS / f"{dataset.name}.png")
    subprocess.run([sys.executable, str(ROOT / "bench" / "report.py")], check=True)


if __name__ == "__main__":
    main()
