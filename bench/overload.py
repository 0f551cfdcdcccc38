"""Overload: 20x the concurrency limit on one account for 30 s, against a real `csatdist serve`.

    .venv/bin/python bench/overload.py [--seconds 30] [--limit 10] [--factor 20]

Phases, on one server (SQLite, the seeded `small` dataset):
1. baseline: `limit` clients in a closed loop for 10 s — the latency admitted queries have when
   nobody is refused;
2. overload: `limit * factor` clients for `--seconds`: how fast 429s come back, whether admitted
   queries keep their latency, and that the server stays up (no errors, no 5xx);
3. recovery: memory (RSS) and open file descriptors before, at the peak and 5 s after.

The server computes every response afresh (``CSATDIST_RESPONSE_CACHE_MB=0``), as for a busy
account whose answers change between any two queries: the case the concurrency limit exists for.
With responses reused, this repeated query never reaches the limit (it is answered without a
worker thread), and the overload is only a queue in front of the server.

The load generator is a small asyncio HTTP/1.1 client (keep-alive, one connection per client),
light enough to leave the server most of the CPU; its own CPU time is reported so its share is
visible. Writes bench/results/overload.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.datasets import DATASETS, answers  # noqa: E402
from bench.run import RESULTS, issue_tokens, machine, percentiles  # noqa: E402
from tests.helpers import start_server  # noqa: E402

from csatdist.service import ingest_answers  # noqa: E402
from csatdist.store import open_store  # noqa: E402

#: The server's worker-thread pool (anyio's default for FastAPI/Starlette).
WORKER_THREADS = 40


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Recorder:
    def __init__(self) -> None:
        self.latencies: dict[int, list[float]] = {}
        self.errors = 0

    def add(self, status: int, seconds: float) -> None:
        self.latencies.setdefault(status, []).append(seconds * 1000)

    def summary(self, seconds: float) -> dict[str, Any]:
        by_status = {
            str(status): {"count": len(values), **percentiles(values)}
            for status, values in sorted(self.latencies.items())
        }
        total = sum(len(v) for v in self.latencies.values())
        return {
            "requests": total,
            "requests_per_s": round(total / seconds),
            "errors": self.errors,
            "by_status": by_status,
        }


async def client(
    host: str, port: int, request: bytes, until: float, recorder: Recorder, polite: bool
) -> None:
    """One keep-alive connection sending the same GET in a closed loop until ``until``; a
    ``polite`` client waits as long as Retry-After asks after a 429, an abusive one does not."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < until:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            recorder.add(status, time.perf_counter() - started)
            if polite and status == 429:
                await asyncio.sleep(_retry_after(head))
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    except (OSError, asyncio.IncompleteReadError):
        recorder.errors += 1
    finally:
        writer.close()


def _retry_after(head: bytes) -> float:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"retry-after:"):
            return float(line.split(b":", 1)[1])
    return 1.0


async def phase(
    url: str, token: str, clients: int, seconds: float, polite: bool = False
) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    request = (
        "GET /operations/api/account/bench/msgcsatdistribution?v=1&timeframe=1440&skillIds=all"
        f" HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    recorder = Recorder()
    until = time.monotonic() + seconds
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(
        *(client(host, int(port), request, until, recorder, polite) for _ in range(clients))
    )
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    used = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {
        "clients": clients,
        "clients_honour_retry_after": polite,
        "seconds": seconds,
        **recorder.summary(seconds),
        "load_generator_cpu_share": round(used / seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--factor", type=int, default=20)
    args = parser.parse_args()
    result: dict[str, Any] = {"dataset": "overload", "machine": machine(), "limit": args.limit}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        url = f"sqlite:///{tmp / 'overload.db'}"
        store = open_store(url)
        account, rows = next(answers(DATASETS["small"], int(time.time() * 1000)))
        ingest_answers(store, account, enumerate(rows), int(time.time() * 1000), 1445)
        store.close()
        token = issue_tokens(url, [account])[account]
        server = start_server(
            url,
            tmp / "server.log",
            "--log-level",
            "warning",
            "--max-concurrent-requests",
            str(args.limit),
            "--max-concurrent-requests-global",
            str(args.limit * 10),
            env={"CSATDIST_RESPONSE_CACHE_MB": "0"},
        )
        pid = server.process.pid
        try:
            before = {"rss_mb": rss_mb(pid), "open_fds": open_fds(pid)}
            result["baseline"] = asyncio.run(phase(server.url, token, args.limit, 10))
            result["resources"] = {"before": before}
            for name, polite in (("overload_abusive", False), ("overload_polite", True)):
                peak: dict[str, float] = {"rss_mb": 0.0, "open_fds": 0}

                async def sampled(polite: bool = polite, peak: dict[str, float] = peak) -> Any:
                    clients = args.limit * args.factor
                    task = asyncio.create_task(
                        phase(server.url, token, clients, args.seconds, polite)
                    )
                    while not task.done():
                        peak["rss_mb"] = max(peak["rss_mb"], rss_mb(pid))
                        peak["open_fds"] = max(peak["open_fds"], open_fds(pid))
                        await asyncio.sleep(0.5)
                    return await task

                result[name] = asyncio.run(sampled())
                time.sleep(5)
                result["resources"][name] = {
                    "peak": peak,
                    "after_5s": {"rss_mb": rss_mb(pid), "open_fds": open_fds(pid)},
                }
            result["after_both"] = asyncio.run(phase(server.url, token, args.limit, 10))
            result["server_stayed_up"] = server.process.poll() is None
        finally:
            server.stop()
    result["verdict"] = verdict(result)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "overload.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    broken = [name for name, check in result["verdict"].items() if check["holds"] is False]
    if broken:
        print(f"guarantees broken: {', '.join(broken)}", file=sys.stderr)
        sys.exit(1)


def verdict(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each guarantee with whether it held. The 5 ms target for 429s against clients that
    ignore Retry-After is reported, not enforced: one process cannot meet it (docs)."""
    phases = ("baseline", "overload_abusive", "overload_polite", "after_both")
    statuses = {s for p in phases for s in result[p]["by_status"]}
    resources = result["resources"]
    first, second = (
        resources["overload_abusive"]["after_5s"],
        resources["overload_polite"]["after_5s"],
    )
    before_fds = resources["before"]["open_fds"]
    base = result["baseline"]["by_status"]["200"]["p50_ms"]
    polite = result["overload_polite"]["by_status"]["200"]["p50_ms"]
    after = result["after_both"]["by_status"]["200"]["p50_ms"]
    abusive_429 = result["overload_abusive"]["by_status"].get("429", {}).get("p99_ms")
    return {
        "server stays up": {"holds": result["server_stayed_up"]},
        "no errors and no 5xx": {
            "holds": all(result[p]["errors"] == 0 for p in phases)
            and not any(s.startswith("5") for s in statuses),
        },
        "memory and descriptors stop growing": {
            # Worker threads are added on demand up to the pool's size, each with its own SQLite
            # reader (2 descriptors: database and WAL); past that ceiling, any growth is a leak.
            "holds": second["open_fds"]
            <= max(first["open_fds"] + 5, before_fds + 2 * WORKER_THREADS + 5)
            and second["rss_mb"] <= first["rss_mb"] * 1.1,
        },
        "admitted latency kept with polite clients (p50 within 2x)": {
            "holds": polite <= 2 * max(base, after),
        },
        "latency back to baseline afterwards (p50 within 2x)": {"holds": after <= 2 * base},
        "429 p99 under 5 ms against clients ignoring Retry-After": {
            "holds": None,
            "measured_ms": abusive_429,
            "met": abusive_429 is not None and abusive_429 < 5,
        },
    }


if __name__ == "__main__":
    main()
