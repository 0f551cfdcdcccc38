"""Ingest speed of this tree against an earlier commit, measured in the same run.

    .venv/bin/python bench/compare_ingest.py [--base af7958e] [--backends sqlite,postgresql]
        [--answers 1000000] [--repeat 1]

For each tree (the base commit, checked out once into a cached worktree with its own venv under
``~/.cache/csatdist-bench/``, and this one) and each store, it loads the ``large`` dataset
(``bench/datasets.py``) twice: straight through the service function in batches of 5,000
(``direct``), and over HTTP as NDJSON bodies of 5,000 to a real ``csatdist serve`` (``http``).
The answers are the same for both trees (generated here, written to a file both read). Writes
``bench/results/ingest_compare.json`` and prints a table with the ratio this/base.

It also measures the export of every answer record of the day (``GET …/csat/answers`` with
``Accept: text/csv``, streamed) against this tree: its time and the server's RSS growth.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.datasets import DATASETS, answers  # noqa: E402
from bench.run import machine, rss_mb  # noqa: E402
from tests.helpers import postgres_schema  # noqa: E402

CACHE = Path.home() / ".cache" / "csatdist-bench"
RESULTS = ROOT / "bench" / "results"

#: Run inside a tree's own venv: load the answers file into a store, directly or over HTTP.
_RUNNER = r"""
import json, os, subprocess, sys, time, socket
import httpx, orjson
tree, url, path, mode = sys.argv[1:5]
sys.path.insert(0, os.path.join(tree, "src"))
from csatdist.store import open_store
from csatdist.service import ingest_answers
from csatdist.keys import issue_key
rows = [orjson.loads(line) for line in open(path, "rb")]
BATCH = 5000
account = "bench"
if mode == "direct":
    store = open_store(url)
    started = time.perf_counter()
    for s in range(0, len(rows), BATCH):
        ingest_answers(store, account, enumerate(rows[s:s + BATCH]), int(time.time() * 1000), 1445)
    elapsed = time.perf_counter() - started
    store.close()
    print(json.dumps({"seconds": elapsed}))
    sys.exit(0)
store = open_store(url)
issued = issue_key(account, frozenset({"read", "write"}), "bench", 0)
store.add_key(issued.key)
store.close()
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0)); port = sock.getsockname()[1]
server = subprocess.Popen([sys.executable, "-m", "csatdist", "serve", "--database", url,
                           "--port", str(port), "--log-level", "warning"],
                          cwd=tree, env={**os.environ, "PYTHONPATH": os.path.join(tree, "src"),
                                         "CSATDIST_WARM_UP_ACCOUNTS": "0",
                                         "CSATDIST_INGEST_ANSWERS_PER_SECOND": "0"})
base = f"http://127.0.0.1:{port}"
for _ in range(600):
    try:
        if httpx.get(base + "/healthz", timeout=1).status_code == 200:
            break
    except httpx.TransportError:
        time.sleep(0.05)
bodies = [b"\n".join(orjson.dumps(a) for a in rows[s:s + BATCH])
          for s in range(0, len(rows), BATCH)]
headers = {"Authorization": f"Bearer {issued.token}", "Content-Type": "application/x-ndjson"}
try:
    with httpx.Client(timeout=300) as client:
        started = time.perf_counter()
        for body in bodies:
            response = client.post(f"{base}/api/account/{account}/csat/answers", content=body,
                                   headers=headers)
            assert response.status_code == 200, response.text
        elapsed = time.perf_counter() - started
finally:
    server.terminate(); server.wait(30)
print(json.dumps({"seconds": elapsed}))
"""


def base_tree(commit: str) -> Path:
    """A cached worktree of ``commit`` with its own venv."""
    tree = CACHE / f"tree-{commit}"
    if not (tree / ".venv" / "bin" / "python").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        if not tree.exists():
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit],
                check=True,
            )
        subprocess.run(["make", "-C", str(tree), ".venv/.installed"], check=True)
    return tree


def load(python: Path, tree: Path, url: str, path: Path, mode: str) -> float:
    result = subprocess.run(
        [str(python), "-c", _RUNNER, str(tree), url, str(path), mode],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{tree} {mode}: {result.stderr[-2000:]}")
    seconds: float = json.loads(result.stdout.strip().splitlines()[-1])["seconds"]
    return seconds


def database(backend: str, tmp: Path, name: str) -> Any:
    import contextlib

    @contextlib.contextmanager
    def opened() -> Any:
        if backend == "sqlite":
            yield f"sqlite:///{tmp / (name + '.db')}"
        else:
            with postgres_schema() as url:
                yield url

    return opened()


def export_figures(url: str, tmp: Path) -> dict[str, Any]:
    """Export every record of the loaded day as CSV from a real server: time and RSS growth."""
    import httpx
    from tests.helpers import start_server

    from csatdist.keys import issue_key
    from csatdist.store import open_store

    store = open_store(url)
    issued = issue_key("bench", frozenset({"read"}), "bench", 0)
    store.add_key(issued.key)
    store.close()
    server = start_server(url, tmp / "export.log", "--log-level", "warning")
    try:
        # After the start-up warm-up (the busiest accounts' counters, loaded before /readyz):
        # the growth measured is the export's own.
        while httpx.get(server.url + "/readyz", timeout=30).status_code != 200:
            time.sleep(0.05)
        time.sleep(2)
        peak = before = rss_mb(server.process.pid)
        rows = 0
        started = time.perf_counter()
        with httpx.stream(
            "GET",
            server.url + "/api/account/bench/csat/answers",
            params={"timeframe": 1440},
            headers={"Authorization": f"Bearer {issued.token}", "Accept": "text/csv"},
            timeout=600,
        ) as response:
            assert response.status_code == 200, response.read()
            for chunk in response.iter_bytes():
                rows += chunk.count(b"\n")
                peak = max(peak, rss_mb(server.process.pid))
        elapsed = time.perf_counter() - started
        return {
            "records": rows - 1,
            "seconds": round(elapsed, 1),
            "rss_before_mb": before,
            "rss_peak_mb": peak,
            "rss_growth_mb": round(peak - before, 1),
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="af7958e")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--answers", type=int, default=DATASETS["large"].answers_per_account)
    args = parser.parse_args()
    dataset = DATASETS["large"]
    dataset = type(dataset)(dataset.name, 1, dataset.agents, dataset.skills, args.answers)
    trees = {"base": base_tree(args.base), "this": ROOT}
    result: dict[str, Any] = {"machine": machine(), "base": args.base, "answers": args.answers}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        path = tmp / "answers.ndjson"
        ((_, rows),) = answers(dataset, int(time.time() * 1000))
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
        for backend in args.backends.split(","):
            for mode in ("direct", "http"):
                for name, tree in trees.items():
                    python = tree / ".venv" / "bin" / "python"
                    with database(backend, tmp, f"{name}-{mode}") as url:
                        seconds = load(python, tree, url, path, mode)
                        if name == "this" and mode == "direct":
                            result[f"{backend}_export"] = export_figures(url, tmp)
                    rate = round(args.answers / seconds)
                    result[f"{backend}_{mode}_{name}"] = rate
                    print(f"{backend:10} {mode:6} {name:4} {rate:>8} answers/s", flush=True)
                ratio = result[f"{backend}_{mode}_this"] / result[f"{backend}_{mode}_base"]
                result[f"{backend}_{mode}_ratio"] = round(ratio, 2)
                print(f"{backend:10} {mode:6} this/base {ratio:.2f}", flush=True)
            print(f"{backend} export:", result.get(f"{backend}_export"), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest_compare.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("CSATDIST_LOG_LEVEL", "warning")
    main()
