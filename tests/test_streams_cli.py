"""`csatdist streams create`: create the JetStream topology and exit, against a real NATS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import nats
import orjson
import pytest

from tests.helpers import free_port


@pytest.fixture
def env(nats_url: str) -> Iterator[dict[str, str]]:
    """Names of streams and a consumer no one uses, on the session's NATS; the streams are
    deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    names = {
        "CSATDIST_NATS_URL": nats_url,
        "CSATDIST_STREAM_NAME": f"S{tag}",
        "CSATDIST_STREAM_SUBJECT_PREFIX": f"s{tag}.answers",
        "CSATDIST_DEAD_LETTER_STREAM": f"S{tag}_DLQ",
        "CSATDIST_DEAD_LETTER_PREFIX": f"s{tag}.dlq",
        "CSATDIST_CONSUMER_NAME": "workers",
    }
    yield names

    async def delete() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        for stream in (names["CSATDIST_STREAM_NAME"], names["CSATDIST_DEAD_LETTER_STREAM"]):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(stream)
        await nc.close()

    asyncio.run(delete())


def cli(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "csatdist", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )


def test_streams_create_creates_what_is_missing_says_so_and_exits(env: dict[str, str]) -> None:
    stream, dlq = env["CSATDIST_STREAM_NAME"], env["CSATDIST_DEAD_LETTER_STREAM"]
    prefix, dlq_prefix = env["CSATDIST_STREAM_SUBJECT_PREFIX"], env["CSATDIST_DEAD_LETTER_PREFIX"]
    everything = [
        f"stream {stream} ({prefix}.*)",
        f"stream {dlq} ({dlq_prefix}.*)",
        "consumer workers",
    ]
    first = cli("streams", "create", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"created  {what}" for what in everything]

    again = cli("streams", "create", "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert orjson.loads(again.stdout) == {"created": [], "existing": everything}

    # publish finds the stream in place now.
    answer = orjson.dumps({"id": "a1", "time": 1_795_786_140_000, "score": 5}).decode()
    published = cli("publish", "-", "--account", "acme", env=env, stdin=answer + "\n")
    assert published.returncode == 0, published.stderr


def test_streams_create_without_nats_is_one_clear_error(env: dict[str, str]) -> None:
    unreachable = f"nats://127.0.0.1:{free_port()}"
    result = cli("streams", "create", env={**env, "CSATDIST_NATS_URL": unreachable})
    assert result.returncode == 2
    assert result.stderr == (
        f"error: cannot reach NATS at {unreachable}: no connection within 5 s; check that the "
        "server runs there with JetStream\n"
    )


def test_consume_help_says_what_create_does() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "csatdist", "consume", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "Create the streams and the durable consumer if missing, then consume." in text
    assert "To create them and exit: csatdist streams create." in text
