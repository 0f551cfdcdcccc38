"""The large shapes right after a change, over HTTP: this code against the code before a change,
in alternating rounds on one database of ``large`` (SQLite, or PostgreSQL by its URL), so both
see the same machine.

    .venv/bin/python bench/after_change_http.py --database /tmp/large.db   # this code
    git archive <commit> src | tar -x -C /tmp/before                        # and before:
    .venv/bin/python bench/after_change_http.py --database /tmp/large.db \
        --variant before=/tmp/before/src

Each round starts ``csatdist serve --workers 1`` once per variant, in turn (``this``: this
checkout's code; each ``--variant NAME=SRC`` puts that source tree first on the server's
``PYTHONPATH``; the order rotates from round to round), warms every shape, then for each shape
acknowledges one new answer over HTTP (untimed) before every timed GET, as ``bench/run.py``'s
*after a change* column does (same client, httpx); with ``--raw``, each shape again through a
raw socket that only reads the bytes (what the server takes, without httpx's parsing). Figures
are p50 / p99 over every round's
samples, with each round's p50 and the 1-minute load average before it; the server's RSS is
read after its last query. Nothing here asserts a duration.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from bench import datasets  # noqa: E402
from bench.run import (  # noqa: E402
    SHAPES,
    ingest_direct,
    issue_tokens,
    load_average,
    percentiles,
    rss_mb,
)
from tests.helpers import start_server  # noqa: E402

from csatdist.store import open_store  # noqa: E402

ACCOUNT = "bench"
NAMES = ["agents_all_60", "skills_all_60", "both_all_60"]
NAMES += ["agents_all_1440", "skills_all_1440", "both_all_1440"]


class RawClient:
    """GETs over one kept-alive socket, reading the head and ``Content-Length`` bytes of body
    into one buffer: what the server takes, without an HTTP library's parsing (httpx takes
    about 2 ms of its own for a 1.6 MB body on the bench machine)."""

    def __init__(self, base_url: str, token: str) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.socket = socket.create_connection((host, int(port)))
        self.token = token
        self.buffer = bytearray(64 << 20)

    def get(self, path: str) -> int:
        """The status of ``GET path`` once its whole body has arrived."""
        self.socket.sendall(
            f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {self.token}"
            "\r\n\r\n".encode()
        )
        view, got, need, head = memoryview(self.buffer), 0, -1, b""
        while need < 0 or got < need:
            received = self.socket.recv_into(view[got:])
            if not received:
                raise ConnectionError("the server closed the connection")
            got += received
            if need < 0 and (end := self.buffer.find(b"\r\n\r\n", 0, got)) >= 0:
                head = bytes(self.buffer[:end]).lower()
                length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                need = end + 4 + length
        return int(head.split(b" ")[1])

    def close(self) -> None:
        self.socket.close()


def one_server(
    url: str, token: str, src: str | None, repeat: int, log: Path, first: int, raw: bool
) -> dict[str, Any]:
    """Samples (ms) per shape from one server (and per shape with the raw client, when
    ``raw``); ``first`` numbers this server's new answers."""
    env = {"PYTHONPATH": src} if src else None
    server = start_server(url, log, "--log-level", "warning", env=env)
    headers = {"Authorization": f"Bearer {token}"}
    path = f"/operations/api/account/{ACCOUNT}/msgcsatdistribution"
    target = server.url + path
    answers = iter(range(first, first + 10**6))
    samples: dict[str, list[float]] = {}
    try:
        with httpx.Client(timeout=120) as client:

            def new_answer() -> None:
                number = next(answers)
                answer = {
                    "id": f"after-change-http-{number}",
                    "time": int(time.time() * 1000),
                    "skillId": 1 + number % 5,
                    "agentId": 1 + number % 20,
                    "score": 1 + number % 5,
                }
                response = client.post(
                    f"{server.url}/api/account/{ACCOUNT}/csat/answers",
                    json={"answers": [answer]},
                    headers=headers,
                )
                assert response.status_code == 200, response.text

            for name in NAMES:
                params = {"v": 1, **SHAPES[name]}
                client.get(target, params=params, headers=headers)  # warm: parts to start from
                samples[name] = []
                for _ in range(repeat):
                    new_answer()
                    started = time.perf_counter()
                    response = client.get(target, params=params, headers=headers)
                    samples[name].append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, response.text
                if raw:
                    raw_client = RawClient(server.url, token)
                    query = "?" + "&".join(f"{k}={v}" for k, v in params.items())
                    samples[f"{name} raw"] = []
                    for _ in range(repeat):
                        new_answer()
                        started = time.perf_counter()
                        status = raw_client.get(path + query)
                        samples[f"{name} raw"].append((time.perf_counter() - started) * 1000)
                        assert status == 200, status
                    raw_client.close()
        rss = rss_mb(server.process.pid)
    finally:
        server.stop()
    return {"samples": samples, "rss_mb": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--database", required=True, help="a SQLite path or PostgreSQL URL (loaded if empty)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=SRC",
        help="also measure the code in the src directory SRC (e.g. before a change)",
    )
    parser.add_argument("--repeat", type=int, default=100, help="samples per shape and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--raw", action="store_true", help="each shape also through a raw socket (no httpx)"
    )
    parser.add_argument("--output", default=str(ROOT / "bench/results/after_change_http.json"))
    args = parser.parse_args()
    url = args.database if "://" in args.database else f"sqlite:///{args.database}"
    store = open_store(url)
    empty = store.account_version(ACCOUNT) == 0
    store.close()
    if empty:
        print("loading large (1,000,000 answers)…", flush=True)
        data = list(datasets.answers(datasets.DATASETS["large"], int(time.time() * 1000)))
        print(ingest_direct(url, data), flush=True)
    token = issue_tokens(url, [ACCOUNT])[ACCOUNT]
    variants: dict[str, str | None] = {}
    for given in args.variant:
        name, _, src = given.partition("=")
        variants[name] = str(Path(src).resolve())
    variants["this"] = None
    names = NAMES + [f"{name} raw" for name in NAMES] if args.raw else NAMES
    collected: dict[str, dict[str, list[float]]] = {v: {n: [] for n in names} for v in variants}
    rounds: list[dict[str, Any]] = []
    first = time.time_ns() // 1000  # new answer ids unique across runs on one database
    with tempfile.TemporaryDirectory() as tmp:
        for number in range(args.rounds):
            turns = list(variants)
            order = turns[number % len(turns) :] + turns[: number % len(turns)]
            for variant in order:
                load = load_average()
                log = Path(tmp) / "server.log"
                got = one_server(url, token, variants[variant], args.repeat, log, first, args.raw)
                first += 10**6
                for name, values in got["samples"].items():
                    collected[variant][name] += values
                p50 = {name: percentiles(v)["p50_ms"] for name, v in got["samples"].items()}
                entry = {"round": number, "variant": variant, "load_average": load}
                entry |= {"rss_mb": got["rss_mb"], "p50_ms": p50}
                rounds.append(entry)
                print(json.dumps(entry), flush=True)
    summary = {v: {n: percentiles(s) for n, s in shapes.items()} for v, shapes in collected.items()}
    for name in names:
        print(name, "  ".join(f"{v} {summary[v][name]}" for v in variants), flush=True)
    output = {
        "dataset": "large",
        "store": url.partition(":")[0],
        "repeat": args.repeat,
        "rounds": rounds,
        "shapes": summary,
        "load_average_end": load_average(),
    }
    Path(args.output).write_text(json.dumps(output, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
