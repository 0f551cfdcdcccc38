"""Stream ingestion against a real NATS JetStream server: this session's (conftest.nats_url),
and a private one of its own for the test that restarts NATS.

Each test gets its own streams, subjects and consumer (and a fresh store of each backend where it
matters), and checks what a user would: exact counts after redeliveries, crashes and restarts,
and every unusable message in the dead-letter stream with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import nats.js.errors
import orjson
import pytest

from csatdist.clock import system_clock_ms
from csatdist.errors import StoreUnavailable
from csatdist.query import parse_query
from csatdist.service import query_distribution
from csatdist.settings import Settings
from csatdist.store import Store, open_store
from csatdist.stream import Consumer, Topology, ensure_streams
from tests.helpers import consume_command, free_port
from tests.services import PrivateServer, private_nats

SCORES = ("csat_score1_answers", "csat_score2_answers", "csat_score3_answers")
SCORES += ("csat_score4_answers", "csat_score5_answers")


@dataclass
class Names:
    """One test's own streams, subjects and durable consumer, on the NATS server at ``url``."""

    tag: str
    url: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "CSATDIST_NATS_URL": self.url,
            "CSATDIST_STREAM_NAME": f"T{self.tag}",
            "CSATDIST_STREAM_SUBJECT_PREFIX": f"t{self.tag}.answers",
            "CSATDIST_DEAD_LETTER_STREAM": f"T{self.tag}_DLQ",
            "CSATDIST_DEAD_LETTER_PREFIX": f"t{self.tag}.dlq",
            "CSATDIST_CONSUMER_NAME": "workers",
        }

    def settings(self, database_url: str, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            key.removeprefix("CSATDIST_").lower(): value for key, value in self.env.items()
        }
        return Settings(database_url=database_url, **{**values, **overrides})

    def subject(self, account: str) -> str:
        return f"t{self.tag}.answers.{account}"


@pytest.fixture
def bare_names(nats_url: str) -> Iterator[Names]:
    """Names of streams that do not exist yet (deleted afterwards if a test made them)."""
    chosen = Names(uuid.uuid4().hex[:10], nats_url)
    yield chosen
    run(_delete_streams(chosen))


@pytest.fixture
def names(bare_names: Names) -> Names:
    """This test's answer and dead-letter streams, created; the consumer is not."""
    run(_create_streams(bare_names))
    return bare_names


async def _create_streams(names: Names) -> None:
    nc = await nats.connect(names.url)
    topology = Topology.from_settings(names.settings("sqlite:///unused"))
    await ensure_streams(nc.jetstream(), topology, create=True)
    await nc.close()


async def _delete_streams(names: Names) -> None:
    nc = await nats.connect(names.url)
    js = nc.jetstream()
    for stream in (f"T{names.tag}", f"T{names.tag}_DLQ"):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(stream)
    await nc.close()


def run(coroutine: Awaitable[Any]) -> Any:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def answer(i: int, score: int | None = None, **fields: object) -> dict[str, object]:
    return {
        "id": f"a{i}",
        "time": system_clock_ms() - (i % 600) * 1000,
        "skillId": i % 5,
        "agentId": i % 11,
        "score": score if score is not None else i % 5 + 1,
        **fields,
    }


def ndjson(answers: list[dict[str, object]]) -> bytes:
    return b"\n".join(orjson.dumps(a) for a in answers)


async def publish_all(names: Names, messages: list[tuple[str, bytes]]) -> None:
    nc = await nats.connect(names.url)
    js = nc.jetstream()
    for account, payload in messages:
        await js.publish(names.subject(account), payload)
    await nc.close()


async def consumer_state(names: Names) -> tuple[int, int, int]:
    """(pending, ack pending, redelivered) of the durable consumer."""
    nc = await nats.connect(names.url)
    info = await nc.jetstream().consumer_info(f"T{names.tag}", "workers")
    await nc.close()
    return info.num_pending or 0, info.num_ack_pending or 0, info.num_redelivered or 0


async def dead_letters(names: Names) -> list[tuple[str, dict[str, str], bytes]]:
    nc = await nats.connect(names.url)
    js = nc.jetstream()
    info = await js.stream_info(f"T{names.tag}_DLQ")
    letters = []
    first = max(info.state.first_seq, 1)
    for sequence in range(first, info.state.last_seq + 1 if info.state.messages else first):
        message = await js.get_msg(f"T{names.tag}_DLQ", sequence)
        letters.append((message.subject or "", dict(message.headers or {}), message.data or b""))
    await nc.close()
    return letters


async def consume_until_drained(
    names: Names, store: Store, settings: Settings, *, timeout: float = 60
) -> Consumer:
    """Run a consumer in-process until the stream has nothing pending or unacknowledged."""
    consumer = Consumer(store, settings)
    task = asyncio.create_task(consumer.run(create=True))
    await asyncio.wait_for(consumer.ready.wait(), timeout=15)
    deadline = time.monotonic() + timeout
    while True:
        assert not task.done(), task.exception()
        pending, ack_pending, _ = await consumer_state(names)
        if pending == 0 and ack_pending == 0:
            break
        assert time.monotonic() < deadline, (pending, ack_pending)
        await asyncio.sleep(0.1)
    consumer.stop()
    await asyncio.wait_for(task, timeout=15)
    return consumer


def totals(store: Store, account: str) -> dict[str, int]:
    query = parse_query({"v": "1", "timeframe": "1440"}, 1000)
    body = query_distribution(store, account, query, system_clock_ms()).body
    return {key: body["metricsTotals"][key] for key in (*SCORES, "total_answers")}


def expected(answers: list[dict[str, object]]) -> dict[str, int]:
    """The naive reference: the first answer of each id counts."""
    first: dict[object, dict[str, object]] = {}
    for a in answers:
        first.setdefault(a["id"], a)
    counts = dict.fromkeys(SCORES, 0)
    for a in first.values():
        counts[SCORES[int(a["score"]) - 1]] += 1  # type: ignore[call-overload]
    return {**counts, "total_answers": len(first)}


# --- in-process consumer ---------------------------------------------------------------------


def test_counts_exactly_once_whatever_the_message_shape(
    names: Names, database_url: str, store: Store
) -> None:
    acme = [answer(i) for i in range(400)]
    globex = [answer(i, score=4) for i in range(150)]
    messages: list[tuple[str, bytes]] = []
    messages += [("acme", orjson.dumps(a)) for a in acme[:50]]  # one JSON answer each
    messages += [("acme", ndjson(acme[k : k + 50])) for k in range(50, 400, 50)]  # NDJSON
    messages += [("acme", ndjson(acme[:120]))]  # the same answers again: duplicates
    messages += [("globex", orjson.dumps({"answers": globex[:100]}))]  # the HTTP body shape
    messages += [("globex", orjson.dumps(globex[90:]))]  # a JSON array, overlapping by 10
    run(publish_all(names, messages))

    consumer = run(consume_until_drained(names, store, names.settings(database_url)))

    assert totals(store, "acme") == expected(acme)
    assert totals(store, "globex") == expected(globex)
    assert consumer.stats.accepted == 550
    assert consumer.stats.duplicates == 130
    assert consumer.stats.dead_letters == 0
    assert consumer.stats.messages == len(messages)


def test_unusable_messages_and_answers_end_in_the_dead_letter_stream(
    names: Names, tmp_path: Path
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    old = system_clock_ms() - 25 * 3600 * 1000
    mixed = [answer(1), answer(2, score=9), answer(3), answer(4, time=old)]
    mixed_payload = ndjson(mixed[:2]) + b'\n{"id": "cut' + b"\n" + ndjson(mixed[2:])
    messages = [
        ("acme", b"\x00\xff binary garbage"),
        ("acme", b""),
        ("acme", mixed_payload),
        ("bad!account", orjson.dumps(answer(5))),
        ("acme", ndjson([answer(10 + i) for i in range(6)])),  # more than 5 per message
        ("acme", orjson.dumps(answer(6, skillId="seven"))),
    ]
    run(publish_all(names, messages))

    settings = names.settings(f"sqlite:///{tmp_path / 'c.db'}", max_ingest_answers=5)
    consumer = run(consume_until_drained(names, store, settings))

    assert totals(store, "acme")["total_answers"] == 2  # a1 and a3: the valid ones survive
    letters = run(dead_letters(names))
    got = {
        (h["Csat-Source-Sequence"], h.get("Csat-Answer-Index")): (s, h, d) for s, h, d in letters
    }
    assert len(letters) == 8 == consumer.stats.dead_letters
    dlq = f"t{names.tag}.dlq"
    cases = [
        ("1", None, "acme", "neither JSON nor NDJSON", b"\x00\xff binary garbage"),
        ("2", None, "acme", "message is empty", b""),
        ("3", "1", "acme", "score must be an integer from 1 to 5", orjson.dumps(mixed[1])),
        ("3", "2", "acme", "line is not valid JSON", b'{"id": "cut'),
        ("3", "4", "acme", "older than the retention", orjson.dumps(mixed[3])),
        ("4", None, "bad!account", "is not t", messages[3][1]),
        ("5", None, "acme", "6 answers in one message; at most 5", messages[4][1]),
        ("6", "0", "acme", "skillId must be an integer", messages[5][1]),
    ]
    for sequence, index, account, reason, payload in cases:
        subject, headers, data = got[(sequence, index)]
        assert subject == f"{dlq}.{account}"
        assert reason in headers["Csat-Reason"], headers
        assert headers["Csat-Source-Subject"] == names.subject(account)
        assert data == payload
    assert run(consumer_state(names)) == (0, 0, 0)  # all acknowledged: nothing left hanging
    store.close()


class FailingFor:
    """A store that fails every write for one account, with the given error."""

    def __init__(self, store: Store, account: str, error: Exception, times: int = 10**9) -> None:
        self.store, self.account, self.error, self.times = store, account, error, times
        self.failures = 0

    def record_answers(self, account_id: str, answers: Any) -> int:
        if answers and account_id == self.account and self.failures < self.times:
            self.failures += 1
            raise self.error
        return self.store.record_answers(account_id, answers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_message_that_keeps_failing_is_dead_lettered_after_max_deliver(
    names: Names, tmp_path: Path
) -> None:
    real = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    store = FailingFor(real, "boom", RuntimeError("bug triggered by this message"))
    messages = [
        ("acme", ndjson([answer(1), answer(2)])),
        ("boom", b'{"x": 1}'),
        ("boom", orjson.dumps(answer(3))),
    ]
    run(publish_all(names, messages))

    settings = names.settings(f"sqlite:///{tmp_path / 'c.db'}", consume_max_deliver=3)
    run(consume_until_drained(names, store, settings))  # type: ignore[arg-type]

    assert totals(real, "acme")["total_answers"] == 2  # the good message is not held back
    letters = run(dead_letters(names))
    assert len(letters) == 2
    by_sequence = {headers["Csat-Source-Sequence"]: (s, headers, d) for s, headers, d in letters}
    # {"x": 1} is invalid, not failing: dead-lettered on its first delivery
    _, headers, data = by_sequence["2"]
    assert "id must be a string" in headers["Csat-Reason"]
    assert headers["Csat-Deliveries"] == "1"
    subject, headers, data = by_sequence["3"]
    assert subject == f"t{names.tag}.dlq.boom"
    assert "failed on each of 3 deliveries" in headers["Csat-Reason"]
    assert "bug triggered by this message" in headers["Csat-Reason"]
    assert data == messages[2][1]
    real.close()


class NeverAcks(Consumer):
    """Takes messages and never settles them, like a consumer that dies on them every time."""

    async def _handle(self, messages: list[Any]) -> None:
        return None


def test_a_message_never_acknowledged_is_dead_lettered_from_the_advisory(
    names: Names, tmp_path: Path
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    settings = names.settings(
        f"sqlite:///{tmp_path / 'c.db'}", consume_max_deliver=2, consume_ack_wait_seconds=1
    )
    payload = orjson.dumps(answer(1))

    async def go() -> list[tuple[str, dict[str, str], bytes]]:
        consumer = NeverAcks(store, settings)
        task = asyncio.create_task(consumer.run(create=True))
        await publish_all(names, [("acme", payload)])
        deadline = time.monotonic() + 30
        while not (letters := await dead_letters(names)):
            assert time.monotonic() < deadline, "no dead letter from the advisory"
            await asyncio.sleep(0.2)
        consumer.stop()
        await task
        return letters

    letters = run(go())
    assert len(letters) == 1
    subject, headers, data = letters[0]
    assert subject == f"t{names.tag}.dlq.acme"
    assert "not acknowledged after 2 deliveries" in headers["Csat-Reason"]
    assert data == payload
    store.close()


def test_a_store_outage_pauses_consumption_without_redelivery_or_loss(
    names: Names, tmp_path: Path
) -> None:
    real = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    store = FailingFor(real, "acme", StoreUnavailable("database is down"), times=5)
    answers = [answer(i) for i in range(300)]
    run(publish_all(names, [("acme", ndjson(answers[k : k + 30])) for k in range(0, 300, 30)]))

    consumer = run(
        consume_until_drained(names, store, names.settings(f"sqlite:///{tmp_path / 'c.db'}"))
    )  # type: ignore[arg-type]

    assert store.failures == 5
    assert consumer.stats.store_retries == 5
    assert totals(real, "acme") == expected(answers)
    assert run(consumer_state(names)) == (0, 0, 0)  # held in progress: never redelivered
    assert consumer.stats.dead_letters == 0
    real.close()


def test_without_create_a_missing_stream_is_reported_clearly(
    bare_names: Names, tmp_path: Path
) -> None:
    names = bare_names
    result = subprocess.run(
        [sys.executable, "-m", "csatdist", "consume", "--database", str(tmp_path / "c.db")],
        capture_output=True,
        text=True,
        env={**os.environ, **names.env},
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert f"stream 'T{names.tag}' does not exist" in message
    assert "csatdist consume --create" in message


# --- real processes --------------------------------------------------------------------------


class ConsumerProcess:
    def __init__(self, names: Names, database_url: str, log_path: Path, *extra: str) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                consume_command(database_url, *extra),
                stdout=subprocess.PIPE,
                stderr=log,
                env={**os.environ, **names.env, "CSATDIST_CONSUME_ACK_WAIT_SECONDS": "3"},
            )
        self.wait_for_log('"consuming"')

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log_path.read_text():
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"no {text!r} in {self.log_path.read_text()}"
            time.sleep(0.05)

    def terminate(self) -> dict[str, int]:
        """SIGTERM; returns the final stats it prints."""
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, self.log_path.read_text()[-3000:]
        stats: dict[str, int] = orjson.loads(out)
        return stats

    def kill(self) -> None:
        """SIGKILL: no batch finished, nothing flushed."""
        self.process.kill()
        self.process.communicate(timeout=10)


def wait_drained(names: Names, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        pending, ack_pending, _ = run(consumer_state(names))
        if pending == 0 and ack_pending == 0:
            return
        assert time.monotonic() < deadline, (pending, ack_pending)
        time.sleep(0.2)


@pytest.fixture
def process_store(database_url: str) -> Iterator[tuple[str, Store]]:
    backend = open_store(database_url)
    yield database_url, backend
    backend.close()


@pytest.mark.slow
def test_kill_9_after_commit_before_ack_redelivers_and_counts_once(
    names: Names, process_store: tuple[str, Store], tmp_path: Path
) -> None:
    database_url, store = process_store
    answers = [answer(i) for i in range(1000)]
    first = ConsumerProcess(names, database_url, tmp_path / "first.log", "--pause-before-ack", "60")
    run(publish_all(names, [("acme", ndjson(answers[k : k + 50])) for k in range(0, 1000, 50)]))
    first.wait_for_log("pausing before acknowledging")
    committed = totals(store, "acme")["total_answers"]
    assert committed > 0  # the commit happened...
    first.kill()  # ...and the process dies before acknowledging it
    assert run(consumer_state(names))[1] > 0  # still unacknowledged on the server

    port = free_port()
    second = ConsumerProcess(
        names, database_url, tmp_path / "second.log", "--metrics-port", str(port)
    )
    wait_drained(names)
    time.sleep(2.5)  # the lag gauges refresh every 2 s
    metrics = scrape(port)
    stats = second.terminate()

    assert totals(store, "acme") == expected(answers)
    assert stats["duplicates"] >= committed  # the redelivered batch was recognised
    assert stats["accepted"] == 1000 - committed
    assert metrics['csatdist_answers_total{outcome="duplicate"}'] == stats["duplicates"]
    assert metrics['csatdist_answers_total{outcome="accepted"}'] == stats["accepted"]
    assert metrics['csatdist_stream_messages_total{outcome="acked"}'] == stats["messages"]
    assert metrics["csatdist_stream_pending_messages"] == 0
    assert metrics["csatdist_stream_ack_pending_messages"] == 0


def scrape(port: int) -> dict[str, float]:
    """The consumer's /metrics, as {series: value}."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
    return values


@pytest.mark.slow
def test_two_consumers_share_the_work_and_count_exactly(
    names: Names, process_store: tuple[str, Store], tmp_path: Path
) -> None:
    database_url, store = process_store
    accounts = ("acme", "globex", "initech")
    sent: dict[str, list[dict[str, object]]] = {account: [] for account in accounts}
    messages = []
    for k in range(120):
        account = accounts[k % 3]
        batch = [answer(k * 40 + i) for i in range(40)]
        batch += [answer((k - 3) * 40 + i) for i in range(5)] if k >= 3 else []  # re-sent ids
        sent[account] += batch
        messages.append((account, ndjson(batch)))
    workers = [
        ConsumerProcess(names, database_url, tmp_path / f"w{n}.log", "--batch", "4")
        for n in range(2)
    ]
    run(publish_all(names, messages))
    wait_drained(names)
    stats = [worker.terminate() for worker in workers]

    assert all(s["messages"] > 0 for s in stats), stats  # both did part of the work
    assert sum(s["messages"] for s in stats) >= len(messages)
    for account in accounts:
        assert totals(store, account) == expected(sent[account])
    assert sum(s["accepted"] for s in stats) == sum(
        expected(sent[a])["total_answers"] for a in accounts
    )


@pytest.mark.slow
def test_sigterm_finishes_the_batch_in_hand_acknowledges_it_and_exits(
    names: Names, tmp_path: Path
) -> None:
    database_url = f"sqlite:///{tmp_path / 'c.db'}"
    worker = ConsumerProcess(names, database_url, tmp_path / "w.log", "--pause-before-ack", "2")
    run(publish_all(names, [("acme", ndjson([answer(i) for i in range(100)]))]))
    worker.wait_for_log("pausing before acknowledging")
    stats = worker.terminate()  # arrives during the pause

    assert stats["messages"] == 1
    assert stats["accepted"] == 100
    assert run(consumer_state(names))[:2] == (0, 0)  # acknowledged before exiting


@pytest.fixture
def own_nats() -> Iterator[PrivateServer]:
    """A NATS server of this test's own, to restart."""
    with private_nats() as server:
        yield server


@pytest.mark.slow
def test_consumption_resumes_after_a_nats_restart_with_exact_counts(
    own_nats: PrivateServer, tmp_path: Path
) -> None:
    names = Names(uuid.uuid4().hex[:10], own_nats.url)
    run(_create_streams(names))
    database_url = f"sqlite:///{tmp_path / 'c.db'}"
    worker = ConsumerProcess(names, database_url, tmp_path / "w.log")
    answers = [answer(i) for i in range(3000)]
    published: list[int] = []

    def producer() -> None:
        """Publishes batch after batch, retrying each (same message id) until it is stored."""

        async def go() -> None:
            nc = await nats.connect(names.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
            js = nc.jetstream(timeout=2)
            for k in range(0, len(answers), 30):
                payload = ndjson(answers[k : k + 30])
                while True:
                    try:
                        await js.publish(
                            names.subject("acme"), payload, headers={"Nats-Msg-Id": f"m{k}"}
                        )
                        break
                    except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                        await asyncio.sleep(0.2)
                published.append(k)
                await asyncio.sleep(0.02)
            await nc.close()

        run(go())

    thread = threading.Thread(target=producer)
    thread.start()
    while len(published) < 25:
        time.sleep(0.05)
    own_nats.restart(down_seconds=2.0)  # SIGTERM, as an operator would; then start it again
    thread.join(timeout=120)
    assert len(published) == 100
    wait_drained(names)
    worker.wait_for_log("reconnected to NATS")
    stats = worker.terminate()

    store = open_store(database_url)
    assert totals(store, "acme") == expected(answers)
    store.close()
    assert stats["accepted"] == 3000


# --- publish ---------------------------------------------------------------------------------


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "csatdist", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=False,
    )


def test_publish_loads_a_file_once_even_when_run_twice(bare_names: Names, tmp_path: Path) -> None:
    names = bare_names
    answers = [answer(i) for i in range(250)]
    source = tmp_path / "answers.ndjson"
    source.write_bytes(ndjson(answers) + b"\n{broken\n")

    missing = cli("publish", str(source), "--account", "acme", env=names.env)
    assert missing.returncode == 2
    assert "no stream captures" in " ".join(missing.stderr.split())

    run(_create_streams(names))
    first = cli("publish", str(source), "--account", "acme", "--json", env=names.env)
    assert first.returncode == 1  # the unreadable line is reported, not silently skipped
    report = orjson.loads(first.stdout)
    assert report["answers"] == 250
    assert report["messages"] == 3
    assert report["duplicate_messages"] == 0
    assert report["unreadable"][0]["index"] == 250
    again = orjson.loads(
        cli("publish", str(source), "--account", "acme", "--json", env=names.env).stdout
    )
    assert again["duplicate_messages"] == 3  # JetStream dropped the second copy

    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    run(consume_until_drained(names, store, names.settings(f"sqlite:///{tmp_path / 'c.db'}")))
    assert totals(store, "acme") == expected(answers)
    store.close()
