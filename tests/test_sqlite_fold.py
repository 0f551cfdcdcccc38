"""SQLite's append-only write path: an ingest writes the answer log and the change log, and a
fold moves them into the records and the counters later (docs/performance.md, "The SQLite write
path"). What was acknowledged must read the same before the fold, after it, after kill -9
between the two, and from another store on the same file.
"""

from __future__ import annotations

import functools
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csatdist.buckets import BUCKET_MS, window_for
from csatdist.history import history_deltas
from csatdist.records import delta_rows
from csatdist.store import AnswersRequest, CountsRequest, packed
from csatdist.store import history as history_sql
from csatdist.store import sqlite as sqlite_store
from csatdist.store.sqlite import SQLiteStore
from tests.helpers import T_13_29
from tests.test_store import NONE, ans

pytestmark = pytest.mark.sqlite

MIN = 60_000


@pytest.fixture
def no_background_fold() -> Iterator[None]:
    """Nothing folds unless a read or a close needs it."""
    with (
        mock.patch.object(sqlite_store, "FOLD_AFTER_ROWS", 10**9),
        mock.patch.object(sqlite_store, "FOLD_IDLE_SECONDS", 3600.0),
    ):
        yield


def pending_rows(path: Path) -> tuple[int, int, int]:
    """(pending, answers in the log, accounts whose counters are behind) read directly."""
    with closing(sqlite3.connect(path)) as conn:
        return (
            conn.execute("SELECT pending FROM fold_state").fetchone()[0],
            conn.execute("SELECT count(*) FROM answer_log").fetchone()[0],
            conn.execute(
                "SELECT count(*) FROM account_versions WHERE version > folded_version"
            ).fetchone()[0],
        )


def totals(store: SQLiteStore, account: str = "acme") -> tuple[int, ...]:
    rows = store.counts(CountsRequest(account, window_for(T_13_29, 1440), None, None, NONE))
    return rows[0].counts if rows else (0, 0, 0, 0, 0)


def listed_scores(store: SQLiteStore, account: str = "acme") -> dict[str, int]:
    request = AnswersRequest(account, T_13_29 - 1440 * MIN, T_13_29 + MIN, limit=1000)
    return {record.answer_id: record.score for record in store.list_answers(request)}


def test_an_ingest_writes_the_logs_and_a_read_of_the_counters_folds_them(
    tmp_path: Path, no_background_fold: None
) -> None:
    store = SQLiteStore(tmp_path / "f.db")
    try:
        store.record_answers("acme", [ans("a", score=5), ans("b", score=1)])
        # acknowledged, not folded: in the logs only
        assert pending_rows(tmp_path / "f.db") == (3, 2, 1)  # 2 answers, 1 counter changed
        assert totals(store) == (1, 0, 0, 0, 1)
        assert pending_rows(tmp_path / "f.db") == (0, 0, 0)
        assert listed_scores(store) == {"a": 5, "b": 1}
    finally:
        store.close()


def test_corrections_and_erasures_reach_records_in_the_log_and_folded_ones(
    tmp_path: Path, no_background_fold: None
) -> None:
    store = SQLiteStore(tmp_path / "f.db")
    try:
        store.record_answers("acme", [ans("folded1", score=5), ans("folded2", score=4)])
        assert totals(store) == (0, 0, 0, 1, 1)  # folded now
        store.record_answers("acme", [ans("logged1", score=3), ans("logged2", score=2)])
        assert pending_rows(tmp_path / "f.db")[1] == 2
        later = T_13_29 + 1
        fixed = [
            sqlite_store.Answer(0, "folded1", T_13_29, 1, 10, 1, updated_ms=later),
            sqlite_store.Answer(0, "logged1", T_13_29, 1, 10, 1, updated_ms=later),
        ]
        assert store.record_answers("acme", fixed).updated == 2
        assert store.record_answers("acme", [ans("logged1", score=3)]).duplicates == 1
        erased = store.erase_answers("acme", ["folded2", "logged2", "never"], T_13_29)
        assert (erased.erased, erased.unknown) == (["folded2", "logged2"], ["never"])
        # the log lost an answer to the erasure: pending overcounts until the fold, then is 0
        assert pending_rows(tmp_path / "f.db")[:2] != (0, 0)
        assert totals(store) == (2, 0, 0, 0, 0)
        assert pending_rows(tmp_path / "f.db") == (0, 0, 0)
        assert listed_scores(store) == {"folded1": 1, "logged1": 1}
        assert store.record_answers("acme", [ans("logged2", score=5)]).refused
    finally:
        store.close()


def test_another_store_on_the_file_reads_what_one_acknowledged_before_the_fold(
    tmp_path: Path, no_background_fold: None
) -> None:
    writer, reader = SQLiteStore(tmp_path / "f.db"), SQLiteStore(tmp_path / "f.db")
    try:
        writer.record_answers("acme", [ans("a", score=5), ans("b", score=2, agent=11)])
        # a follower's catch-up from the change log, before anything is folded
        changes = reader.account_changes("acme", 0)
        assert changes.version == 1
        assert sorted(changes.rows) == sorted(
            [
                (T_13_29 - T_13_29 % (5 * MIN) + 5 * MIN, 1, 10, 0, 0, 0, 0, 1),
                (T_13_29 - T_13_29 % (5 * MIN) + 5 * MIN, 1, 11, 0, 1, 0, 0, 0),
            ]
        )
        # a snapshot names the version its counters hold; the change log has the rest
        assert reader.account_snapshot("acme") == (0, [])
        assert reader.account_snapshots(["acme"], 100) == {"acme": (0, [])}
        # the records read the log too
        assert reader.latest_answer_ms("acme") == T_13_29
        assert listed_scores(reader) == {"a": 5, "b": 2}
        assert pending_rows(tmp_path / "f.db")[0] > 0  # none of these folded
        writer.record_answers("acme", [ans("c", score=4)])
        assert totals(reader) == (0, 1, 0, 1, 1)  # sums fold first
        assert pending_rows(tmp_path / "f.db") == (0, 0, 0)
        version, rows = reader.account_snapshot("acme")
        assert (version, len(rows)) == (2, 2)
        assert listed_scores(reader) == {"a": 5, "b": 2, "c": 4}
    finally:
        writer.close()
        reader.close()


def test_the_snapshot_version_is_the_counters_own_while_another_store_writes(
    tmp_path: Path, no_background_fold: None
) -> None:
    """A snapshot names the version its counters hold, never a later one: what another store
    acknowledged since the last fold reaches the reader through the change log, once."""
    writer, reader = SQLiteStore(tmp_path / "f.db"), SQLiteStore(tmp_path / "f.db")
    try:
        writer.record_answers("acme", [ans("a", score=5)])
        assert totals(reader) == (0, 0, 0, 0, 1)  # folded
        writer.record_answers("acme", [ans("b", score=1)])  # version 2, not folded
        version, rows = reader.account_snapshot("acme")
        assert version == 1
        assert [r[3:] for r in rows] == [(0, 0, 0, 0, 1)]
        later = reader.account_changes("acme", version)
        assert later.version == 2
        assert [r[3:] for r in later.rows] == [(1, 0, 0, 0, 0)]
    finally:
        writer.close()
        reader.close()


_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from csatdist.store import sqlite as s
    s.FOLD_AFTER_ROWS = 10**9
    s.FOLD_IDLE_SECONDS = 3600.0
    store = s.SQLiteStore(sys.argv[1])
    T = int(sys.argv[2])
    store.record_answers("acme", [s.Answer(0, f"n{i}", T, 1, 10 + i % 3, 1 + i % 5)
                                  for i in range(300)])
    store.record_answers("acme", [s.Answer(0, "n0", T, 2, 10, 5, updated_ms=T + 1)])
    store.erase_answers("acme", ["n1", "n2"], T)
    print("acknowledged", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_kill_9_between_the_acknowledgement_and_the_fold_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "f.db"
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(T_13_29)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert "acknowledged" in child.stdout
    pending, logged, behind = pending_rows(path)
    assert (logged, behind) == (298, 1)  # killed with nothing folded
    assert pending > 0

    expected: Counter[int] = Counter(1 + i % 5 for i in range(300) if i not in (0, 1, 2))
    expected[5] += 1  # n0, corrected to 5
    store = SQLiteStore(path)  # opening folds what the killed process left
    try:
        assert pending_rows(path) == (0, 0, 0)
        assert totals(store) == tuple(expected[n] for n in range(1, 6))
        assert Counter(listed_scores(store).values()) == expected
        assert store.record_answers("acme", [ans("n5", score=1)]).duplicates == 1
        assert store.account_snapshot("acme")[0] == store.account_version("acme") == 3
    finally:
        store.close()


def test_a_background_fold_takes_turns_with_other_accounts_writes(tmp_path: Path) -> None:
    """A fold of a large backlog runs a step per turn, each in parts: an account that writes
    meanwhile waits for the part running when it arrived, not for the step nor for the whole
    fold. (Each turn commits alone here: a group commit would take the waiting writes into the
    fold's transaction, tests/test_resource_limits.py.)"""
    with (
        mock.patch.object(sqlite_store, "FOLD_AFTER_ROWS", 10**9),
        mock.patch.object(sqlite_store, "FOLD_IDLE_SECONDS", 3600.0),
        mock.patch.object(sqlite_store, "FOLD_STEP_ROWS", 100),
        mock.patch.object(sqlite_store, "FOLD_PART_ROWS", 25),
        mock.patch.object(sqlite_store, "YIELD_AFTER_SECONDS", 0.0),
    ):
        store = SQLiteStore(tmp_path / "f.db")
        try:
            store.record_answers("flood", [ans(f"f{i}", agent=10 + i % 50) for i in range(2000)])
            events: list[str] = []
            victim_ran = threading.Event()
            step = sqlite_store._fold_step

            def late(conn: sqlite3.Connection) -> None:
                events.append("late")

            def victim(conn: sqlite3.Connection) -> None:
                events.append("victim")
                store._writer.submit(late, "late")  # arrives while the fold is back in line
                victim_ran.set()

            budgets: list[int] = []

            def counted(conn: sqlite3.Connection, budget: int) -> bool:
                events.append("part")
                budgets.append(budget)
                if events.count("part") == 2:  # another account writes while the fold runs
                    store._writer.submit(victim, "victim")
                return step(conn, budget)

            with mock.patch.object(sqlite_store, "_fold_step", counted):
                store._fold_in_steps()
                assert victim_ran.wait(30)
                assert totals(store, "flood")[4] == 2000
            # The step's parts 3 and 4 wait for the victim, who arrived during part 2, and for
            # "late", who arrived while the fold was back in line for more (background work
            # goes behind the accounts' writes that arrive: tests/test_resource_limits.py).
            assert events[:5] == ["part", "part", "victim", "late", "part"]
            assert events.count("part") > 10
            assert budgets[:4] == [25, 25, 25, 25]  # the background fold's parts
        finally:
            store.close()


@pytest.mark.parametrize("read", ["counts", "roll_up", "purge_changes"])
def test_a_read_that_needs_the_fold_lets_other_writes_in_between_its_steps(
    tmp_path: Path, no_background_fold: None, read: str
) -> None:
    """The counters' sums, the roll-up and the change log's purge fold what is pending first. A
    large backlog (after a flood) is folded a step per turn of the writer, so another account's
    write waits for one step, not for the whole backlog (the purge every minute folded it all
    in one transaction, seconds of every account's writes under attack); the read still sees
    every answer acknowledged before it. Each step runs in parts that yield to a waiting write
    as a large ingest's do: the write waits for the part running when it arrived, not for the
    step (a 20,000-row step was one part, 70 to 400 ms under bench/abuse.py's attack)."""
    with (
        mock.patch.object(sqlite_store, "FOLD_STEP_ROWS", 100),
        mock.patch.object(sqlite_store, "FOLD_PART_ROWS", 25),
    ):
        store = SQLiteStore(tmp_path / "f.db")
        try:
            store.record_answers("flood", [ans(f"f{i}", agent=10 + i % 50) for i in range(2000)])
            events: list[str] = []
            budgets: list[int] = []
            step = sqlite_store._fold_step

            def victim(conn: sqlite3.Connection) -> None:
                events.append("victim")

            def counted(conn: sqlite3.Connection, budget: int) -> bool:
                events.append("step")
                budgets.append(budget)
                if events.count("step") == 2:  # another account writes while the fold runs
                    threading.Thread(target=store._writer.run, args=(victim, "victim")).start()
                    time.sleep(0.1)  # queued before this part ends
                return step(conn, budget)

            with mock.patch.object(sqlite_store, "_fold_step", counted):
                if read == "counts":
                    assert totals(store, "flood")[4] == 2000
                elif read == "roll_up":
                    store.roll_up(T_13_29)
                else:
                    store.purge_changes(0)
            # The victim, arriving in the step's second part, waits for that part only.
            assert events[:3] == ["step", "step", "victim"]
            assert budgets[:4] == [25, 25, 25, 25]
            assert events.count("step") > 10
            assert pending_rows(tmp_path / "f.db") == (0, 0, 0)
            assert totals(store, "flood")[4] == 2000
        finally:
            store.close()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([5, 10]),
            st.integers(1, 3),
            st.integers(10, 12),
            st.integers(-3, 3),
            st.integers(-3, 3),
            st.integers(-3, 3),
            st.integers(-3, 3),
            st.integers(-3, 3),
        ),
        max_size=30,
    ),
    st.integers(1, 5),
)
def test_packed_changes_sum_like_adding_them_one_by_one(
    rows: list[tuple[int, ...]], split: int
) -> None:
    blobs = [packed.pack(rows[i : i + split]) for i in range(0, len(rows), split)]
    naive: dict[tuple[int, ...], list[int]] = {}
    for row in rows:
        sums = naive.setdefault(row[:3], [0] * 5)
        for n in range(5):
            sums[n] += row[3 + n]
    deltas = {key: tuple(sums) for key, sums in naive.items()}
    assert packed.summed(blobs) == delta_rows(deltas)  # type: ignore[arg-type]


def test_the_writer_inserts_many_rows_per_statement(
    tmp_path: Path, no_background_fold: None
) -> None:
    """The answer log and the counters get many rows per statement, not one statement per row
    (``executemany``): each statement gives the GIL up once while SQLite works, and each
    return waits for another thread's switch interval when one runs Python, so a row-by-row
    batch stalled the writer, and every account's writes behind it, under load. The counts
    and the records are the same as the rows'."""
    store = SQLiteStore(tmp_path / "f.db")
    started: Counter[str] = Counter()

    def traced(sql: str) -> None:
        started[" ".join(sql.split()[:3])] += 1

    try:
        store._writer.run(lambda conn: conn.set_trace_callback(traced))
        answers = [
            ans(f"a{i}", T_13_29 - (i % 280) * 5 * MIN, skill=i % 7, agent=i % 300, score=1 + i % 5)
            for i in range(3_000)
        ]
        assert store.record_answers("acme", answers).accepted == 3_000
        assert 0 < started["INSERT INTO answer_log"] <= 6 * 6  # 6 parts of 500: 256, 128, … 4
        assert totals(store) == (600, 600, 600, 600, 600)  # the fold's upserts
        assert 0 < started["INSERT INTO buckets"] <= 6 * 6  # the read's 6 fold parts of 500
        assert len(listed_scores(store)) == 1000  # the listing's page
    finally:
        store.close()


def test_a_roll_up_step_yields_to_other_accounts_writes_between_its_parts(
    tmp_path: Path, no_background_fold: None
) -> None:
    """An account's roll-up (its first after a start is a day of counters, 110 steps of 5,000
    rows on bench/abuse.py's large day) runs each step in parts of ROLL_PART_ROWS rows (a bucket
    at least) that yield to a waiting write: another account's write waits for the part running
    when it arrived, not for the step (130 ms under that bench's attack, once over a second).
    The history is the same as rolled in one go."""
    hour_start = T_13_29 - T_13_29 % 3_600_000 - 2 * 3_600_000  # a finished hour, 12 buckets
    answers = [
        ans(f"a{b}-{pair}", hour_start + b * 300_000 + 1, agent=10 + pair, score=1 + b % 5)
        for b in range(12)
        for pair in range(2)  # two counter rows per bucket
    ]
    whole = SQLiteStore(tmp_path / "whole.db")
    try:
        whole.record_answers("acme", answers)
        whole.roll_up(hour_start + 3_600_000)
        expected = history_rows(tmp_path / "whole.db")
    finally:
        whole.close()
    with (
        mock.patch.object(sqlite_store, "ROLL_PART_ROWS", 2),
        mock.patch.object(sqlite_store, "YIELD_AFTER_SECONDS", 0.0),
    ):
        store = SQLiteStore(tmp_path / "f.db")
        try:
            store.record_answers("acme", answers)
            events: list[str] = []
            real = sqlite_store.history_sql.roll_up_step

            def victim(conn: sqlite3.Connection) -> None:
                events.append("victim")

            def recorded(*args: Any) -> int:
                events.append("part")
                if events.count("part") == 2:  # another account writes during the second part
                    threading.Thread(target=store._writer.run, args=(victim, "victim")).start()
                    time.sleep(0.1)
                return int(real(*args))

            with mock.patch.object(sqlite_store.history_sql, "roll_up_step", recorded):
                store.roll_up(hour_start + 3_600_000)
            assert events[:3] == ["part", "part", "victim"]  # not after the 12-bucket step
            assert events.count("part") >= 12  # a bucket (two rows) per part
            assert history_rows(tmp_path / "f.db") == expected
        finally:
            store.close()


def history_rows(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT * FROM history ORDER BY 1, 2, 3, 4, 5").fetchall()


def test_run_many_writes_an_upsert_many_rows_a_statement_with_executemany_s_result(
    tmp_path: Path,
) -> None:
    """The history's and the directory's ``run_many`` on SQLite turns a one-row ``INSERT …
    VALUES`` (an upsert clause after it or not) into statements of many rows: one GIL release
    per statement rather than per row. The rows still apply in order, as ``executemany``
    applies them: a key given twice is upserted twice, and an upsert's WHERE sees the rows
    before it. Other statements go row by row."""
    upsert = (
        "INSERT INTO names AS d (id, name, updated) VALUES (?, ?, ?) ON CONFLICT (id)"
        " DO UPDATE SET name = excluded.name, updated = excluded.updated"
        " WHERE d.updated <= excluded.updated"
    )
    rows = [(i % 300, f"n{i}", (i * 7919) % 1000) for i in range(1000)]  # each id 3 or 4 times
    results = []
    for many in (True, False):
        with closing(sqlite3.connect(tmp_path / f"{many}.db")) as conn:
            conn.execute("CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT, updated INT)")
            statements: list[str] = []
            conn.set_trace_callback(statements.append)
            if many:
                _, run_many = sqlite_store._runners(conn)
                run_many(upsert, rows)
                run_many("DELETE FROM names WHERE id = ?", [(1,), (2,)])
            else:
                conn.executemany(upsert, rows)
                conn.executemany("DELETE FROM names WHERE id = ?", [(1,), (2,)])
            conn.set_trace_callback(None)
            results.append(conn.execute("SELECT * FROM names ORDER BY id").fetchall())
            if many:
                assert len([s for s in statements if s.startswith("INSERT")]) <= 8
    assert results[0] == results[1]
    assert len(results[0]) == 298


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(-600, 600),  # bucket number around 1970: before it too
            st.integers(0, 3),
            st.integers(0, 5),
            *[st.integers(-3, 3)] * 5,
        ),
        max_size=40,
        unique_by=lambda row: row[:3],
    )
)
def test_the_roll_up_sums_in_sql_what_history_deltas_sums_in_python(
    tmp_path_factory: pytest.TempPathFactory, buckets: list[tuple[int, ...]]
) -> None:
    """The roll-up's statements (`_roll_up_sql`, the database summing) write the history rows
    the reference path writes (`history_deltas` then `add_history`): each tier and kind's
    slot rounded down (before 1970 as after), zero sums left out, signed counts kept, the
    buckets of other accounts and outside the range left alone."""
    rows = [
        (number * BUCKET_MS, skill, agent, *counts) for number, skill, agent, *counts in buckets
    ]
    after, through = -300 * BUCKET_MS, 300 * BUCKET_MS
    results = []
    for how in ("sql", "python"):
        path = tmp_path_factory.mktemp(how) / "h.db"
        SQLiteStore(path).close()  # the schema
        with closing(sqlite3.connect(path)) as conn:
            for account in ("acme", "other"):
                conn.executemany(
                    "INSERT INTO buckets (account_id, bucket_end, skill_id, agent_id, score1,"
                    " score2, score3, score4, score5) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(account, *row) for row in rows],
                )
            _, run_many = sqlite_store._runners(conn)
            if how == "sql":
                for sql in history_sql._roll_up_sql("?"):
                    run_many(sql, [("acme", "acme", after, through)])
            else:
                inside = [row for row in rows if after < row[0] <= through]
                if inside:
                    history_sql.add_history(run_many, "?", "acme", history_deltas(inside))
            results.append(
                (
                    conn.execute("SELECT * FROM history ORDER BY 1, 2, 3, 4, 5").fetchall(),
                    conn.execute("SELECT * FROM history_pairs ORDER BY 1, 2, 3, 4").fetchall(),
                )
            )
    assert results[0] == results[1]


def test_a_roll_up_part_folds_at_most_a_part_before_it_rolls(
    tmp_path: Path, no_background_fold: None
) -> None:
    """A roll-up part rolls up only counters that hold every change, so it folds first; while
    more than a fold part is pending (other accounts wrote between the parts) it folds one
    part and rolls nothing, so no part holds the writer for a whole backlog. The roll-up
    still ends rolled through, with every answer counted once."""
    with mock.patch.object(sqlite_store, "FOLD_PART_ROWS", 25):
        store = SQLiteStore(tmp_path / "f.db")
        try:
            store.record_answers("flood", [ans(f"f{i}", agent=10 + i % 50) for i in range(400)])
            budgets: list[int] = []
            step = sqlite_store._fold_step

            def counted(conn: sqlite3.Connection, budget: int) -> bool:
                budgets.append(budget)
                return step(conn, budget)

            part = functools.partial(
                sqlite_store._roll_up_step, account_id="flood", up_to=T_13_29, max_rows=500
            )
            with mock.patch.object(sqlite_store, "_fold_step", counted):
                assert store._writer.run(part, "flood") == 0  # folded a part, rolled nothing
            assert budgets == [25]
            assert sum(pending_rows(tmp_path / "f.db")) > 0
            store.roll_up(T_13_29 - T_13_29 % BUCKET_MS)
            assert pending_rows(tmp_path / "f.db") == (0, 0, 0)
            assert totals(store, "flood")[4] == 400
        finally:
            store.close()
