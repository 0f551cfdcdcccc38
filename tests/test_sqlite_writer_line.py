"""The processes writing one SQLite database take its write lock in the order they asked
(csatdist.store.writer_line): a worker's one-answer write waits for the turn running in another
worker, not for that worker's whole flood. Before the line, SQLite's busy handler gave the lock
to whoever asked when it came free, nearly always the writer that had just committed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from csatdist.store import sqlite as sqlite_module
from csatdist.store import writer_line
from csatdist.store.sqlite import SQLiteStore
from csatdist.store.writer_line import WriterLine
from tests.test_resource_limits import _Gated, _submit
from tests.test_store import ans, totals

pytestmark = pytest.mark.sqlite


def _tickets_taken(line: WriterLine) -> int:
    return int(line._counters[0])


def _wait_for(condition: Any, what: str) -> None:
    """Wait until ``condition()`` holds: the line's own state, no timing."""
    for _ in range(1000):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"never: {what}")


def _joining(line: WriterLine, events: list[str], name: str, leave: threading.Event) -> Any:
    def run() -> None:
        ticket = line.join()
        events.append(name)
        leave.wait(10)
        line.leave(ticket)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_writers_get_their_turns_in_the_order_they_asked(tmp_path: Path) -> None:
    lines = [WriterLine(tmp_path / "db") for _ in range(3)]
    events: list[str] = []
    leave = {name: threading.Event() for name in ("second", "third")}
    try:
        first = lines[0].join()
        second = _joining(lines[1], events, "second", leave["second"])
        _wait_for(lambda: _tickets_taken(lines[0]) == first + 2, "the second in line")
        third = _joining(lines[2], events, "third", leave["third"])
        _wait_for(lambda: _tickets_taken(lines[0]) == first + 3, "the third in line")
        assert lines[0].others_waiting(first)
        time.sleep(0.05)
        assert events == []  # both wait for the first turn
        lines[0].leave(first)
        _wait_for(lambda: events == ["second"], "the second's turn")
        time.sleep(0.05)
        assert events == ["second"]  # the third waits for the second's turn to end
        leave["second"].set()
        _wait_for(lambda: events == ["second", "third"], "the third's turn")
        leave["third"].set()
        for thread in (second, third):
            thread.join(10)
        assert not lines[0].others_waiting(lines[0].join())  # nobody behind: on at once
    finally:
        for event in leave.values():
            event.set()
        for line in lines:
            line.close()


def test_a_turn_held_too_long_is_skipped_and_the_line_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn held past STALL_SECONDS (a process in another pid namespace, a stuck writer) is
    skipped: the waiter goes on to SQLite's own lock; the late holder's leave changes nothing."""
    monkeypatch.setattr(writer_line, "STALL_SECONDS", 0.2)
    stuck, waiter, later = (WriterLine(tmp_path / "db") for _ in range(3))
    try:
        held = stuck.join()
        started = time.monotonic()
        mine = waiter.join()
        assert time.monotonic() - started >= 0.2
        stuck.leave(held)  # too late: the waiter's turn is not ended by it
        assert waiter._counters[1] == mine
        waiter.leave(mine)
        assert later.join() == mine + 1  # at once: the line is whole again
    finally:
        for line in (stuck, waiter, later):
            line.close()


def test_a_line_file_that_cannot_be_opened_leaves_the_store_writing_without_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "db-writers").mkdir()  # in the way of the line's file
    assert WriterLine.open(tmp_path / "db") is None
    store = SQLiteStore(tmp_path / "db")
    try:
        store.record_answers("acme", [ans("a")])
        assert totals(store) == (0, 0, 0, 0, 1)
    finally:
        store.close()


def test_a_long_job_of_one_process_lets_another_process_write_in_between(
    tmp_path: Path,
) -> None:
    """A job of many parts (a 10,000-answer batch) commits after its running part once it has
    held the lock YIELD_AFTER_SECONDS while a writer of another store (another worker) waits,
    as it does for another account of its own store. Before the line, the other store's
    one-answer write waited for the whole job (SQLite's busy handler)."""
    path = tmp_path / "shared.db"
    flooding, other = SQLiteStore(path), SQLiteStore(path)
    first_part, finished = threading.Event(), threading.Event()

    def part(conn: Any) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS scratch (x INTEGER)")
        conn.execute("INSERT INTO scratch VALUES (1)")
        first_part.set()
        time.sleep(0.01)

    def flood() -> None:
        flooding._writer.run_parts([part] * 100, "flood")  # a second at least
        finished.set()

    thread = threading.Thread(target=flood)
    try:
        thread.start()
        assert first_part.wait(10)
        other.record_answers("victim", [ans("v")])
        assert not finished.is_set()  # written in between, not after the flood's job
        assert totals(other, "victim") == (0, 0, 0, 0, 1)
        thread.join(30)
        assert finished.is_set()
    finally:
        thread.join(30)
        flooding.close()
        other.close()


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from csatdist.store.sqlite import SQLiteStore

    store = SQLiteStore(sys.argv[1])

    def hold(conn):
        conn.execute("CREATE TABLE IF NOT EXISTS held (x INTEGER)")
        conn.execute("INSERT INTO held VALUES (1)")
        print("holding", flush=True)
        time.sleep(600)

    store._writer.run(hold)
    """
)


def test_a_turn_held_by_a_killed_process_is_skipped_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 of a process in its turn, mid-transaction: the writers waiting behind it go on
    as soon as they see its pid gone (not after STALL_SECONDS, here far beyond the test's
    patience), and nothing of its transaction is kept."""
    monkeypatch.setattr(writer_line, "STALL_SECONDS", 600.0)
    path = tmp_path / "killed.db"
    store = SQLiteStore(path)  # migrated before the holder takes its turn
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    written = threading.Event()

    def write() -> None:
        store.record_answers("acme", [ans("a")])
        written.set()

    thread = threading.Thread(target=write)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        line = store._line
        assert line is not None
        taken = _tickets_taken(line)
        thread.start()
        _wait_for(lambda: _tickets_taken(line) == taken + 1, "the write in line")
        time.sleep(0.1)
        assert not written.is_set()  # it waits for the holder's turn
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        thread.join(20)
        assert written.is_set()
        assert totals(store) == (0, 0, 0, 0, 1)
        store._writer.run(lambda conn: conn.execute("CREATE TABLE IF NOT EXISTS held (x INTEGER)"))
        assert (
            store._writer.run(lambda conn: conn.execute("SELECT count(*) FROM held").fetchone())[0]
            == 0
        )
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
        thread.join(20)
        store.close()


@contextlib.contextmanager
def _flood_with_other_in_line(
    tmp_path: Path, *gated: str
) -> Iterator[tuple[SQLiteStore, WriterLine, _Gated, list[threading.Thread]]]:
    """Two stores on one file: this one's flood (``flood-1`` held until opened, then
    ``flood-2``) in its turn, the other's write (``other``) waiting in the line for it. Yields
    this store, the line, the jobs and their threads; waits for them and closes both stores."""
    mine, other = SQLiteStore(tmp_path / "two.db"), SQLiteStore(tmp_path / "two.db")
    jobs = _Gated("flood-1", *gated)
    threads: list[threading.Thread] = []
    try:
        line = mine._line
        assert line is not None
        threads.append(_submit(mine, [jobs.work("flood-1"), jobs.work("flood-2")], "flood"))
        jobs.started("flood-1")
        taken = _tickets_taken(line)
        threads.append(_submit(other, [jobs.work("other")], "other"))
        _wait_for(lambda: _tickets_taken(line) == taken + 1, "the other store in line")
        yield mine, line, jobs, threads
    finally:
        jobs.open_all()
        for thread in threads:
            thread.join(10)
        mine.close()
        other.close()


def test_a_write_arriving_while_another_process_writes_goes_ahead_of_this_ones_flood(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store waiting for its turn in the line chooses its job when the turn comes: an
    account's write that arrived meanwhile goes ahead of the flood back in line for more, as
    it does within one process. Choosing before waiting ran the flood's next part first, so
    the write waited for the other process's turn, the flood's, and the other's again."""
    monkeypatch.setattr(sqlite_module, "YIELD_AFTER_SECONDS", 0.0)  # every part may yield
    with _flood_with_other_in_line(tmp_path, "other") as (mine, line, jobs, threads):
        taken = _tickets_taken(line)
        jobs.open("flood-1")  # the flood yields to the other store and goes back in line
        jobs.started("other")
        _wait_for(lambda: _tickets_taken(line) == taken + 1, "this store in line again")
        threads.append(_submit(mine, [jobs.work("victim")], "victim"))
        jobs.open("other")
        for thread in threads:
            thread.join(10)
        assert jobs.order == ["flood-1", "other", "victim", "flood-2"]


def test_a_write_a_flood_yields_to_shares_its_commit_before_another_process_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood that yields because this process's account waits takes that account's small
    write into its transaction, then commits: the write does not wait for the turn of the
    other process in line too (committing first and joining the line again put it behind)."""
    monkeypatch.setattr(sqlite_module, "YIELD_AFTER_SECONDS", 0.05)
    with _flood_with_other_in_line(tmp_path) as (mine, _, jobs, threads):
        threads.append(_submit(mine, [jobs.work("victim")], "victim"))
        time.sleep(0.06)  # flood-1 has held the lock over YIELD_AFTER_SECONDS
        jobs.open("flood-1")
        for thread in threads:
            thread.join(10)
        assert jobs.order == ["flood-1", "victim", "other", "flood-2"]


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(10)
    return child.pid


def test_tickets_left_by_processes_gone_are_skipped_when_a_writer_opens_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a server killed with -9 while its writers waited leaves in the file: tickets
    nobody will use. The next writer to open the line skips them."""
    monkeypatch.setattr(writer_line, "STALL_SECONDS", 600.0)
    old = WriterLine(tmp_path / "db")
    dead = _dead_pid()
    for ticket in range(3):  # three tickets, taken and never left, by a process now gone
        old._owners[2 * ticket] = dead
        old._owners[2 * ticket + 1] = old._namespace
    old._counters[0] = 3
    old.close()
    fresh = WriterLine(tmp_path / "db")
    try:
        assert fresh._counters[1] == 3  # skipped as it opened, before anyone waits on them
        assert fresh.join() == 3
    finally:
        fresh.close()


def test_a_turn_of_another_pid_namespace_is_waited_for_until_the_stall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pid means nothing in another namespace (a container sharing the volume): its turn is
    not judged by it (the pid here is of no live process), but by how long it lasts."""
    monkeypatch.setattr(writer_line, "STALL_SECONDS", 0.3)
    holder, waiter = WriterLine(tmp_path / "db"), WriterLine(tmp_path / "db")
    try:
        held = holder.join()
        holder._owners[2 * held] = _dead_pid()
        holder._owners[2 * held + 1] = holder._namespace + 1
        started = time.monotonic()
        waiter.join()
        assert time.monotonic() - started >= 0.3
    finally:
        holder.close()
        waiter.close()


def test_a_writer_whose_line_fails_goes_on_writing_without_it(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db")
    try:
        line = store._line
        assert line is not None
        # Once the writer has left the line after the store's first jobs (their results come
        # just before), the line fails under it: its next turn cannot join.
        _wait_for(lambda: line._counters[1] == line._counters[0], "the writer out of line")
        line.close()
        writing = threading.Thread(target=store.record_answers, args=("acme", [ans("a")]))
        writing.start()
        writing.join(20)
        assert not writing.is_alive()  # a writer that died with the line never answers
        assert totals(store) == (0, 0, 0, 0, 1)
        assert store._writer._line is None
    finally:
        store.close()
