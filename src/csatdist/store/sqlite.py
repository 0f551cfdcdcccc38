"""SQLite backend: WAL, one writer thread, one reader connection per thread (Datasette's pattern).

Every write runs on the writer thread inside ``BEGIN IMMEDIATE``, so a process's writes are
serialised without busy-waiting and never block readers; the writers of several processes on
one file (the workers of ``serve --workers N``) take turns in the order they asked, a waiter
polling a shared ticket (:mod:`csatdist.store.writer_line`). ``synchronous=FULL`` (default)
makes each commit durable before the reply, across a process crash and a power loss.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import orjson

from csatdist.answers import Answer
from csatdist.buckets import CLOCK_SKEW_MS, floor_to_bucket
from csatdist.directory import Directory, DirectoryUpdate
from csatdist.distribution import CountRow
from csatdist.errors import StoreUnavailable
from csatdist.records import Deltas, delta_rows, erasure_deltas, plan_ingest
from csatdist.report.assembly import SumRow, SumsRequest
from csatdist.store import (
    AccountChanges,
    AnswerRecord,
    AnswersRequest,
    ApiKey,
    AttemptRecord,
    BucketRow,
    CountsRequest,
    DeliveryRecord,
    ErasureOutcome,
    EvaluationOutcome,
    IngestOutcome,
    OutboxLimits,
    PendingDelivery,
    PurgeResult,
    Session,
    StoredRule,
    User,
    packed,
)
from csatdist.store import alerts as alerts_sql
from csatdist.store import history as history_sql
from csatdist.store.directory import apply_update, names_of_answers, read_directory
from csatdist.store.history import changes_to_rolled_buckets
from csatdist.store.migrations import SchemaTooNew, migrations_for
from csatdist.store.sql import (
    ACCOUNT_VERSION,
    BUSIEST_ACCOUNTS,
    CORRECT_RECORD,
    KEY_COLUMNS,
    RECORD_COLUMNS,
    RECORD_TABLES,
    REVOKE_SESSIONS,
    SESSION_COLUMNS,
    SNAPSHOT_ROWS,
    SNAPSHOT_SIZES,
    STORED_COLUMNS,
    USER_COLUMNS,
    correction_values,
    erasure_outcome,
    group_columns,
    key_from_row,
    key_values,
    listed_records,
    listing_query,
    record_values,
    session_from_row,
    session_values,
    snapshot_accounts,
    snapshots_from_rows,
    stored_from_row,
)
from csatdist.store.writer_line import WriterLine

T = TypeVar("T")
P = ParamSpec("P")
#: How long closing the store waits for running reads to return.
CLOSE_WAIT_SECONDS = 10.0
log = logging.getLogger("csatdist.store")
PURGE_CHUNK = 5000
#: Finished alert deliveries stay in the log this long after the answers' retention.
DELIVERY_LOG_MS = 6 * 24 * 3600_000
_SYNCHRONOUS = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
#: The writing connection's page cache, KiB (SQLite's default is 2,000).
WRITER_CACHE_KIB = 64 * 1024
#: WAL pages after which a commit checkpoints (SQLite's default is 1,000). The checkpointer
#: thread (:class:`_Checkpointer`) copies the WAL into the database file in the background, so
#: such a commit copies only what the thread has not yet (at most about
#: :data:`CHECKPOINT_EVERY_SECONDS` of commits) and lets the next transaction restart the WAL
#: from its start, which a checkpoint on another connection can seldom do while commits keep
#: coming (each leaves frames it has not copied): with the writer's own checkpoints put off to
#: 32,000 pages, the WAL grew to 128 MiB. Before the thread, the crossing commit copied all
#: 8,000 pages (32 MiB and two fsyncs) and held the writer, and every write waiting behind it,
#: for the whole copy.
WAL_CHECKPOINT_PAGES = 8000
#: How long the checkpointer lets commits gather before it checkpoints what they wrote: a page
#: several commits rewrite in that time is copied to the database once.
CHECKPOINT_EVERY_SECONDS = 0.5
#: Answers of one ingest written as one part (about 10 ms of the writer's time alone). A turn
#: ends only between parts: under bench/abuse.py's attack, with fold parts of 2,500 rows, a
#: flood's turns lasted 79 ms median and 229 ms p99, the fold's 106 and 329 ms, for a yield
#: time of 50 ms (every statement hands the GIL to the busy threads and waits to take it
#: back). Parts of 100 answers were tried: a 10,000-answer batch alone then took 1.6 times
#: as long (1,100 ms median against 697, eight batches each, load 7), each part's lookups and
#: change-log row costing the same however few answers it holds.
INGEST_PART = 500
#: A job of several parts that has held the writer this long commits after its running part
#: when another account's write is waiting, and lets it in. Each commit writes every page the
#: transaction touched to the WAL again (random ids and buckets: ~2,000 pages per 500 answers),
#: so committing after every part would multiply a flood's disk writes by about 5; 25 ms
#: (50 before) bounds a waiting write's delay by a turn of that plus a part, and only while
#: a write waits.
YIELD_AFTER_SECONDS = 0.025
#: Pending rows (answer log and counter changes) after which an ingest queues a fold. Folding
#: more at once writes each page of the records' and counters' indexes once for more answers;
#: folding all of it takes the writer about 0.2 s, the longest a read that needs it waits.
FOLD_AFTER_ROWS = 60_000
#: Rows folded per transaction (about 70 ms of the writer's time): a background fold takes
#: turns with the accounts' writes, as a long ingest does.
FOLD_STEP_ROWS = 20_000
#: A background fold step runs in parts of this many rows (a fortieth of a step; see
#: :data:`INGEST_PART` for how long fold turns of 2,500-row parts lasted; folding 30,000
#: answers in parts of 500 took 491 ms median against 444, six runs each, load 7): a step that
#: has held the writer for :data:`YIELD_AFTER_SECONDS` while an account's write waits commits
#: after its running part and lets it in, as a large ingest does. (A step's size was chosen
#: when it began; under load a 20,000-row step took 150 to 400 ms, which a write arriving just
#: after it waited for whole.)
FOLD_PART_ROWS = 500
#: Counter rows a part of a roll-up step reads at most (a bucket at least: one bucket of
#: bench/abuse.py's large day holds about 1,300). A step of the history's
#: ``ROLL_STEP_ROWS`` (5,000) rows was one part before, 130 ms of the writer's time under that
#: bench's attack and over a second once; an account's first roll-up after a start (a day of
#: counters, 110 such steps) made every other account's write wait for one of them whole: the
#: victim's one-answer writes p99 139 ms (one 30 s run). In parts, a step yields as a large
#: ingest does.
ROLL_PART_ROWS = 500
#: How many keys arriving in the writer's line may go ahead of one back in line for more (a
#: flood's next part or batch, the fold's next step) before it has its turn: the server's
#: default limit of write requests in flight in all, so that every write waiting when it went
#: back passes it, and it waits at most that many small turns more than in plain rotation.
MAX_OVERTAKES = 8
#: The writer folds what is pending once it has had no work for this long.
FOLD_IDLE_SECONDS = 0.5
#: The fold's turn among the accounts' in the writer's line.
FOLD_KEY = "\x00fold"
#: What the writers' line may raise (its file gone bad, closed, a corrupt owner): the writer
#: then goes on without it.
_LINE_ERRORS = (OSError, ValueError, OverflowError)
_IDLE_KEY = "\x00idle"  # the idle work's job, never in the line (account ids have no NUL)

_INSERT_BUCKETS = (
    "INSERT INTO buckets (account_id, bucket_end, skill_id, agent_id,"
    " score1, score2, score3, score4, score5) VALUES"
)
_ADD_TO_BUCKETS = (
    " ON CONFLICT (account_id, bucket_end, skill_id, agent_id) DO UPDATE SET"
    " score1 = score1 + excluded.score1, score2 = score2 + excluded.score2,"
    " score3 = score3 + excluded.score3, score4 = score4 + excluded.score4,"
    " score5 = score5 + excluded.score5"
)
#: Rows in one multi-row INSERT, at most. ``executemany`` gives the GIL up around every row's
#: step and takes it back after: while another thread runs Python, each take waits for that
#: thread's switch interval, so a 5,000-row insert took 139 ms instead of 17 with one busy
#: thread beside it (a 1-answer commit 45 ms with two). One statement of many rows steps
#: through them all with the GIL given up once (54 ms at 1,024 rows a statement; the same
#: 17 alone). Each size is prepared once and kept: the statements up to 1,024 rows held
#: 3.4 MB, those up to 256 too little to tell from 64 (RSS), for 20 GIL releases per 5,000
#: rows instead of 5.
INSERT_CHUNK_ROWS = 256


#: An ``INSERT … VALUES (?, …)`` of one row (an upsert clause after it, or none).
_ONE_ROW_INSERT = re.compile(
    r"(?P<head>INSERT INTO .+? VALUES) \((?:\?, )*\?\)(?P<tail>(?: ON CONFLICT .*)?)", re.DOTALL
)


@functools.lru_cache(maxsize=64)
def _multi_row_insert(sql: str) -> tuple[str, str] | None:
    """The head and tail of ``sql`` for :func:`_insert_rows` when it is a one-row insert whose
    parameters are all in its row and that returns nothing; else None. ``run_many`` of the
    history (a fold's changes to buckets already rolled up) and the directory (:func:`_runners`)
    then writes its rows many a statement, for the reason given at :data:`INSERT_CHUNK_ROWS`
    (``executemany`` waits for the GIL after each row)."""
    insert = _ONE_ROW_INSERT.fullmatch(sql)
    if insert is None or "?" in insert["tail"] or "RETURNING" in insert["tail"].upper():
        return None
    return insert["head"], insert["tail"]


@functools.lru_cache(maxsize=128)
def _rows_sql(head: str, width: int, count: int, tail: str) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return f"{head} {', '.join([row] * count)}{tail}"


def _insert_rows(
    conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]], tail: str = ""
) -> None:
    """``head`` (``INSERT INTO t (columns) VALUES``) with ``rows`` and ``tail`` (an upsert
    clause), in statements of many rows: of power-of-two sizes, so that few distinct statements
    are prepared (each once: the connection's statement cache keeps them)."""
    if not rows:
        return
    width = len(rows[0])
    limit = min(INSERT_CHUNK_ROWS, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    done = 0
    while done < len(rows):
        count = 1 << (min(limit, len(rows) - done).bit_length() - 1)
        chunk = rows[done : done + count]
        conn.execute(
            _rows_sql(head, width, count, tail), list(itertools.chain.from_iterable(chunk))
        )
        done += count


_CORRECT_RECORD = CORRECT_RECORD.format(p="?", table="answers")
_CHANGES_BETWEEN = (
    "SELECT version, changes FROM change_log WHERE account_id = ? AND version > ?"
    " AND version <= ? ORDER BY version"
)
_LOG_RECORD = f"INSERT INTO answer_log (account_id, {RECORD_COLUMNS}) VALUES"
_CORRECTED_LOGGED = CORRECT_RECORD.format(p="?", table="answer_log")
_ERASED_AMONG = (
    "SELECT answer_id FROM erased_answers WHERE account_id = ?"
    " AND answer_id IN (SELECT value FROM json_each(?))"
)


def _records_among(conn: sqlite3.Connection, account_id: str, ids: bytes) -> list[Any]:
    """The :data:`STORED_COLUMNS` of the account's records among ``ids`` (a JSON list), folded
    or still in the log (an id is in one of them at most)."""
    rows = []
    for table in RECORD_TABLES:
        rows += conn.execute(
            f"SELECT {STORED_COLUMNS} FROM {table} WHERE account_id = ?"
            " AND answer_id IN (SELECT value FROM json_each(?))",
            (account_id, ids),
        ).fetchall()
    return rows


def _changes_between(
    conn: sqlite3.Connection, account_id: str, after: int, through: int
) -> list[BucketRow]:
    """The account's counter changes of versions (after, through], summed per counter, in the
    counters' order (so that upserting them walks the index forwards)."""
    rows = conn.execute(_CHANGES_BETWEEN, (account_id, after, through)).fetchall()
    return packed.summed(row[1] for row in rows)


def _log_changes(conn: sqlite3.Connection, account_id: str, deltas: Deltas, logged: int) -> int:
    """Move the account to its next version with signed counter changes in the change log (the
    counters get them at the next fold; other servers' aggregates follow the log at once), and
    count ``logged`` new log rows as well as the changes as pending. Returns what is pending."""
    rows = delta_rows(deltas)
    if rows:
        version = conn.execute(
            "INSERT INTO account_versions (account_id, version) VALUES (?, 1)"
            " ON CONFLICT (account_id) DO UPDATE SET version = version + 1"
            " RETURNING version",
            (account_id,),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO change_log (account_id, version, created_ms, changes) VALUES (?, ?, ?, ?)",
            (account_id, version, int(time.time() * 1000), packed.pack(rows)),
        )
    added = len(rows) + logged
    if not added:
        return 0
    return int(
        conn.execute(
            "UPDATE fold_state SET pending = pending + ? RETURNING pending", (added,)
        ).fetchone()[0]
    )


_MOVE_LOGGED = (
    f"INSERT INTO answers (account_id, {RECORD_COLUMNS})"
    f" SELECT account_id, {RECORD_COLUMNS} FROM (SELECT * FROM answer_log"
    " ORDER BY account_id, answer_id LIMIT ?) ORDER BY account_id, answer_time, answer_id"
)
_DELETE_MOVED = (
    "DELETE FROM answer_log WHERE (account_id, answer_id) IN (SELECT account_id, answer_id"
    " FROM answer_log ORDER BY account_id, answer_id LIMIT ?)"
)


def _fold_step(conn: sqlite3.Connection, budget: int) -> bool:
    """Inside the caller's write transaction, fold about ``budget`` pending rows: answers of
    the log into the records (sorted by time), then the accounts' unfolded versions of the
    change log, summed, into the counters and the history. True when nothing is left."""
    pending = int(conn.execute("SELECT pending FROM fold_state").fetchone()[0])
    if not pending:
        return True
    moved = conn.execute(_MOVE_LOGGED, (budget,)).rowcount
    if moved:
        conn.execute(_DELETE_MOVED, (budget,))
    left = budget - moved
    behind = conn.execute(
        "SELECT account_id, folded_version, version FROM account_versions"
        " WHERE version > folded_version"
    )
    run, run_many = _runners(conn)
    for account_id, folded, version in behind.fetchall():
        if left <= 0:
            break
        blobs: list[bytes] = []
        through = version
        for number, blob in conn.execute(_CHANGES_BETWEEN, (account_id, folded, version)):
            blobs.append(blob)
            left -= len(blob) // packed.ROW_BYTES
            if left <= 0:
                through = number
                break
        rows = packed.summed(blobs)
        _insert_rows(conn, _INSERT_BUCKETS, [(account_id, *row) for row in rows], _ADD_TO_BUCKETS)
        changes_to_rolled_buckets(run, run_many, "?", account_id, rows)
        conn.execute(
            "UPDATE account_versions SET folded_version = ? WHERE account_id = ?",
            (through, account_id),
        )
    done = left > 0  # the budget outlasted the log and every account's changes
    # Erasures take rows out of the log without counting them off: pending is an estimate
    # until nothing is left, and exact (0) then.
    conn.execute(
        "UPDATE fold_state SET pending = ?", (0 if done else max(1, pending - budget + left),)
    )
    return done


def _fold_parts_per_step() -> int:
    return max(1, FOLD_STEP_ROWS // FOLD_PART_ROWS)


def _fold(conn: sqlite3.Connection) -> None:
    """Fold everything pending, inside the caller's write transaction."""
    while not _fold_step(conn, FOLD_STEP_ROWS):
        pass


def _roll_up_step(
    conn: sqlite3.Connection, *, account_id: str, up_to: int, max_rows: int | None = None
) -> int:
    """A part of a roll-up step: the counters rolled up must hold every change, so while more
    than a fold part is pending it folds a part and rolls nothing (returning ``rolled_through``
    unchanged; the next parts go on), so that a part is bounded whatever other accounts wrote
    between the parts (a whole fold here took up to the 60,000 rows pending before a
    background fold starts)."""
    run, run_many = _runners(conn)
    if not _fold_step(conn, FOLD_PART_ROWS):
        return history_sql.rolled_through(run, "?", account_id)
    return history_sql.roll_up_step(run, run_many, "?", account_id, up_to, max_rows)


def _purge_history(conn: sqlite3.Connection, *, account_id: str, before: int) -> int:
    run, _ = _runners(conn)
    return history_sql.purge_history(run, "?", account_id, before)


def _runners(conn: sqlite3.Connection) -> tuple[history_sql.Run, history_sql.RunMany]:
    """``run`` and ``run_many`` of :mod:`csatdist.store.history` on a connection."""

    def run(sql: str, params: Sequence[Any]) -> list[Any]:
        return conn.execute(sql, params).fetchall()

    def run_many(sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if (insert := _multi_row_insert(sql)) is not None:
            _insert_rows(conn, insert[0], rows, insert[1])
        else:
            conn.executemany(sql, rows)

    return run, run_many


def _id_list(column: str, values: list[int]) -> tuple[str, Any]:
    return f"{column} IN (SELECT value FROM json_each(?))", orjson.dumps(values)


@contextmanager
def _unavailable_on_error(path: Path | None = None) -> Iterator[None]:
    """Engine failures (locked, read-only, disk full, I/O) become a 503 with a clear reason."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        hint = _disk_hint(path) if path is not None else ""
        raise StoreUnavailable(f"the SQLite store failed: {exc}{hint}") from exc


def _disk_hint(path: Path) -> str:
    """What the file system says, when SQLite's own message ("unable to open database file")
    does not: a read-only mount, a full disk, or a directory this process cannot write."""
    directory = path.parent if str(path.parent) else Path()
    try:
        stats = os.statvfs(directory)
    except OSError:
        return ""
    if stats.f_flag & os.ST_RDONLY:
        return f" (the file system holding {directory} is mounted read-only)"
    if stats.f_bavail == 0:
        return f" (the disk holding {directory} is full)"
    if not os.access(directory, os.W_OK):
        return f" (this process cannot write to {directory})"
    return ""


class _Job:
    """Work queued for the writer: parts run in order, each in the transaction it is given."""

    __slots__ = ("future", "parts", "results")

    def __init__(self, parts: Sequence[Callable[[sqlite3.Connection], Any]]) -> None:
        self.parts = deque(parts)
        self.results: list[Any] = []
        self.future: Future[list[Any]] = Future()


class _Checkpointer:
    """A thread that copies the WAL into the database file (a ``PASSIVE`` checkpoint, which
    waits for no reader or writer) at most every :data:`CHECKPOINT_EVERY_SECONDS` after a
    commit, on its own connection, so that the writer's own checkpoints (past
    :data:`WAL_CHECKPOINT_PAGES`) find little left to copy. Idle (no commit since its last
    checkpoint), it sleeps until the next."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._committed = threading.Event()
        self._stopping = threading.Event()
        self.checkpoints = 0  # complete ones so far (for tests and the curious)
        self._thread = threading.Thread(
            target=self._run, name="csatdist-sqlite-checkpointer", daemon=True
        )
        self._thread.start()

    def committed(self) -> None:
        """A commit wrote to the WAL (called by the writer after each)."""
        self._committed.set()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._committed.wait()
                if self._stopping.wait(CHECKPOINT_EVERY_SECONDS):  # more commits gather
                    return  # the last connection's close checkpoints what is left
                self._committed.clear()
                try:
                    if conn is None:
                        conn = self._connect()
                    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    # Not all copied (another connection's checkpoint running, readers pinning
                    # frames): the next one, or the writer's, goes on from there.
                    self.checkpoints += not busy and copied >= frames
                except sqlite3.Error as exc:  # I/O, say: the next one retries
                    log.warning("SQLite checkpoint failed: %s", exc)
        finally:
            if conn is not None:
                conn.close()

    def stop(self) -> None:
        self._stopping.set()
        self._committed.set()
        self._thread.join(timeout=10)


class _Writer:
    """A thread that owns the only writing connection and runs the jobs queued for it.

    Jobs are queued per key (the account they write for) and taken round-robin across keys: a
    key whose turn ends (its job done, or yielding) goes to the back of the line, behind every
    key that arrived meanwhile, even when it has more jobs queued. A key that arrives goes
    ahead of the keys back in line for more (and of the background fold), each passed at most
    :data:`MAX_OVERTAKES` times: an account writing now and then waits for the turn running
    when it arrives, not also for the turn of every flood and of the fold. A job of several parts (a
    large ingest, cut by :meth:`run_parts`) runs them in one transaction while no other key is
    waiting; when one is and the transaction has run for :data:`YIELD_AFTER_SECONDS`, it
    commits after the part that is running and goes back in line, so another account's commit
    waits about that long, never for a whole 10,000-answer batch nor for the flooding
    account's next one. The small jobs of the keys waiting when a turn ends join its transaction
    for up to that long more (a group commit, :meth:`_run_turns`): one commit for them all.

    Each turn first waits for its place in the line of the database's writers (other
    processes', :mod:`csatdist.store.writer_line`), then takes the first key in this process's
    line; a job yields to a waiting process as it does to a waiting key.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        idle: Callable[[sqlite3.Connection], Any] | None = None,
        committed: Callable[[], None] | None = None,
        line: WriterLine | None = None,
    ) -> None:
        self._idle = idle  # run in a transaction once the writer has been idle a while
        self._committed = committed  # told after each commit
        self._line = line  # the other processes writing the database (writer_line.py)
        self._ticket = -1  # this turn's place in that line
        self._worked = False  # a job ran since the last idle run
        self._queues: dict[str, deque[_Job]] = {}
        self._turns: deque[str] = deque()  # keys with queued jobs, in serving order
        # Keys in the line back for more (see _back_in_line): how often an arrival passed each.
        self._overtaken: dict[str, int] = {}
        self._stopping = False
        self._wakeup = threading.Condition()
        self._connect = connect
        self._ready: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._run, name="csatdist-sqlite-writer", daemon=True
        )
        self._thread.start()
        self._ready.result()

    def _wait(self) -> bool | None:
        """Wait for work: True once a key is in line, False when the idle work is due (after
        some work and :data:`FOLD_IDLE_SECONDS` without any), None when stopping."""
        with self._wakeup:
            while not self._turns:
                if self._stopping:
                    return None
                if self._idle is None or not self._worked:
                    self._wakeup.wait()
                elif not self._wakeup.wait(FOLD_IDLE_SECONDS) and not self._turns:
                    self._worked = False
                    return False
            self._worked = True
            return True

    def _next(self) -> tuple[str, _Job]:
        """The first key's first job (there is one: :meth:`_wait`). The key stays out of the
        line until :meth:`_turn_over` (its queue is kept meanwhile, so that jobs it gets wait
        for that)."""
        with self._wakeup:
            key = self._turns.popleft()
            self._overtaken.pop(key, None)
            return key, self._queues[key].popleft()

    def _turn_over(self, key: str, unfinished: _Job | None) -> None:
        """End ``key``'s turn: a job that yielded goes back to the head of its queue, and a key
        with jobs left to the back of the line."""
        with self._wakeup:
            jobs = self._queues[key]
            if unfinished is not None:
                jobs.appendleft(unfinished)
            if jobs:
                self._back_in_line(key)
                self._wakeup.notify()
            else:
                del self._queues[key]

    def _back_in_line(self, key: str) -> None:
        """``key`` to the back of the line, as one back for more (the caller holds the lock)."""
        self._turns.append(key)
        self._overtaken[key] = 0

    def _enqueue(self, key: str, job: _Job) -> None:
        """Queue ``job`` in ``key``'s line; the caller holds the lock. A key with no queue
        (neither waiting nor in its turn) joins the line behind the keys that arrived before it
        and ahead of those back for more that it may still pass; the fold, always at the back."""
        jobs = self._queues.get(key)
        if jobs is None:
            jobs = self._queues[key] = deque()
            if key == FOLD_KEY:
                self._back_in_line(key)
            else:
                at = len(self._turns)
                while (
                    at and self._overtaken.get(self._turns[at - 1], MAX_OVERTAKES) < MAX_OVERTAKES
                ):
                    at -= 1
                    self._overtaken[self._turns[at]] += 1
                self._turns.insert(at, key)
        jobs.append(job)
        self._wakeup.notify()

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        try:
            while (queued := self._wait()) is not None:
                # In the line of the database's writers first, then the job: the keys that
                # arrive meanwhile take their places in this process's line, and the first
                # of them has the turn (a write that arrived while another process wrote
                # goes ahead of this process's flood, as it does with one process).
                self._join_line()
                try:
                    if queued or self._turns:  # work that came while idle goes first
                        self._worked = True
                        self._run_turn(conn)
                    elif self._idle is not None:  # always: _wait is never idle without it
                        self._run_idle(conn, self._idle)
                finally:
                    self._leave_line()
        finally:
            conn.close()

    def _join_line(self) -> None:
        self._ticket = -1
        if self._line is not None:
            try:
                self._ticket = self._line.join()
            except _LINE_ERRORS as exc:
                self._without_line(exc)

    def _leave_line(self) -> None:
        if self._line is not None and self._ticket >= 0:
            try:
                self._line.leave(self._ticket)
            except _LINE_ERRORS as exc:
                self._without_line(exc)

    def _without_line(self, exc: BaseException) -> None:
        """The line failed (its file gone bad, closed under the writer): write without it,
        as a process that could not open it does, rather than stop writing."""
        log.warning("the SQLite writer goes on without the writers' line: %s", exc)
        self._line = None

    def _run_turn(self, conn: sqlite3.Connection) -> None:
        turns = [self._next()]
        try:
            self._run_turns(conn, turns)
        finally:
            for key, job in turns:
                self._turn_over(key, job if job.parts and not job.future.done() else None)

    def _run_idle(
        self, conn: sqlite3.Connection, idle: Callable[[sqlite3.Connection], Any]
    ) -> None:
        job = _Job([idle])
        if self._run_turns(conn, [(_IDLE_KEY, job)]) and job.future.exception():
            log.warning("the SQLite writer's idle work failed: %s", job.future.exception())

    def _run_turns(self, conn: sqlite3.Connection, turns: list[tuple[str, _Job]]) -> bool:
        """Run the turn in ``turns`` in one transaction and then, for up to
        :data:`YIELD_AFTER_SECONDS` more, the small jobs of the keys waiting next (appended to
        ``turns``; :meth:`_waiting_turn`): one commit, one sync of the WAL, for all of them (a
        group commit), where each waited for the commits of those before it — and, when the
        turn yielded to them, for another process's turn too: committed and back in the line
        of the database's writers, this process would let every process waiting there write
        before the write it yielded to (with two workers under a flood, a one-answer write
        waited 54 ms median, the other worker's turn and the end of its own). Each job learns
        its result only after the commit; a job that fails is rolled back alone (to a
        savepoint), unless it is the first. A job that yields keeps its parts left. Whether
        the first job ran at all (not cancelled)."""
        key, job = turns[0]
        if not (job.results or job.future.set_running_or_notify_cancel()):
            return False
        finished: list[_Job] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            began = time.monotonic()
            self._run_parts(conn, job, began)
            finished.append(job)
            grouping = time.monotonic()
            while key != _IDLE_KEY and time.monotonic() - grouping < YIELD_AFTER_SECONDS:
                waiting = self._waiting_turn()
                if waiting is None:
                    break
                turns.append(waiting)
                job = waiting[1]
                if not (job.results or job.future.set_running_or_notify_cancel()):
                    continue
                conn.execute("SAVEPOINT grouped")
                try:
                    self._run_parts(conn, job, began)
                except Exception as exc:
                    conn.execute("ROLLBACK TO grouped")
                    job.parts.clear()
                    job.future.set_exception(exc)
                    continue
                finally:
                    conn.execute("RELEASE grouped")
                finished.append(job)
            conn.execute("COMMIT")
            if self._committed is not None:
                self._committed()
        except BaseException as exc:  # nothing of this transaction is kept
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for _, job in turns:
                if not job.future.done():
                    job.parts.clear()
                    job.future.set_exception(exc)
            return True
        for job in finished:
            if not job.parts:
                job.future.set_result(job.results)
        return True

    def _run_parts(self, conn: sqlite3.Connection, job: _Job, began: float) -> None:
        """Run ``job``'s parts, stopping early (yielding) once the transaction begun at
        ``began`` has run :data:`YIELD_AFTER_SECONDS` while another key waits."""
        while job.parts:
            job.results.append(job.parts.popleft()(conn))
            if (
                job.parts
                and self._others_waiting()  # let them in, if this has run long
                and time.monotonic() - began >= YIELD_AFTER_SECONDS
            ):
                return

    def _others_waiting(self) -> bool:
        """Whether another key of this process, or another process, waits to write."""
        line = self._line
        return bool(self._turns) or (
            line is not None and self._ticket >= 0 and line.others_waiting(self._ticket)
        )

    def _waiting_turn(self) -> tuple[str, _Job] | None:
        """The next waiting key's first job when it is a small one (one part left, not the
        fold's), without waiting for one; None otherwise. Only small jobs join a group: each
        job of a group waits for the commit after the last, and a long one (a large batch, a
        fold step) would keep the small writes before it waiting."""
        with self._wakeup:
            if not self._turns or self._turns[0] == FOLD_KEY:
                return None
            if len(self._queues[self._turns[0]][0].parts) != 1:
                return None
            key = self._turns.popleft()
            self._overtaken.pop(key, None)
            return key, self._queues[key].popleft()

    def run(self, work: Callable[[sqlite3.Connection], T], key: str = "") -> T:
        """Run ``work`` in a transaction of its own, in ``key``'s turn; wait for the result."""
        return self.run_parts([work], key)[0]

    def submit(self, work: Callable[[sqlite3.Connection], Any], key: str) -> None:
        """Queue ``work`` in ``key``'s line, unless that key has a job queued already (or is
        stopping); do not wait for it. Safe on the writer's own thread, in ``key``'s turn too
        (the job then waits for the key's next turn)."""
        self.submit_parts([work], key)

    def submit_parts(self, parts: Sequence[Callable[[sqlite3.Connection], Any]], key: str) -> None:
        """:meth:`submit` for a job of several parts (as :meth:`run_parts` runs them)."""
        with self._wakeup:
            if not self._stopping and not self._queues.get(key):
                self._enqueue(key, _Job(parts))

    def run_parts(self, parts: Sequence[Callable[[sqlite3.Connection], T]], key: str) -> list[T]:
        """Run ``parts`` in order, in ``key``'s turn, and return their results: each part is
        all or nothing; consecutive parts share a transaction unless another key is waiting
        and the transaction has run for :data:`YIELD_AFTER_SECONDS`. If a part fails, the parts
        before it may be committed."""
        if not self._thread.is_alive():
            raise StoreUnavailable("the SQLite writer has stopped")
        job = _Job(parts)
        with self._wakeup:
            if self._stopping:
                raise StoreUnavailable("the SQLite store is closing")
            self._enqueue(key, job)
        return job.future.result()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Finish the jobs already queued, then end the thread."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        self._thread.join(timeout=10)


def _reading(
    method: Callable[Concatenate[SQLiteStore, P], T],
) -> Callable[Concatenate[SQLiteStore, P], T]:
    """A store method that reads through this thread's reader connection: counted while it
    runs, so :meth:`SQLiteStore.close` closes the readers only once no read is running."""

    @functools.wraps(method)
    def counted(self: SQLiteStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self._readers_lock:
            if self._closed:
                raise StoreUnavailable(f"the SQLite store {self.path} is closed")
            self._reads += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            with self._readers_lock:
                self._reads -= 1
                if not self._reads:
                    self._readers_lock.notify_all()

    return counted


class SQLiteStore:
    point_reads_inline = True

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}")
        self.path = Path(path)
        self._synchronous = synchronous.upper()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Condition()
        self._reads = 0  # store methods reading right now (see _reading)
        self._closed = False
        self._checkpointer = _Checkpointer(self._connect_checkpointer)
        self._line: WriterLine | None = None
        try:
            with _unavailable_on_error(self.path):
                if self.path.parent and not self.path.parent.exists():
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                self._line = WriterLine.open(self.path)
                self._writer = _Writer(
                    self._connect_writer,
                    idle=self._fold_part,
                    committed=self._checkpointer.committed,
                    line=self._line,
                )
                self._writer.run(self._migrate)
                self._writer.run(_fold)  # what a stopped or killed server left in the log
        except BaseException:
            self._checkpointer.stop()
            writer = getattr(self, "_writer", None)
            if writer is not None:
                writer.stop()
            if self._line is not None and (writer is None or not writer.running):
                self._line.close()
            raise

    # connections -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    def _connect_checkpointer(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")  # its syncs are the writer's
        return conn

    def _connect_writer(self) -> sqlite3.Connection:
        conn = self._connect()
        mode = _with_retries(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if str(mode).lower() != "wal":
            raise StoreUnavailable(f"cannot put {self.path} in WAL mode (got {mode})")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        # A batch of 5,000 new answers dirties some 4,000 pages at random places (records,
        # their time index, counters); with SQLite's default 2 MiB cache they are spilled to the
        # WAL mid-transaction and read back. The cache grows only as pages are used.
        conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
        # Past this threshold a commit checkpoints what the checkpointer thread has not copied
        # yet and the WAL restarts. Durability is the WAL's, fsynced at each commit
        # (synchronous=FULL), whoever checkpoints.
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
        # Erased answers and purged records are overwritten, not left in free pages (Debian's
        # SQLite does this by default; other builds do not).
        conn.execute("PRAGMA secure_delete = ON")
        return conn

    def _reader(self) -> sqlite3.Connection:
        """This thread's reader; only for methods marked ``@_reading``, which refuse a closed
        store and are counted so that :meth:`close` waits for them."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    # schema ------------------------------------------------------------------------------

    def _migrate(self, conn: sqlite3.Connection) -> int:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL)"
        )
        current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        version = int(current[0])
        known = migrations_for("sqlite")
        if known and version > known[-1].version:
            raise SchemaTooNew(
                f"{self.path} has schema version {version}; this csatdist knows up to "
                f"{known[-1].version}. Upgrade csatdist."
            )
        for migration in known:
            if migration.version <= version:
                continue
            for statement in _statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?, ?, ?)",
                (migration.version, migration.name, int(time.time() * 1000)),
            )
            version = migration.version
        return version

    def _fold_if(self, pending: int) -> None:
        """On the writer, after a write: queue a fold once enough is pending."""
        if pending >= FOLD_AFTER_ROWS:
            self._fold_in_steps()

    def _fold_in_steps(self) -> None:
        """Queue a background fold step in the fold's turn: :data:`FOLD_STEP_ROWS` rows in
        parts of :data:`FOLD_PART_ROWS` (yielding between parts as a large ingest does), and
        after its last part another step while anything is pending."""
        count = _fold_parts_per_step()
        parts = [functools.partial(self._fold_part, last=n == count - 1) for n in range(count)]
        self._writer.submit_parts(parts, FOLD_KEY)

    def _fold_part(self, conn: sqlite3.Connection, *, last: bool = True) -> None:
        """A part of a background fold step (the writer's idle work too: one part, then steps
        while anything is pending)."""
        if not _fold_step(conn, FOLD_PART_ROWS) and last:
            self._fold_in_steps()

    def _folded(self) -> None:
        """Before a read of the counters as a whole (sums, reports, the purge, the roll-up):
        fold what is pending (what any server acknowledged before this read began is then in
        them). A backlog is folded a step per turn of the writer, each step in parts of
        :data:`FOLD_PART_ROWS` that yield to a waiting write as a large ingest's do, then what
        came meanwhile at once: after a flood, a read that needs the fold never holds the
        writer for the whole backlog (the purge every minute did, seconds of every account's
        writes), nor for a whole step (one 20,000-row part took 70 to 400 ms). Reads of
        snapshots and of records need no fold: they read the logs too."""
        pending = int(self._reader().execute("SELECT pending FROM fold_state").fetchone()[0])
        if not pending:
            return
        part = functools.partial(_fold_step, budget=FOLD_PART_ROWS)
        step = [part] * _fold_parts_per_step()
        for _ in range(pending // FOLD_STEP_ROWS + 1):
            if any(self._writer.run_parts(step, FOLD_KEY)):
                return
        self._writer.run(_fold, key=FOLD_KEY)  # what came meanwhile (little but a flood's)

    @_reading
    def schema_version(self) -> int:
        with _unavailable_on_error(self.path):
            row = self._reader().execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    # answers and counts ------------------------------------------------------------------

    def record_answers(self, account_id: str, answers: Sequence[Answer]) -> IngestOutcome:
        if not answers:
            return IngestOutcome(0, 0, 0)

        def write(part: Sequence[Answer], conn: sqlite3.Connection) -> IngestOutcome:
            ids = orjson.dumps([a.id for a in part])
            stored = {row[0]: stored_from_row(row) for row in _records_among(conn, account_id, ids)}
            erased = [row[0] for row in conn.execute(_ERASED_AMONG, (account_id, ids))]
            plan = plan_ingest(part, stored, erased)
            _, run_many = _runners(conn)
            names_of_answers(run_many, "?", account_id, [*plan.new, *plan.corrected])
            _insert_rows(conn, _LOG_RECORD, [record_values(account_id, a) for a in plan.new])
            corrections = [correction_values(account_id, a) for a in plan.corrected]
            conn.executemany(_CORRECT_RECORD, corrections)  # a record already folded
            conn.executemany(_CORRECTED_LOGGED, corrections)  # or one still in the log
            pending = _log_changes(conn, account_id, plan.deltas, len(plan.new))
            self._fold_if(pending)
            return IngestOutcome(len(plan.new), len(plan.corrected), plan.duplicates, plan.refused)

        parts = [
            functools.partial(write, answers[i : i + INGEST_PART])
            for i in range(0, len(answers), INGEST_PART)
        ]
        with _unavailable_on_error(self.path):
            outcomes = self._writer.run_parts(parts, key=account_id)
        return IngestOutcome(
            sum(o.accepted for o in outcomes),
            sum(o.updated for o in outcomes),
            sum(o.duplicates for o in outcomes),
            [rejection for o in outcomes for rejection in o.refused],
        )

    def erase_answers(self, account_id: str, ids: Sequence[str], now_ms: int) -> ErasureOutcome:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return ErasureOutcome([], [])

        def write(conn: sqlite3.Connection) -> ErasureOutcome:
            listed = orjson.dumps(wanted)
            records = [stored_from_row(row) for row in _records_among(conn, account_id, listed)]
            before = {row[0] for row in conn.execute(_ERASED_AMONG, (account_id, listed))}
            for table in RECORD_TABLES:
                conn.execute(
                    f"DELETE FROM {table} WHERE account_id = ?"
                    " AND answer_id IN (SELECT value FROM json_each(?))",
                    (account_id, listed),
                )
            conn.executemany(
                "INSERT INTO erased_answers (account_id, answer_id, erased_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (account_id, answer_id) DO NOTHING",
                [(account_id, answer_id, now_ms) for answer_id in wanted],
            )
            self._fold_if(_log_changes(conn, account_id, erasure_deltas(records), 0))
            return erasure_outcome(wanted, records, before)

        with _unavailable_on_error(self.path):
            return self._writer.run(write, key=account_id)

    @_reading
    def list_answers(self, request: AnswersRequest) -> list[AnswerRecord]:
        conn = self._reader()
        with _unavailable_on_error(self.path):
            conn.execute("BEGIN")  # one WAL snapshot: a fold moves answers from one to the other
            try:
                rows = []
                for table in RECORD_TABLES:
                    sql, params = listing_query(request, "?", _id_list, table)
                    rows += conn.execute(sql, params).fetchall()
            finally:
                conn.execute("COMMIT")
        return listed_records(rows, request.limit)

    @_reading
    def counts(self, request: CountsRequest) -> list[CountRow]:
        window = request.window
        columns = group_columns(request, "NULL")
        sql = (
            f"SELECT {', '.join(columns)}, sum(score1), sum(score2), sum(score3), sum(score4),"
            " sum(score5) FROM buckets"
            " WHERE account_id = ? AND bucket_end > ? AND bucket_end <= ?"
        )
        params: list[Any] = [request.account_id, window.start_ms, window.end_ms]
        for column, selection in (("skill_id", request.skills), ("agent_id", request.agents)):
            if selection is not None and selection.ids is not None:
                sql += f" AND {column} IN (SELECT value FROM json_each(?))"
                params.append(orjson.dumps(sorted(selection.ids)))
        sql += " GROUP BY 1, 2, 3"
        with _unavailable_on_error(self.path):
            self._folded()
            rows = self._reader().execute(sql, params).fetchall()
        return [CountRow(r[0], r[1], r[2], (r[3], r[4], r[5], r[6], r[7])) for r in rows]

    @_reading
    def account_snapshot(self, account_id: str) -> tuple[int, list[BucketRow]]:
        conn = self._reader()
        with _unavailable_on_error(self.path):
            conn.execute("BEGIN")  # one WAL snapshot for the version and the rows
            try:
                row = conn.execute(  # the version the counters hold: the change log has the rest
                    "SELECT folded_version FROM account_versions WHERE account_id = ?",
                    (account_id,),
                ).fetchone()
                rows = conn.execute(
                    "SELECT bucket_end, skill_id, agent_id, score1, score2, score3, score4, score5"
                    " FROM buckets WHERE account_id = ?",
                    (account_id,),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
        return (int(row[0]) if row else 0), rows

    @_reading
    def account_snapshots(
        self, account_ids: Sequence[str], max_rows: int
    ) -> dict[str, tuple[int, list[BucketRow]]]:
        conn = self._reader()
        in_ids = "IN (SELECT value FROM json_each(?))"
        ids = orjson.dumps(list(account_ids)).decode()
        with _unavailable_on_error(self.path):
            conn.execute("BEGIN")  # one WAL snapshot for the versions, the sizes and the rows
            try:
                versions = conn.execute(
                    "SELECT account_id, folded_version FROM account_versions"
                    f" WHERE account_id {in_ids}",
                    (ids,),
                ).fetchall()
                sizes = conn.execute(SNAPSHOT_SIZES.format(accounts=in_ids), (ids,)).fetchall()
                chosen = orjson.dumps(snapshot_accounts(sizes, max_rows)).decode()
                rows = conn.execute(SNAPSHOT_ROWS.format(accounts=in_ids), (chosen,)).fetchall()
            finally:
                conn.execute("COMMIT")
        return snapshots_from_rows(account_ids, versions, sizes, rows)

    @_reading
    def account_changes(self, account_id: str, since_version: int) -> AccountChanges:
        conn = self._reader()
        with _unavailable_on_error(self.path):
            conn.execute("BEGIN")  # one WAL snapshot for the version and its changes
            try:
                row = conn.execute(
                    "SELECT version, purged_through FROM account_versions WHERE account_id = ?",
                    (account_id,),
                ).fetchone()
                if row is None:
                    return AccountChanges(0, 0, [])
                version, purged = int(row[0]), int(row[1])
                rows = _changes_between(conn, account_id, since_version, version)
            finally:
                conn.execute("COMMIT")
        return AccountChanges(version, purged, rows)

    @_reading
    def account_version(self, account_id: str) -> int:
        with _unavailable_on_error(self.path):
            row = self._reader().execute(ACCOUNT_VERSION.format(p="?"), (account_id,)).fetchone()
        return int(row[0]) if row else 0

    @_reading
    def busiest_accounts(self, limit: int) -> list[str]:
        with _unavailable_on_error(self.path):
            rows = self._reader().execute(BUSIEST_ACCOUNTS.format(p="?"), (limit,)).fetchall()
        return [row[0] for row in rows]

    @_reading
    def latest_answer_ms(self, account_id: str) -> int | None:
        with _unavailable_on_error(self.path):
            row = (
                self._reader()
                .execute(
                    "SELECT max(latest) FROM (SELECT max(answer_time) AS latest FROM answers"
                    " WHERE account_id = ? UNION ALL"
                    " SELECT max(answer_time) FROM answer_log WHERE account_id = ?)",
                    (account_id, account_id),
                )
                .fetchone()
            )
        return None if row[0] is None else int(row[0])

    @_reading
    def purge_changes(self, older_than_ms: int) -> int:
        def write(conn: sqlite3.Connection) -> int:
            _fold(conn)  # never a change the counters do not hold yet
            conn.execute(
                "UPDATE account_versions SET purged_through = max(purged_through, coalesce("
                " (SELECT max(c.version) FROM change_log c"
                "  WHERE c.account_id = account_versions.account_id AND c.created_ms < ?), 0))",
                (older_than_ms,),
            )
            return conn.execute(
                "DELETE FROM change_log WHERE created_ms < ?", (older_than_ms,)
            ).rowcount

        with _unavailable_on_error(self.path):
            self._folded()  # in steps: the write's own fold then finds little
            return self._writer.run(write)

    @_reading
    def purge(self, older_than_ms: int, history_older_than_ms: int | None = None) -> PurgeResult:
        """Delete in small transactions so that ingest is never stalled behind a long purge."""
        cutoff = floor_to_bucket(older_than_ms)
        chunk = f" LIMIT {PURGE_CHUNK})"
        with _unavailable_on_error(self.path):
            self._folded()
            accounts = (
                self._reader()
                .execute("SELECT account_id, rolled_through FROM account_versions")
                .fetchall()
            )
        buckets = records = history = 0
        for account_id, through in accounts:
            buckets += self._purge_chunks(  # never a bucket the history does not hold yet
                "DELETE FROM buckets WHERE (account_id, bucket_end, skill_id, agent_id) IN"
                " (SELECT account_id, bucket_end, skill_id, agent_id FROM buckets"
                " WHERE account_id = ? AND bucket_end <= ?" + chunk,
                (account_id, min(cutoff, int(through))),
            )
            records += self._purge_chunks(
                "DELETE FROM answers WHERE rowid IN (SELECT rowid FROM answers"
                " WHERE account_id = ? AND answer_time < ?" + chunk,
                (account_id, cutoff),
            )
            if history_older_than_ms is not None:
                with _unavailable_on_error(self.path):
                    history += self._writer.run(
                        functools.partial(
                            _purge_history, account_id=account_id, before=history_older_than_ms
                        ),
                        key=account_id,
                    )
        tombstones = self._purge_chunks(
            "DELETE FROM erased_answers WHERE (account_id, answer_id) IN"
            " (SELECT account_id, answer_id FROM erased_answers WHERE erased_ms < ?" + chunk,
            # A copy of an answer stamped up to the clock skew ahead is acceptable that much
            # longer than the retention after its erasure: its tombstone stays as long.
            (older_than_ms - CLOCK_SKEW_MS,),
        )
        self._purge_chunks("DELETE FROM sessions WHERE expires_ms < ?", (older_than_ms,))
        self._write(
            lambda run, _: alerts_sql.purge_deliveries(run, "?", older_than_ms - DELIVERY_LOG_MS)
        )
        return PurgeResult(buckets, records, tombstones, history)

    # history -----------------------------------------------------------------------------

    @_reading
    def roll_up(self, up_to_ms: int) -> int:
        with _unavailable_on_error(self.path):
            self._folded()  # in steps: each roll-up step then folds little
            behind = [
                row[0]
                for row in self._reader().execute(
                    "SELECT account_id FROM account_versions WHERE rolled_through < ?",
                    (up_to_ms,),
                )
            ]
            part_rows = min(ROLL_PART_ROWS, history_sql.ROLL_STEP_ROWS)
            count = max(1, history_sql.ROLL_STEP_ROWS // part_rows)
            for account_id in behind:
                part = functools.partial(
                    _roll_up_step, account_id=account_id, up_to=up_to_ms, max_rows=part_rows
                )
                while self._writer.run_parts([part] * count, key=account_id)[-1] < up_to_ms:
                    pass
        return len(behind)

    @_reading
    def report_sums(self, request: SumsRequest) -> list[SumRow]:
        conn = self._reader()
        with _unavailable_on_error(self.path):
            self._folded()
            conn.execute("BEGIN")  # one WAL snapshot: the history, rolled_through, the tail
            try:
                run, _ = _runners(conn)
                return history_sql.report_sums(run, "?", _id_list, request)
            finally:
                conn.execute("COMMIT")

    # directory and alerts ----------------------------------------------------------------

    def _write(self, work: Callable[[history_sql.Run, history_sql.RunMany], T], key: str = "") -> T:
        def job(conn: sqlite3.Connection) -> T:
            return work(*_runners(conn))

        with _unavailable_on_error(self.path):
            return self._writer.run(job, key=key)

    @_reading
    def _read_only(self, work: Callable[[history_sql.Run], T]) -> T:
        with _unavailable_on_error(self.path):
            run, _ = _runners(self._reader())
            return work(run)

    def directory(self, account_id: str) -> Directory:
        return self._read_only(lambda run: read_directory(run, "?", account_id))

    def update_directory(self, account_id: str, update: DirectoryUpdate, now_ms: int) -> None:
        self._write(
            lambda run, run_many: apply_update(run, run_many, "?", account_id, update, now_ms),
            key=account_id,
        )

    def put_alert_rule(
        self,
        account_id: str,
        name: str,
        document: dict[str, Any],
        sealed_secret: bytes,
        now_ms: int,
        max_rules: int,
    ) -> tuple[bool, StoredRule]:
        return self._write(
            lambda run, _: alerts_sql.put_rule(
                run, "?", "", account_id, name, document, sealed_secret, now_ms, max_rules
            ),
            key=account_id,
        )

    def alert_rule(self, account_id: str, name: str) -> StoredRule | None:
        return self._read_only(lambda run: alerts_sql.get_rule(run, "?", "", account_id, name))

    def alert_rules(self, account_id: str | None = None) -> list[StoredRule]:
        return self._read_only(lambda run: alerts_sql.list_rules(run, "?", account_id))

    def delete_alert_rule(self, account_id: str, name: str) -> bool:
        return self._write(
            lambda run, _: alerts_sql.delete_rule(run, "?", account_id, name), key=account_id
        )

    def record_evaluation(
        self,
        account_id: str,
        name: str,
        order: tuple[int, int],
        now_ms: int,
        decide: Callable[[StoredRule], EvaluationOutcome],
        limits: OutboxLimits,
    ) -> EvaluationOutcome | None:
        return self._write(
            lambda run, _: alerts_sql.record_evaluation(
                run, "?", "", account_id, name, order, now_ms, decide, limits
            ),
            key=account_id,
        )

    def claim_deliveries(self, now_ms: int, lease_ms: int, limit: int) -> list[PendingDelivery]:
        return self._write(lambda run, _: alerts_sql.claim(run, "?", "", now_ms, lease_ms, limit))

    def finish_attempt(
        self,
        delivery_id: str,
        attempt: AttemptRecord,
        next_attempt_ms: int | None,
        outcome: str | None,
    ) -> None:
        self._write(
            lambda run, _: alerts_sql.finish(
                run, "?", delivery_id, attempt, next_attempt_ms, outcome
            )
        )

    def deliveries(self, account_id: str, name: str, limit: int) -> list[DeliveryRecord]:
        return self._read_only(
            lambda run: alerts_sql.list_deliveries(run, "?", account_id, name, limit)
        )

    def import_history(self, account_id: str, rows: Sequence[Sequence[int]]) -> int:
        def write(conn: sqlite3.Connection) -> int:
            _fold(conn)  # the import checks itself against the counters
            run, run_many = _runners(conn)
            return history_sql.import_history(run, run_many, "?", account_id, rows)

        with _unavailable_on_error(self.path):
            return self._writer.run(write, key=account_id)

    def _purge_chunks(self, sql: str, params: tuple[Any, ...]) -> int:
        """Run a bounded DELETE until it deletes fewer rows than a chunk; the total deleted."""

        def delete_chunk(conn: sqlite3.Connection) -> int:
            return conn.execute(sql, params).rowcount

        total = 0
        with _unavailable_on_error(self.path):
            while True:
                deleted = self._writer.run(delete_chunk)
                total += deleted
                if deleted < PURGE_CHUNK:
                    return total

    @_reading
    def ping(self) -> None:
        with _unavailable_on_error(self.path):
            self._reader().execute("SELECT 1 FROM schema_migrations LIMIT 1").fetchall()

    # keys --------------------------------------------------------------------------------

    def add_key(self, key: ApiKey) -> None:
        with _unavailable_on_error(self.path):
            self._writer.run(
                lambda conn: conn.execute(
                    f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ({', '.join('?' * 11)})",
                    key_values(key),
                )
            )

    @_reading
    def find_key(self, account_id: str, key_id: str) -> ApiKey | None:
        with _unavailable_on_error(self.path):
            row = (
                self._reader()
                .execute(
                    f"SELECT {KEY_COLUMNS} FROM api_keys WHERE account_id = ? AND key_id = ?",
                    (account_id, key_id),
                )
                .fetchone()
            )
        return key_from_row(row) if row else None

    @_reading
    def list_keys(self, account_id: str | None = None) -> list[ApiKey]:
        sql = f"SELECT {KEY_COLUMNS} FROM api_keys"
        params: tuple[Any, ...] = ()
        if account_id is not None:
            sql += " WHERE account_id = ?"
            params = (account_id,)
        with _unavailable_on_error(self.path):
            rows = self._reader().execute(sql + " ORDER BY account_id, created_ms", params)
            return [key_from_row(r) for r in rows.fetchall()]

    def revoke_key(self, key_id: str, at_ms: int) -> ApiKey | None:
        def write(conn: sqlite3.Connection) -> ApiKey | None:
            conn.execute(
                "UPDATE api_keys SET revoked_ms = ? WHERE key_id = ? AND revoked_ms IS NULL",
                (at_ms, key_id),
            )
            row = conn.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
            return key_from_row(row) if row else None

        with _unavailable_on_error(self.path):
            return self._writer.run(write)

    # users and sessions ------------------------------------------------------------------

    def add_user(self, user: User) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            existed = conn.execute(
                "SELECT 1 FROM users WHERE account_id = ? AND username = ?",
                (user.account_id, user.username),
            ).fetchone()
            conn.execute(
                f"INSERT INTO users ({USER_COLUMNS}) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (account_id, username)"
                " DO UPDATE SET password_hash = excluded.password_hash",
                (user.account_id, user.username, user.password_hash, user.created_ms),
            )
            if existed is not None:
                conn.execute(
                    REVOKE_SESSIONS.format(p="?"),
                    (int(time.time() * 1000), user.account_id, user.username),
                )
            return existed is None

        with _unavailable_on_error(self.path):
            return self._writer.run(write)

    @_reading
    def find_user(self, account_id: str, username: str) -> User | None:
        with _unavailable_on_error(self.path):
            row = (
                self._reader()
                .execute(
                    f"SELECT {USER_COLUMNS} FROM users WHERE account_id = ? AND username = ?",
                    (account_id, username),
                )
                .fetchone()
            )
        return User(*row) if row else None

    @_reading
    def list_users(self, account_id: str) -> list[User]:
        with _unavailable_on_error(self.path):
            rows = (
                self._reader()
                .execute(
                    f"SELECT {USER_COLUMNS} FROM users WHERE account_id = ? ORDER BY username",
                    (account_id,),
                )
                .fetchall()
            )
        return [User(*row) for row in rows]

    def delete_user(self, account_id: str, username: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "DELETE FROM sessions WHERE account_id = ? AND username = ?",
                (account_id, username),
            )
            deleted = conn.execute(
                "DELETE FROM users WHERE account_id = ? AND username = ?", (account_id, username)
            ).rowcount
            return deleted > 0

        with _unavailable_on_error(self.path):
            return self._writer.run(write)

    def revoke_sessions(self, account_id: str, username: str, at_ms: int) -> int:
        def write(conn: sqlite3.Connection) -> int:
            return conn.execute(
                REVOKE_SESSIONS.format(p="?"), (at_ms, account_id, username)
            ).rowcount

        with _unavailable_on_error(self.path):
            return self._writer.run(write)

    def add_session(self, session: Session) -> None:
        with _unavailable_on_error(self.path):
            self._writer.run(
                lambda conn: conn.execute(
                    f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    session_values(session),
                )
            )

    @_reading
    def find_session(self, account_id: str, session_id: str) -> Session | None:
        with _unavailable_on_error(self.path):
            row = (
                self._reader()
                .execute(
                    f"SELECT {SESSION_COLUMNS} FROM sessions"
                    " WHERE account_id = ? AND session_id = ?",
                    (account_id, session_id),
                )
                .fetchone()
            )
        if row is None:
            return None
        return session_from_row(row)

    def close(self) -> None:
        """Stop the writer, refuse new reads, and close every reader once the reads running
        in other threads have returned (closing a connection while another thread is inside
        one of its statements would crash the interpreter). Not interrupted: an interrupted
        connection's last close skips the checkpoint and leaves the WAL behind."""
        with self._readers_lock:
            self._closed = True
        self._writer.submit(_fold, FOLD_KEY)  # a store closed cleanly leaves nothing pending
        self._writer.stop()
        self._checkpointer.stop()
        if self._line is not None and not self._writer.running:
            self._line.close()
        with self._readers_lock:
            if not self._readers_lock.wait_for(lambda: not self._reads, CLOSE_WAIT_SECONDS):
                log.warning(
                    "SQLite store closed with reads still running; their connections stay open",
                    extra={"fields": {"reads": self._reads}},
                )
                return
            for conn in self._readers:
                conn.close()
            self._readers.clear()


def _with_retries(work: Callable[[], T], seconds: float = 30.0) -> T:
    """Retry while the file is locked: switching a new file to WAL does not wait for the busy
    timeout when another process is creating it at the same moment."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return work()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _statements(script: str) -> Iterator[str]:
    """Split a migration script into statements (executescript would commit our transaction)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statement = pending.strip()
            if statement and not all(
                part.strip().startswith("--") or not part.strip() for part in statement.splitlines()
            ):
                yield statement
            pending = ""
    if pending.strip() and not all(
        p.strip().startswith("--") or not p.strip() for p in pending.splitlines()
    ):
        raise ValueError(f"incomplete SQL statement in migration: {pending.strip()[:60]}")
