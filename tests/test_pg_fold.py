"""PostgreSQL's append-only write path (migration 11): an ingest writes the answer log and the
change log before its reply, and a fold moves them into the records and the counters later
(docs/performance.md, "PostgreSQL ingest before and after"). What was acknowledged must read the
same before the fold, after it, after kill -9 in the middle of one, from another store on the
same database, and with several stores folding and writing at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import psycopg
import pytest

from csatdist.buckets import window_for
from csatdist.store import AnswersRequest, CountsRequest
from csatdist.store import postgres as pg
from csatdist.store.postgres import PostgresStore
from tests.helpers import T_13_29, postgres_schema
from tests.receivers import wait_until
from tests.test_store import NONE, ans

pytestmark = pytest.mark.postgresql

ROOT = Path(__file__).resolve().parents[1]
MIN = 60_000


@pytest.fixture
def url() -> Iterator[str]:
    with postgres_schema() as database:
        yield database


@pytest.fixture
def no_background_fold() -> Iterator[None]:
    """Nothing folds unless a read, a close or the test asks."""
    with (
        mock.patch.object(pg, "FOLD_AFTER_ROWS", 10**9),
        mock.patch.object(pg, "FOLD_IDLE_SECONDS", 3600.0),
    ):
        yield


def pending(url: str, account: str = "acme") -> tuple[int, int, int]:
    """(answers in the log, answers in the records, versions the counters lack) read directly."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM answer_log WHERE account_id = %(a)s),"
            " (SELECT count(*) FROM answers WHERE account_id = %(a)s),"
            " (SELECT version FROM account_versions WHERE account_id = %(a)s)"
            " - coalesce((SELECT folded_version FROM account_folds WHERE account_id = %(a)s), 0)",
            {"a": account},
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2] or 0)


def totals(store: PostgresStore, account: str = "acme") -> tuple[int, ...]:
    rows = store.counts(CountsRequest(account, window_for(T_13_29, 1440), None, None, NONE))
    return rows[0].counts if rows else (0, 0, 0, 0, 0)


def listed_scores(store: PostgresStore, account: str = "acme") -> dict[str, int | None]:
    request = AnswersRequest(account, T_13_29 - 1440 * MIN, T_13_29 + MIN, limit=10_000)
    return {record.answer_id: record.score for record in store.list_answers(request)}


def cold_totals(store: PostgresStore, account: str = "acme") -> tuple[int, ...]:
    """Counts as a server's first query gives them: the snapshot, then the changes after it."""
    version, rows = store.account_snapshot(account)
    later = store.account_changes(account, version).rows
    return tuple(sum(row[3 + s] for row in [*rows, *later]) for s in range(5))


def test_an_ingest_writes_the_logs_and_reads_see_it_before_any_fold(
    url: str, no_background_fold: None
) -> None:
    writer, reader = PostgresStore(url), PostgresStore(url)
    try:
        writer.record_answers("acme", [ans("a", score=5), ans("b", score=2, agent=11)])
        assert pending(url) == (2, 0, 1)  # acknowledged: in the logs only
        # a cold load names the version its counters hold; the change log has the rest
        assert reader.account_snapshot("acme") == (0, [])
        assert reader.account_snapshots(["acme"], 100) == {"acme": (0, [])}
        assert cold_totals(reader) == (0, 1, 0, 0, 1)
        # the records are read in the log too
        assert listed_scores(reader) == {"a": 5, "b": 2}
        assert reader.latest_answer_ms("acme") == T_13_29
        assert pending(url) == (2, 0, 1)  # none of these folded
        # sums fold the counters first (the records stay in the log: they are read there)
        assert totals(reader) == (0, 1, 0, 0, 1)
        assert pending(url) == (2, 0, 0)
        version, rows = reader.account_snapshot("acme")
        assert (version, len(rows)) == (1, 2)
        reader._fold_all()
        assert pending(url) == (0, 2, 0)
        assert listed_scores(reader) == {"a": 5, "b": 2}
    finally:
        writer.close()
        reader.close()


def test_duplicates_corrections_and_erasures_reach_answers_in_the_log_and_folded_ones(
    url: str, no_background_fold: None
) -> None:
    store = PostgresStore(url)
    try:
        store.record_answers("acme", [ans("folded1", score=5), ans("folded2", score=4)])
        store._fold_all()
        store.record_answers("acme", [ans("logged1", score=3), ans("logged2", score=2)])
        assert pending(url)[:2] == (2, 2)
        # a replay of either kind is a duplicate, counted once
        replay = store.record_answers("acme", [ans("folded1"), ans("logged1"), ans("new")])
        assert (replay.accepted, replay.duplicates) == (1, 2)
        later = T_13_29 + 1
        fixed = [
            pg.Answer(0, "folded1", T_13_29, 1, 10, 1, updated_ms=later),
            pg.Answer(0, "logged1", T_13_29, 1, 10, 1, updated_ms=later),
        ]
        assert store.record_answers("acme", fixed).updated == 2
        assert store.record_answers("acme", [ans("logged1", score=3)]).duplicates == 1
        erased = store.erase_answers("acme", ["folded2", "logged2", "never"], T_13_29)
        assert (erased.erased, erased.unknown) == (["folded2", "logged2"], ["never"])
        assert pending(url)[:2] == (2, 1)  # logged1 and new in the log, folded1 folded
        assert listed_scores(store) == {"folded1": 1, "logged1": 1, "new": 5}
        assert cold_totals(store) == totals(store) == (2, 0, 0, 0, 1)
        store._fold_all()
        assert pending(url) == (0, 3, 0)
        assert listed_scores(store) == {"folded1": 1, "logged1": 1, "new": 5}
        assert totals(store) == (2, 0, 0, 0, 1)
        assert store.record_answers("acme", [ans("logged2", score=5)]).refused
    finally:
        store.close()


def test_a_purge_takes_old_answers_from_the_log_too(url: str, no_background_fold: None) -> None:
    store = PostgresStore(url)
    try:
        old = T_13_29 - 2000 * MIN
        store.record_answers("acme", [ans("old", old), ans("recent")])
        result = store.purge(T_13_29 - 1445 * MIN)
        assert result.records == 1
        assert listed_scores(store) == {"recent": 5}
        assert pending(url) == (1, 0, 0)
    finally:
        store.close()


def test_changes_the_counters_lack_are_never_purged(url: str, no_background_fold: None) -> None:
    """A follower catches up from the version its snapshot names: purging the change log
    folds first, and keeps what was written since."""
    store = PostgresStore(url)
    try:
        store.record_answers("acme", [ans("a", score=5)])
        assert store.purge_changes(T_13_29 * 10) == 1  # every change, once folded
        version, rows = store.account_snapshot("acme")
        assert (version, [r[3:] for r in rows]) == (1, [(0, 0, 0, 0, 1)])
        assert store.account_changes("acme", 0).purged_through == 1
    finally:
        store.close()


def test_two_stores_folding_while_a_third_writes_count_each_answer_once(url: str) -> None:
    """Several replicas fold one account at once (one step each at a time, in any order) while
    another corrects and erases answers the folds are moving: nothing is lost or doubled."""
    with (
        mock.patch.object(pg, "FOLD_AFTER_ROWS", 10**9),
        mock.patch.object(pg, "FOLD_IDLE_SECONDS", 3600.0),
        mock.patch.object(pg, "FOLD_STEP_ROWS", 150),
    ):
        folders = [PostgresStore(url), PostgresStore(url)]
        writer = PostgresStore(url)
        try:
            scores = {f"n{i}": 1 + i % 5 for i in range(3000)}
            answers = [ans(i, agent=10 + n % 7, score=s) for n, (i, s) in enumerate(scores.items())]
            for start in range(0, len(answers), 500):
                writer.record_answers("acme", answers[start : start + 500])
            errors: list[BaseException] = []

            def fold(store: PostgresStore, wait: bool) -> None:
                try:
                    for _ in range(3):
                        store._fold_all(wait=wait)
                except BaseException as exc:
                    errors.append(exc)

            def write() -> None:
                try:
                    for n in range(0, 3000, 97):
                        answer_id = f"n{n}"
                        fixed = pg.Answer(0, answer_id, T_13_29, 2, 10, 3, updated_ms=T_13_29 + 1)
                        assert writer.record_answers("acme", [fixed]).updated == 1
                        scores[answer_id] = 3
                        gone = f"n{n + 1}"
                        assert writer.erase_answers("acme", [gone], T_13_29).erased == [gone]
                        del scores[gone]
                        assert writer.record_answers("acme", [ans(f"late{n}", score=4)]).accepted
                        scores[f"late{n}"] = 4
                except BaseException as exc:
                    errors.append(exc)

            threads = [
                threading.Thread(target=fold, args=(folders[0], True)),
                threading.Thread(target=fold, args=(folders[1], False)),
                threading.Thread(target=write),
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert not errors, errors
            expected = Counter(scores.values())
            assert totals(folders[1]) == tuple(expected[s] for s in range(1, 6))
            assert listed_scores(folders[0]) == scores
            folders[0]._fold_all()
            assert pending(url) == (0, len(scores), 0)
            assert listed_scores(writer) == scores
            assert cold_totals(writer) == tuple(expected[s] for s in range(1, 6))
            replay = writer.record_answers("acme", answers)
            assert replay.accepted == 0
            assert replay.duplicates + len(replay.refused) == len(answers)
        finally:
            for store in (*folders, writer):
                store.close()


_FOLDER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from csatdist.store import postgres as pg
    pg.FOLD_AFTER_ROWS = 10**9
    pg.FOLD_IDLE_SECONDS = 3600.0
    pg.FOLD_STEP_ROWS = 200
    steps = 0
    step = pg._fold_step

    def slow(*args, **kwargs):
        global steps
        done = step(*args, **kwargs)
        steps += 1
        if steps == {kill_at}:  # the step's work done, not committed
            print("folding", flush=True)
            time.sleep(600)
        return done

    pg._fold_step = slow
    store = pg.PostgresStore({url!r})
    store._fold_all()
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [1, 5])
def test_kill_9_in_the_middle_of_a_fold_loses_and_doubles_nothing(
    url: str, no_background_fold: None, kill_at: int
) -> None:
    """A fold killed in a step (the first, or the fifth: four moved answers and committed,
    the fifth moves the rest and adds changes to the counters): the step's rows are where
    they were, and the next fold moves and counts each once."""
    store = PostgresStore(url)
    try:
        sent = [ans(f"n{i}", agent=10 + i % 9, score=1 + i % 5) for i in range(1000)]
        store.record_answers("acme", sent[:600])
        store.record_answers("acme", sent[600:])
        store.record_answers(
            "acme", [pg.Answer(0, "n0", T_13_29, 2, 10, 5, updated_ms=T_13_29 + 1)]
        )
        store.erase_answers("acme", ["n1", "n2"], T_13_29)
        assert pending(url) == (998, 0, 4)
        folder = subprocess.Popen(
            [sys.executable, "-c", _FOLDER.format(root=str(ROOT), url=url, kill_at=kill_at)],
            stdout=subprocess.PIPE,
            env={**os.environ, "CSATDIST_LOG_LEVEL": "warning"},
        )
        assert folder.stdout is not None
        try:
            assert folder.stdout.readline() == b"folding\n"
            os.kill(folder.pid, signal.SIGKILL)
        finally:
            folder.kill()
            folder.wait()
            folder.stdout.close()
        logged, folded, behind = pending(url)
        assert logged + folded == 998
        assert logged > 0  # killed before the end
        assert behind > 0
        if kill_at > 1:
            assert folded > 0  # steps before the kill committed
        expected: Counter[int] = Counter(1 + i % 5 for i in range(1000) if i not in (0, 1, 2))
        expected[5] += 1  # n0, corrected to 5
        want = tuple(expected[s] for s in range(1, 6))
        assert cold_totals(store) == want
        assert Counter(listed_scores(store).values()) == expected
        store._fold_all()
        assert pending(url) == (0, 998, 0)
        assert totals(store) == cold_totals(store) == want
        assert Counter(listed_scores(store).values()) == expected
        replay = store.record_answers("acme", sent)
        assert (replay.accepted, replay.duplicates, len(replay.refused)) == (0, 998, 2)
    finally:
        store.close()


def test_a_store_folds_in_the_background_once_enough_is_pending(url: str) -> None:
    with (
        mock.patch.object(pg, "FOLD_AFTER_ROWS", 50),
        mock.patch.object(pg, "FOLD_IDLE_SECONDS", 3600.0),
    ):
        store = PostgresStore(url)
        try:
            store.record_answers("acme", [ans(f"n{i}", agent=10 + i % 9) for i in range(100)])
            for _ in range(200):
                if pending(url) == (0, 100, 0):
                    break
                threading.Event().wait(0.05)
            assert pending(url) == (0, 100, 0)
        finally:
            store.close()


class _RecordedWaits(threading.Event):
    """The folder's wake-up event, recording how long it is asked to wait; a wait shorter than
    ``rest`` returns at once (time passes quickly), one of ``rest`` really waits."""

    def __init__(self, rest: float) -> None:
        super().__init__()
        self.rest = rest
        self.timeouts: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(float(timeout or 0))
        return super().wait(timeout if timeout is not None and timeout >= self.rest else 0.001)


def test_an_idle_folder_looks_less_and_less_often_and_a_write_wakes_it(url: str) -> None:
    rest = 3600.0
    with mock.patch.object(pg, "FOLD_REST_SECONDS", rest):
        store = PostgresStore(url)
        try:
            waits, started = _RecordedWaits(rest), store._wake
            store._wake = waits
            started.set()  # from its first wait on to the recorded event
            # nothing pending: each look waits twice as long as the one before, up to the rest
            wait_until(lambda: rest in waits.timeouts, 30, "the folder to rest")
            looks = waits.timeouts[: waits.timeouts.index(rest) + 1]
            assert looks == sorted(looks), looks
            assert len(set(looks)) >= 5, looks
            # resting for an hour, it is woken by this store's write, and folds it once idle
            resting = len(waits.timeouts)
            store.record_answers("acme", [ans("woken")])
            wait_until(lambda: pending(url) == (0, 1, 0), 30, "the write to be folded")
            assert pg.FOLD_IDLE_SECONDS in waits.timeouts[resting:]
            wait_until(lambda: waits.timeouts[-1] == rest, 30, "the folder to rest again")
        finally:
            store.close()
