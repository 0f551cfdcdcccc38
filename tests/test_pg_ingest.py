"""PostgreSQL's ingest write path: answers copied into the answer log (binary COPY), counter
changes as one packed change-log row per version, both folded later (tests/test_pg_fold.py).
Replicas writing one database count each answer once, a follower sees every acknowledged
answer, and a writer killed mid-batch leaves whole batches only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from csatdist.answers import Answer
from csatdist.buckets import BUCKET_MS
from csatdist.store import Store, open_store, postgres
from csatdist.store.postgres import PostgresStore
from tests.helpers import postgres_schema

pytestmark = pytest.mark.postgresql

ROOT = Path(__file__).resolve().parents[1]
NOW = (int(time.time() * 1000) // BUCKET_MS) * BUCKET_MS


def batch(first: int, size: int, *, score: int | None = None) -> list[Answer]:
    """Answers ``a-first`` … spread over 50 buckets, 7 skills and 13 agents."""
    return [
        Answer(
            n - first,
            f"a-{n}",
            NOW - (n % 50) * BUCKET_MS - 1000,
            n % 7,
            n % 13,
            score if score is not None else 1 + n % 5,
            conversation_id=f"c-{n}",
            comment=None if n % 3 else f"comment {n} \t'\"\\ é",
        )
        for n in range(first, first + size)
    ]


def totals(store: Store, account: str = "acme") -> list[int]:
    """Counts per score as a cold load gives them: the counters' snapshot, then the change log
    after the version they hold (an ingest's counters may not be folded yet)."""
    version, rows = store.account_snapshot(account)
    later = store.account_changes(account, version).rows
    return [sum(row[3 + s] for row in [*rows, *later]) for s in range(5)]


def followed(store: Store, account: str = "acme") -> list[int]:
    """Counts per score as a follower sums them from the change log since version 0."""
    changes = store.account_changes(account, 0)
    assert changes.purged_through == 0
    return [sum(row[3 + s] for row in changes.rows) for s in range(5)]


@pytest.fixture
def url() -> Iterator[str]:
    with postgres_schema() as database:
        yield database


def test_records_are_copied_with_every_field(url: str) -> None:
    with mock.patch.object(postgres, "FOLD_IDLE_SECONDS", 3600.0):  # folded when asked
        store = open_store(url)
    try:
        sent = batch(0, 300)
        assert store.record_answers("acme", sent).accepted == 300
        assert isinstance(store, PostgresStore)
        with store._connection() as conn:
            rows = conn.execute(
                "SELECT answer_id, answer_time, skill_id, agent_id, score, updated_ms,"
                " conversation_id, comment FROM answer_log WHERE account_id = 'acme'"
            ).fetchall()
        assert len(rows) == 300  # acknowledged into the log; the fold moves them as they are
        store._all_counted()
        store._fold_all()
        with store._connection() as conn:
            rows = conn.execute(
                "SELECT answer_id, answer_time, skill_id, agent_id, score, updated_ms,"
                " conversation_id, comment FROM answers WHERE account_id = 'acme'"
            ).fetchall()
        assert sorted(rows) == sorted(
            (
                a.id,
                a.time_ms,
                a.skill_id,
                a.agent_id,
                a.score,
                a.updated,
                a.conversation_id,
                a.comment,
            )
            for a in sent
        )
    finally:
        store.close()


def test_two_replicas_replaying_overlapping_batches_count_each_answer_once(url: str) -> None:
    """Two stores on one database ingest the same overlapping batches at once: each id is
    counted once, and a third follows the change log to the same counts."""
    replicas = [open_store(url), open_store(url)]
    follower = open_store(url)
    errors: list[BaseException] = []

    def ingest(store: Store, order: list[int]) -> None:
        try:
            for number in order:
                store.record_answers("acme", batch(number * 250, 500))
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)

    try:
        threads = [
            threading.Thread(target=ingest, args=(replicas[0], list(range(20)))),
            threading.Thread(target=ingest, args=(replicas[1], list(reversed(range(20))))),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        expected = [0] * 5
        for answer in batch(0, 19 * 250 + 500):
            expected[answer.score - 1] += 1
        assert totals(follower) == expected
        assert followed(follower) == expected
        replayed = replicas[1].record_answers("acme", batch(0, 19 * 250 + 500))
        assert (replayed.accepted, replayed.duplicates) == (0, 19 * 250 + 500)
        assert totals(follower) == followed(follower) == expected
    finally:
        for store in (*replicas, follower):
            store.close()


def test_corrections_and_erasures_move_the_packed_change_log(url: str) -> None:
    store = open_store(url)
    follower = open_store(url)
    try:
        store.record_answers("acme", batch(0, 100, score=5))
        version = follower.account_changes("acme", 0).version
        corrected = [
            Answer(a.index, a.id, a.time_ms, a.skill_id, a.agent_id, 1, updated_ms=NOW)
            for a in batch(0, 10)
        ]
        assert store.record_answers("acme", corrected).updated == 10
        assert store.erase_answers("acme", ["a-50", "a-51"], NOW).erased == ["a-50", "a-51"]
        later = follower.account_changes("acme", version)
        assert later.version == version + 2
        assert [sum(row[3 + s] for row in later.rows) for s in range(5)] == [10, 0, 0, 0, -12]
        assert totals(store) == followed(follower) == [10, 0, 0, 0, 88]
    finally:
        store.close()
        follower.close()


_WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from tests.test_pg_ingest import batch
    from csatdist.store import open_store
    store = open_store({url!r})
    for number in range(1000):
        store.record_answers("acme", batch(number * 5000, 5000, score=1 + number % 5))
        print(number, flush=True)
    """
)


@pytest.mark.slow
def test_a_writer_killed_mid_batch_leaves_whole_batches(url: str) -> None:
    """kill -9 of a process ingesting batches of 5,000: every acknowledged batch is counted,
    records, counters and change log agree, and no batch is there in part."""
    open_store(url).close()  # migrated before the writer starts
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER.format(root=str(ROOT), url=url)],
        stdout=subprocess.PIPE,
        env={**os.environ, "CSATDIST_LOG_LEVEL": "warning"},
    )
    acknowledged = -1
    assert writer.stdout is not None
    try:
        while acknowledged < 3:
            line = writer.stdout.readline()
            assert line, "the writer stopped"
            acknowledged = int(line)
        time.sleep(0.05)  # into the middle of a later batch
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    store = open_store(url)
    try:
        counts = totals(store)
        assert followed(store) == counts
        assert sum(counts) % 5000 == 0, counts  # whole batches only
        whole = sum(counts) // 5000
        assert whole >= acknowledged + 1
        assert counts == [5000 * sum(1 for n in range(whole) if n % 5 == s) for s in range(5)]
        assert isinstance(store, PostgresStore)
        with store._connection() as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM answers WHERE account_id = 'acme')"
                " + (SELECT count(*) FROM answer_log WHERE account_id = 'acme')"
            ).fetchone()
        assert row is not None
        assert row[0] == sum(counts)
        replay = store.record_answers("acme", batch(0, 5000 * (whole + 1), score=1))
        assert (replay.accepted, replay.duplicates) == (5000, 5000 * whole)
    finally:
        store.close()
