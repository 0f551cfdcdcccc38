"""The benchmark suite: datasets x stores, written to bench/results/ and docs/performance.md.

    .venv/bin/python bench/run.py --set quick     # make bench: small, and 100 of the tenants
    .venv/bin/python bench/run.py --set full      # make bench-full: small, large, tenants,
                                                  # and large+tenants (restarts only)
    .venv/bin/python bench/run.py --set full --datasets tenants,large+tenants  # a subset

For each dataset and store (SQLite, PostgreSQL) it measures: ingest through the service function
and over HTTP (NDJSON, batches of 5,000) on separate databases; each query shape over HTTP end to
end (p50/p99); the same shapes in-process against two same-run baselines — (a) the naive design
(raw answers, GROUP BY at query time, same store) and (b) the floor (orjson-serialising the
identical body); the server's RSS; and for ``tenants``, account-level throughput under load with
wrk, on the server that ingested and again with ``serve --workers 1`` and ``--workers 2`` in
alternating rounds (with the CPU seconds of the server, of wrk and of the whole machine, and the
load average). ``large+tenants`` (in ``--set full``) loads ``large`` and the 1,000 tenants into one
database per store and measures restarts on it: seconds to ``/readyz`` 200 and the first queries.
Nothing here asserts a duration.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from datasets import DATASETS, Dataset, account_ids, answers  # noqa: E402
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


#: The start-up warm-up of the busiest accounts (the default), and none.
WARM_UP_MODES: tuple[tuple[str, dict[str, str]], ...] = (
    ("warm_up", {}),
    ("no_warm_up", {"CSATDIST_WARM_UP_ACCOUNTS": "0"}),
)


def cold_start(url: str, tmp: Path, account: str | None, token: str | None) -> dict[str, Any]:
    """A restart of the server on the loaded database: seconds from the process's start to
    /readyz answering 200, and the first query of each shape after it; the same without the
    start-up warm-up (``CSATDIST_WARM_UP_ACCOUNTS=0``) for comparison."""
    first = {}
    if account is not None and token is not None:
        first = {shape: (account, token, params) for shape, params in SHAPES.items()}
    return {name: restart(url, tmp / f"cold-{name}.log", first, env) for name, env in WARM_UP_MODES}


def restart(
    url: str,
    log: Path,
    first: dict[str, tuple[str, str, dict[str, Any]]],
    env: dict[str, str],
) -> dict[str, Any]:
    """One start of ``csatdist serve`` (one worker) on a loaded database: seconds from the
    process's start to /healthz 200 (listening) and to /readyz 200, the warm-up's progress as
    /readyz reported it about once a second, then the very first query of each entry of
    ``first`` (label: account, token, query parameters) in order, one sample each, and the
    server's RSS after them. One HTTP client throughout (its connection kept alive), so the
    figures are the server's and not the making of a client."""
    client = httpx.Client(timeout=120)  # made before: making one takes 30-90 ms (TLS context)
    started = time.perf_counter()
    server = start_server(url, log, "--log-level", "warning", env=env)
    try:
        entry: dict[str, Any] = {"listening_s": round(time.perf_counter() - started, 2)}
        progress: list[list[float]] = []
        while True:
            response = client.get(server.url + "/readyz")
            elapsed = time.perf_counter() - started
            if response.status_code == 200:
                break
            body = response.json()
            if "loaded" in body and (not progress or elapsed - progress[-1][0] >= 1):
                progress.append([round(elapsed, 2), body["loaded"], body["of"]])
            time.sleep(0.02)
        entry["restart_to_ready_s"] = round(elapsed, 2)
        if progress:
            entry["warm_up_progress"] = progress  # [seconds, accounts loaded, of]
        if first:
            entry["first_query_ms"] = {}
            for label, (account, token, params) in first.items():
                began = time.perf_counter()
                response = client.get(
                    f"{server.url}/operations/api/account/{account}/msgcsatdistribution",
                    params={"v": 1, **params},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert response.status_code == 200, response.text
                entry["first_query_ms"][label] = round((time.perf_counter() - began) * 1000, 1)
        entry["rss_mb"] = rss_mb(server.process.pid)
        return entry
    finally:
        client.close()
        server.stop()


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


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def code_variants(given: list[str]) -> dict[str, str | None]:
    """``this`` (this checkout's code) and each ``NAME=SRC`` of ``--variant``: a source tree to
    put first on a server's ``PYTHONPATH`` (the code before a change, say)."""
    variants: dict[str, str | None] = {"this": None}
    variants.update(dict(v.split("=", 1) for v in given))
    return variants


def runs_and_medians(
    tables: dict[str, dict[str, list[Any]]], earlier: dict[str, Any] | None
) -> dict[str, Any]:
    """``{mode}{name}_runs`` and ``{mode}{name}_median`` of each ``tables[name][mode]`` (a
    name ending in ``_ms`` keeps a decimal), after ``earlier``'s runs of the same label: an
    ingest bench's figures, accumulated over alternating rounds of two code trees."""
    figures: dict[str, Any] = {}
    for name, table in tables.items():
        for mode, these in table.items():
            values = [*(earlier or {}).get(f"{mode}{name}_runs", []), *these]
            middle = statistics.median(values)
            figures[f"{mode}{name}_runs"] = values
            figures[f"{mode}{name}_median"] = (
                round(middle, 1) if name.endswith("_ms") else round(middle)
            )
    return figures


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return round(int(status.split("VmRSS:")[1].split()[0]) / 1024, 1)


def wrk_throughput(
    url: str,
    tokens: dict[str, str],
    seconds: int = 10,
    around: Callable[[], dict[str, Any]] | None = None,
    connections: int = 8,
    warm: bool = True,
) -> dict[str, Any]:
    """Requests/s and latency under wrk. ``around`` is called just before and just after the
    load; the differences of the numbers it returns are added to the result."""
    wrk = shutil.which("wrk")
    if not wrk:
        return {"skipped": "wrk is not installed (apt-get install wrk)"}
    with httpx.Client(timeout=60) as client:  # warm: each account's aggregate is loaded once
        for account, token in tokens.items() if warm else ():
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
        [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    after = around() if around is not None else {}
    script.unlink()
    result: dict[str, Any] = {"tool": f"wrk -t1 -c{connections}", "seconds": seconds}
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


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages, as ``uptime`` prints them."""
    return [round(value, 2) for value in os.getloadavg()]


def _processes() -> list[tuple[int, int, str, int]]:
    """(pid, parent pid, name, CPU ticks in user and kernel mode) of every process."""
    processes = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended meanwhile
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        processes.append(
            (int(stat.parent.name), int(fields[1]), name, int(fields[11]) + int(fields[12]))
        )
    return processes


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it: a ``serve --workers N`` supervisor and its
    workers."""
    children: dict[int, list[int]] = {}
    for child, parent, _, _ in _processes():
        children.setdefault(parent, []).append(child)
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def cpu_snapshot(server_pid: int) -> dict[str, float]:
    """CPU seconds so far: of the server's processes (and the time their main threads waited,
    runnable, for a CPU), of this script's children that have ended (wrk, once it has), of
    every ``postgres`` process (other users' work on the shared server included), and of the
    whole machine, busy and in all (summed over its CPUs)."""
    processes = _processes()
    tree = set(process_tree(server_pid))
    waited = 0
    for pid in tree:
        with contextlib.suppress(OSError):
            waited += int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1])
    jiffies = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "server_cpu_s": sum(t for pid, _, _, t in processes if pid in tree) / CLOCK_TICKS,
        "server_waited_for_cpu_s": waited / 1e9,
        "client_cpu_s": children.ru_utime + children.ru_stime,
        "postgres_cpu_s": sum(t for _, _, name, t in processes if name == "postgres") / CLOCK_TICKS,
        "machine_busy_s": (sum(jiffies) - jiffies[3] - jiffies[4]) / CLOCK_TICKS,
        "machine_s": sum(jiffies) / CLOCK_TICKS,
    }


def connections_per_process(url: str) -> list[int]:
    """Established connections to ``url``'s port per server process (``ss``), most first: how
    the supervisor spread a client's connections over the workers."""
    port = url.rsplit(":", 1)[1]
    if not shutil.which("ss"):
        return []
    listed = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"sport = :{port}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    owners = [line.split("pid=")[1].split(",")[0] for line in listed.splitlines() if "pid=" in line]
    return sorted((owners.count(pid) for pid in set(owners)), reverse=True)


def throughput_with_workers(
    url: str,
    tokens: dict[str, str],
    log: Path,
    workers: int,
    seconds: int,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``wrk_throughput`` against a new ``csatdist serve --workers N`` on ``url`` (with ``env``
    added to its environment), once every worker is warm, with where the CPU went during the
    timed run (``cpu_snapshot``): per request, and in cores (CPU seconds per second of the
    run)."""
    server = start_server(
        url,
        log,
        "--log-level",
        "warning",
        "--max-concurrent-requests-global",
        "1000",
        "--workers",
        str(workers),
        env=env,
    )
    tree = process_tree(server.process.pid)
    try:
        ready = 0  # each worker warms up on its own; a new connection may reach either
        while ready < 4 * workers:
            ok = httpx.get(server.url + "/readyz", timeout=30).status_code == 200
            ready = ready + 1 if ok else 0
            time.sleep(0.02)
        wrk_throughput(server.url, tokens, 3)  # untimed: every worker serves every account once
        tree = process_tree(server.process.pid)
        load = load_average()
        pid = server.process.pid
        spread: list[int] = []  # wrk's connections per worker, read once its load is on
        sampler = threading.Timer(
            min(2.0, seconds / 2), lambda: spread.extend(connections_per_process(server.url))
        )
        sampler.start()
        result = wrk_throughput(  # warm already: the spread is sampled while wrk runs
            server.url, tokens, seconds, lambda: cpu_snapshot(pid), warm=False
        )
        sampler.join()
        result["connections_per_worker"] = spread
        if "requests_per_s" not in result:
            return result
        result["workers"] = workers
        result["processes"] = len(tree)
        result["load_average_before"] = load
        result["load_average_after"] = load_average()
        rss = {p: rss_mb(p) for p in process_tree(pid)}
        result["rss_mb"] = round(sum(rss.values()), 1)
        result["rss_mb_per_worker"] = max(rss[p] for p in rss if p != pid or workers == 1)
        wall = result.pop("machine_s") / (os.cpu_count() or 1)
        requests = result["requests_per_s"] * seconds
        for name in ("server", "client", "postgres"):
            used = result.pop(f"{name}_cpu_s")
            result[f"{name}_cpu_ms_per_request"] = round(used * 1000 / requests, 3)
            result[f"{name}_cores"] = round(used / wall, 2)
        busy = result.pop("machine_busy_s") / wall
        result["machine_busy_cores"] = round(busy, 2)
        result["other_cores"] = round(
            busy - sum(result[f"{n}_cores"] for n in ("server", "client", "postgres")), 2
        )
        result["server_waited_for_cpu_s_per_s"] = round(
            result.pop("server_waited_for_cpu_s") / wall, 2
        )
        return result
    finally:
        server.stop()
        for leftover in tree[1:]:  # workers outliving their supervisor (none expected)
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGKILL)


def throughput_independent(
    url: str, tokens: dict[str, str], tmp: Path, backend: str, seconds: int
) -> dict[str, Any]:
    """Two servers of one worker each at once, sharing nothing two workers of one server share
    (no supervisor, no shared limits or caches; on SQLite each on its own copy of the database;
    PostgreSQL is one server either way), each under wrk with half of ``wrk_throughput``'s
    connections: what two processes of this server give on this machine when they share
    nothing, the floor for ``--workers 2``."""
    copy = tmp / "independent.db"
    if backend == "sqlite":
        for suffix in ("", "-wal"):  # the servers before have stopped: the WAL is checkpointed
            if Path(url.removeprefix("sqlite:///") + suffix).exists():
                shutil.copyfile(url.removeprefix("sqlite:///") + suffix, f"{copy}{suffix}")
    urls = [url, f"sqlite:///{copy}" if backend == "sqlite" else url]
    servers = [
        start_server(
            u,
            tmp / f"independent-{i}.log",
            "--log-level",
            "warning",
            "--max-concurrent-requests-global",
            "1000",
            "--workers",
            "1",
        )
        for i, u in enumerate(urls)
    ]
    try:
        for server in servers:
            while httpx.get(server.url + "/readyz", timeout=30).status_code != 200:
                time.sleep(0.02)
            wrk_throughput(server.url, tokens, 3)  # untimed: every account served once
        results: list[dict[str, Any]] = [{}, {}]

        def measure(index: int) -> None:
            pid = servers[index].process.pid
            results[index] = wrk_throughput(
                servers[index].url,
                tokens,
                seconds,
                lambda: {"server_cpu_s": cpu_snapshot(pid)["server_cpu_s"]},
                connections=4,
                warm=False,
            )

        load = load_average()
        threads = [threading.Thread(target=measure, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for server in servers:
            server.stop()
        if backend == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(f"{copy}{suffix}").unlink(missing_ok=True)
    served = sum(r["requests_per_s"] for r in results)
    return {
        "requests_per_s": round(served, 2),
        "each_requests_per_s": [r["requests_per_s"] for r in results],
        "p50_ms": [r.get("p50_ms") for r in results],
        "server_cpu_ms_per_request": round(
            sum(r["server_cpu_s"] for r in results) * 1000 / (served * seconds), 3
        ),
        "load_average_before": load,
    }


#: What ``workers_scaling`` gives the median of, over its rounds.
SCALING_FIELDS = (
    "requests_per_s",
    "p50_ms",
    "p99_ms",
    "server_cpu_ms_per_request",
    "client_cpu_ms_per_request",
    "postgres_cpu_ms_per_request",
    "server_cores",
    "client_cores",
    "postgres_cores",
    "other_cores",
    "machine_busy_cores",
    "server_waited_for_cpu_s_per_s",
    "rss_mb",
    "rss_mb_per_worker",
)


#: A process of pure Python for ``argv[1]`` seconds, printing how much work it did: dict,
#: string and integer operations, the interpreter's own kind of work, no I/O.
_PYTHON_LOOP = """
import sys, time
deadline = time.perf_counter() + float(sys.argv[1])
data = {str(i): i for i in range(64)}
done = 0
while time.perf_counter() < deadline:
    for _ in range(1000):
        total = sum(data.values())
        data[str(total)[-2:]] = total % 97
    done += 1
print(done)
"""


def python_scaling(seconds: float = 5.0) -> dict[str, Any]:
    """The work of one process of pure Python alone, and of two at once, on this machine: what
    two worker processes can give at most however little they share (two vCPUs of a virtual
    machine may share a physical core or its caches, and other guests take their turns)."""

    def work(processes: int) -> int:
        started = [
            subprocess.Popen(
                [sys.executable, "-c", _PYTHON_LOOP, str(seconds)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(processes)
        ]
        return sum(int(process.communicate()[0]) for process in started)

    one, two = work(1), work(2)
    return {"one": one, "two": two, "ratio": round(two / one, 2)}


def workers_scaling(
    url: str, tokens: dict[str, str], tmp: Path, backend: str, rounds: int, seconds: int = 10
) -> dict[str, Any]:
    """Account-level throughput with ``serve --workers 1`` and ``--workers 2`` on the same
    database and the same wrk load as ``wrk_throughput``, in ``rounds`` alternating rounds
    (1, 2 then 2, 1, ...) so that the machine's other load falls on both alike."""
    runs: dict[str, list[dict[str, Any]]] = {"1": [], "2": []}
    machine_ratios = []
    independent: list[dict[str, Any]] = []
    for number in range(rounds):
        machine_ratios.append(python_scaling()["ratio"])
        print(f"   two processes of pure Python / one: {machine_ratios[-1]}", flush=True)
        for workers in ("1", "2") if number % 2 == 0 else ("2", "1"):
            log = tmp / f"workers-{workers}.log"
            measured = throughput_with_workers(url, tokens, log, int(workers), seconds)
            if "requests_per_s" not in measured:
                return measured  # wrk is missing
            runs[workers].append(measured)
            print(f"   {workers} worker(s): {orjson.dumps(measured).decode()}", flush=True)
        independent.append(throughput_independent(url, tokens, tmp, backend, seconds))
        print(f"   two independent servers: {orjson.dumps(independent[-1]).decode()}", flush=True)
    return {
        "tool": f"wrk -t1 -c8 -d{seconds}s, the client on the same CPUs",
        "rounds": rounds,
        **scaling_summary(runs, backend),
        "python_ratio": statistics.median(machine_ratios),
        "python_ratio_per_round": machine_ratios,
        "independent_ratio": round(
            statistics.median(r["requests_per_s"] for r in independent)
            / statistics.median(r["requests_per_s"] for r in runs["1"]),
            2,
        ),
        "independent_ratio_per_round": [
            round(i["requests_per_s"] / one["requests_per_s"], 2)
            for i, one in zip(independent, runs["1"], strict=True)
        ],
        "independent_server_cpu_ms_per_request": statistics.median(
            r["server_cpu_ms_per_request"] for r in independent
        ),
        "independent": independent,
        "runs": runs,
    }


def scaling_summary(runs: dict[str, list[dict[str, Any]]], backend: str) -> dict[str, Any]:
    """Medians per worker count, the ratio of the requests/s (of the medians, and per round),
    and the ratio the CPU figures allow when nothing else runs (``ratio_ceiling``): one worker
    gets at most one core, or what wrk and PostgreSQL leave of the machine; two workers share
    every core with wrk and PostgreSQL (on SQLite, PostgreSQL's CPU is other users' work and
    does not count)."""
    median = {
        workers: {
            field: round(statistics.median(r[field] for r in results), 3)
            for field in SCALING_FIELDS
            if all(field in r for r in results)
        }
        for workers, results in runs.items()
    }
    one, two = median["1"], median["2"]
    cpus = os.cpu_count() or 1

    def beside(figures: dict[str, Any]) -> float:  # ms of CPU a request costs outside the server
        database = figures["postgres_cpu_ms_per_request"] if backend == "postgresql" else 0.0
        return float(figures["client_cpu_ms_per_request"] + database)

    one_max = min(
        1000 / one["server_cpu_ms_per_request"],
        cpus * 1000 / (one["server_cpu_ms_per_request"] + beside(one)),
    )
    two_max = cpus * 1000 / (two["server_cpu_ms_per_request"] + beside(two))
    return {
        "median": median,
        "ratio_2_to_1": round(two["requests_per_s"] / one["requests_per_s"], 2),
        "ratio_per_round": [
            round(b["requests_per_s"] / a["requests_per_s"], 2)
            for a, b in zip(runs["1"], runs["2"], strict=True)
        ],
        "ratio_ceiling": round(two_max / one_max, 2),
    }


def run_dataset(
    dataset: Dataset, backend: str, repeat: int, scaling_rounds: int = 3
) -> dict[str, Any]:
    now = int(time.time() * 1000)
    data = list(answers(dataset, now))
    result: dict[str, Any] = {"dataset": dataset.name, "backend": backend, "answers": dataset.total}
    result["load_average_start"] = load_average()
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
                # The writer's capacity, not an account's rate of answers (a policy).
                env={"CSATDIST_INGEST_ANSWERS_PER_SECOND": "0"},
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
            if dataset.accounts > 1 and scaling_rounds:
                result["throughput_workers"] = workers_scaling(
                    url, tokens, tmp, backend, scaling_rounds
                )
            single = data[0][0] if dataset.accounts == 1 else None
            result["cold_start"] = cold_start(
                url, tmp, single, tokens[single] if single is not None else None
            )
    result["load_average_end"] = load_average()
    return result


#: ``large`` and ``tenants`` in one database: the restart the issue sizes (``--set full``).
LARGE_TENANTS = "large+tenants"
#: The tenants whose first account-level query after a restart is measured.
TENANTS_QUERIED = ("t0000", "t0250", "t0500", "t0750", "t0999")


def run_large_tenants(backend: str, rounds: int) -> dict[str, Any]:
    """``large`` (one account, 1,000,000 answers) and ``tenants`` (1,000 accounts x 1,000) loaded
    through the service function into one database; then ``rounds`` restarts of ``serve`` (one
    worker) on it with the start-up warm-up and as many without, alternately (``restart``): the
    seconds to /readyz 200, then the first query of each shape on ``large``'s account and the
    first account-level query of a few tenants."""
    now = int(time.time() * 1000)
    result: dict[str, Any] = {"dataset": LARGE_TENANTS, "backend": backend}
    result["load_average_start"] = load_average()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        with database(backend, tmp, "combined") as url:
            result["ingest_direct"] = {}
            for name in ("large", "tenants"):
                data = list(answers(DATASETS[name], now))
                result["ingest_direct"][name] = ingest_direct(url, data)
                del data
            result["answers"] = sum(d.total for d in (DATASETS["large"], DATASETS["tenants"]))
            result["accounts"] = DATASETS["large"].accounts + DATASETS["tenants"].accounts
            if backend == "postgresql":
                result["vacuum_analyze_s"] = vacuum_analyze(url)
            large = account_ids(DATASETS["large"])[0]
            tokens = issue_tokens(url, [large, *TENANTS_QUERIED])
            first = {shape: (large, tokens[large], params) for shape, params in SHAPES.items()}
            for tenant in TENANTS_QUERIED:
                first[f"{tenant} account_60"] = (tenant, tokens[tenant], SHAPES["account_60"])
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in WARM_UP_MODES}
            for number in range(rounds):
                modes = WARM_UP_MODES if number % 2 == 0 else WARM_UP_MODES[::-1]
                for name, env in modes:
                    load = load_average()
                    entry = restart(url, tmp / f"restart-{name}.log", first, env)
                    entry["load_average_before"] = load
                    runs[name].append(entry)
                    print(f"   {name}: {orjson.dumps(entry).decode()[:300]}", flush=True)
    result["restart"] = {name: restart_summary(entries) for name, entries in runs.items()}
    result["restart_runs"] = runs
    result["load_average_end"] = load_average()
    return result


def restart_summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over restarts, and the range of the time to ready."""
    ready = [e["restart_to_ready_s"] for e in entries]
    summary: dict[str, Any] = {
        "restarts": len(entries),
        "listening_s": round(statistics.median(e["listening_s"] for e in entries), 2),
        "restart_to_ready_s": round(statistics.median(ready), 2),
        "restart_to_ready_s_range": [min(ready), max(ready)],
        "rss_mb": round(statistics.median(e["rss_mb"] for e in entries), 1),
    }
    warmed = [e["warm_up_progress"][-1][2] for e in entries if e.get("warm_up_progress")]
    if warmed:
        summary["warm_up_accounts"] = max(warmed)
    if entries[0].get("first_query_ms"):
        summary["first_query_ms"] = {
            label: round(statistics.median(e["first_query_ms"][label] for e in entries), 1)
            for label in entries[0]["first_query_ms"]
        }
    return summary


def vacuum_analyze(url: str) -> float:
    """``VACUUM ANALYZE`` of the tables of the URL's schema only (the server is shared), as a
    store that has been running for a while has statistics; seconds it took."""
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
        for (table,) in tables:
            conn.execute(f'VACUUM ANALYZE "{table}"'.encode())
    return round(time.perf_counter() - started, 1)


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


def kept_results(path: Path, measured: list[str]) -> dict[str, Any]:
    """The figures of the stores not measured this time from ``path``'s last run, so that a
    run on one store does not erase the other's."""
    if not path.exists():
        return {}
    earlier = orjson.loads(path.read_bytes())
    return {b: earlier[b] for b in ("sqlite", "postgresql") if b in earlier and b not in measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", choices=("quick", "full"), default="quick")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument(
        "--datasets",
        help="Comma-separated subset of the set's datasets, e.g. tenants or large+tenants.",
    )
    parser.add_argument(
        "--scaling-rounds",
        type=int,
        help="Rounds of 1 and 2 workers on the tenants (full: 3, quick: 1; 0 = none).",
    )
    parser.add_argument(
        "--restart-rounds", type=int, default=3, help="Restarts each way on large+tenants."
    )
    args = parser.parse_args()
    names = ["small", "tenants"] if args.set == "quick" else ["small", "large", "tenants"]
    if args.set == "full":
        names.append(LARGE_TENANTS)
    if args.datasets:
        names = [name for name in names if name in args.datasets.split(",")]
    if "tenants" in names and not shutil.which("wrk"):  # refuse before a skip overwrites data
        parser.error(
            "wrk is not installed (apt-get install wrk): the tenants' throughput would be "
            "recorded as skipped in place of the last figures"
        )
    scaling_rounds = args.scaling_rounds
    if scaling_rounds is None:
        scaling_rounds = 3 if args.set == "full" else 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    backends = args.backends.split(",")
    for name in names:
        result: dict[str, Any] = {"dataset": name, "machine": machine()}
        if name == LARGE_TENANTS:
            result.update(kept_results(RESULTS / f"{name}.json", backends))
            for backend in backends:
                print(f"== {name} on {backend}", flush=True)
                result[backend] = run_large_tenants(backend, args.restart_rounds)
            (RESULTS / f"{name}.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
            continue
        dataset = DATASETS[name]
        if args.set == "quick" and name == "tenants":
            dataset = Dataset(
                "tenants-100", 100, dataset.agents, dataset.skills, dataset.answers_per_account
            )
        result["dataset"] = dataset.name
        result.update(kept_results(RESULTS / f"{dataset.name}.json", backends))
        for backend in backends:
            print(f"== {dataset.name} on {backend}", flush=True)
            result[backend] = run_dataset(dataset, backend, args.repeat, scaling_rounds)
            print(orjson.dumps(result[backend]).decode()[:400], flush=True)
        (RESULTS / f"{dataset.name}.json").write_bytes(
            orjson.dumps(result, option=orjson.OPT_INDENT_2)
        )
        if any("http_queries" in result.get(b, {}) for b in ("sqlite", "postgresql")):
            plot(result, RESULTS / f"{dataset.name}.png")
    subprocess.run([sys.executable, str(ROOT / "bench" / "report.py")], check=True)


if __name__ == "__main__":
    main()
