"""Answers/s through NATS JetStream into each store, against the direct write as baseline.

    .venv/bin/python bench/stream.py [--answers 200000] [--backends sqlite,postgresql]

Takes the first ``--answers`` of the seeded ``large`` dataset. For 1 and then 2 `csatdist consume`
processes (sharing the durable consumer, fetching 50 messages = 5,000 answers per commit), it
starts them, waits until each is consuming, then times publishing the answers in NDJSON messages
of 100 (the `csatdist publish` path) until the stream is drained. The baseline is the same
answers written straight through ``ingest_answers`` in the same 5,000-answer batches, on a fresh
store of the same backend. Writes bench/results/stream.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.datasets import DATASETS, answers  # noqa: E402
from bench.run import RESULTS, database, machine  # noqa: E402
from tests.helpers import consume_command  # noqa: E402

from csatdist.service import ingest_answers  # noqa: E402
from csatdist.settings import Settings  # noqa: E402
from csatdist.store import open_store  # noqa: E402
from csatdist.stream import (  # noqa: E402
    Topology,
    chunk_payloads,
    ensure_streams,
    publish_answers,
)

PER_MESSAGE = 100
BATCH = 50  # messages per fetch: 5,000 answers per commit, as the HTTP benchmark's batches


def names_env(tag: str) -> dict[str, str]:
    return {
        "CSATDIST_STREAM_NAME": f"B{tag}",
        "CSATDIST_STREAM_SUBJECT_PREFIX": f"b{tag}.answers",
        "CSATDIST_DEAD_LETTER_STREAM": f"B{tag}_DLQ",
        "CSATDIST_DEAD_LETTER_PREFIX": f"b{tag}.dlq",
        "CSATDIST_CONSUMER_NAME": "bench",
    }


def settings_for(env: dict[str, str]) -> Settings:
    return Settings(**{k.removeprefix("CSATDIST_").lower(): v for k, v in env.items()})


@contextmanager
def streams(env: dict[str, str]) -> Iterator[None]:
    topology = Topology.from_settings(settings_for(env))

    async def create() -> None:
        nc = await nats.connect(topology.nats_url)
        await ensure_streams(nc.jetstream(), topology, create=True)
        await nc.close()

    async def delete() -> None:
        nc = await nats.connect(topology.nats_url)
        for stream in (topology.stream, topology.dead_letter_stream):
            await nc.jetstream().delete_stream(stream)
        await nc.close()

    asyncio.run(create())
    try:
        yield
    finally:
        asyncio.run(delete())


async def pending(env: dict[str, str]) -> tuple[int, int] | None:
    """(pending, ack pending), or None while no consumer process has created the consumer."""
    topology = Topology.from_settings(settings_for(env))
    nc = await nats.connect(topology.nats_url)
    try:
        info = await nc.jetstream().consumer_info(topology.stream, topology.consumer)
    except nats.js.errors.NotFoundError:
        return None
    finally:
        await nc.close()
    return info.num_pending or 0, info.num_ack_pending or 0


def consume(
    url: str, env: dict[str, str], workers: int, tmp: Path, account: str, rows: list[Any]
) -> dict[str, Any]:
    """Start the consumers, wait until each is consuming, then time publish + drain."""
    processes = []
    logs = [tmp / f"consume{workers}-{n}.log" for n in range(workers)]
    for log_path in logs:
        with log_path.open("ab") as log:
            processes.append(
                subprocess.Popen(
                    consume_command(url, "--batch", str(BATCH)),
                    stdout=subprocess.PIPE,
                    stderr=log,
                    env={**os.environ, **env},
                )
            )
    for log_path in logs:
        while '"consuming"' not in log_path.read_text():
            time.sleep(0.05)
    started = time.perf_counter()
    report = asyncio.run(
        publish_answers(settings_for(env), account, chunk_payloads(rows, PER_MESSAGE))
    )
    published = time.perf_counter() - started
    while asyncio.run(pending(env)) != (0, 0):
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    stats = []
    for process in processes:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
        stats.append(orjson.loads(out))
    accepted = sum(s["accepted"] for s in stats)
    assert accepted == len(rows), (accepted, len(rows))
    return {
        "workers": workers,
        "answers": len(rows),
        "messages": report.messages,
        "publish_seconds": round(published, 2),
        "publish_answers_per_s": round(len(rows) / published),
        "seconds": round(elapsed, 2),
        "answers_per_s": round(len(rows) / elapsed),
        "per_worker_messages": [s["messages"] for s in stats],
    }


def direct(url: str, account: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    store = open_store(url)
    step = BATCH * PER_MESSAGE
    started = time.perf_counter()
    for start in range(0, len(rows), step):
        ingest_answers(store, account, enumerate(rows[start : start + step]), _now(), 1445)
    elapsed = time.perf_counter() - started
    store.close()
    return {
        "answers": len(rows),
        "seconds": round(elapsed, 2),
        "answers_per_s": round(len(rows) / elapsed),
    }


def _now() -> int:
    return int(time.time() * 1000)


def run_backend(backend: str, account: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {"backend": backend}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        with database(backend, tmp, "direct") as url:
            result["direct"] = direct(url, account, rows)
        for workers in (1, 2):
            env = names_env(uuid.uuid4().hex[:8])
            with streams(env), database(backend, tmp, f"stream{workers}") as url:
                result[f"consume_{workers}"] = consume(url, env, workers, tmp, account, rows)
        for workers in (1, 2):
            run = result[f"consume_{workers}"]
            run["ratio_to_direct"] = round(
                run["answers_per_s"] / result["direct"]["answers_per_s"], 2
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--answers", type=int, default=200_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    account, rows = next(answers(DATASETS["large"], _now()))
    rows = rows[: args.answers]
    result: dict[str, Any] = {
        "dataset": f"stream ({len(rows)} answers of large, {PER_MESSAGE} per message)",
        "machine": machine(),
    }
    for backend in args.backends.split(","):
        print(f"== stream on {backend}", flush=True)
        result[backend] = run_backend(backend, account, rows)
        print(orjson.dumps(result[backend]).decode(), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "stream.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    subprocess.run([sys.executable, str(ROOT / "bench" / "report.py")], check=True)


if __name__ == "__main__":
    main()
