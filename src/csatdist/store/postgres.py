"""PostgreSQL backend: a psycopg 3 connection pool, set-based writes, advisory-locked upkeep.

Several API replicas share one database. Ingest is one statement in one transaction: the new
idempotency keys are inserted with ``ON CONFLICT DO NOTHING RETURNING`` and only those answers
are added to the counters. Rows are written in key order, so concurrent overlapping ingests wait
for each other instead of deadlocking; a deadlock or serialization failure is retried anyway.
Every statement filters on one ``account_id`` (ready for distribution by account with Citus).
"""

from __future__ import annotations

import functools
import getpass
import logging
import os
import shlex
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import Format
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolTimeout

from csatdist.answers import Answer
from csatdist.buckets import CLOCK_SKEW_MS, floor_to_bucket
from csatdist.directory import Directory, DirectoryUpdate
from csatdist.distribution import CountRow
from csatdist.errors import StoreUnavailable
from csatdist.records import Deltas, erasure_deltas, plan_ingest
from csatdist.report.assembly import SumRow, SumsRequest
from csatdist.store import (
    AccountChanges,
    AnswerRecord,
    AnswersRequest,
    ApiKey,
    AttemptRecord,
    BucketRow,
    CountsRequest,
    DatabaseMisconfigured,
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
from csatdist.store.migrations import SchemaTooNew, migrations_for
from csatdist.store.pg_async import AsyncPointReads, retire
from csatdist.store.sql import (
    ACCOUNT_VERSION,
    BUSIEST_ACCOUNTS,
    CHANGES_SINCE,
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
    changes_from_rows,
    correction_values,
    erasure_outcome,
    group_columns,
    key_from_row,
    key_values,
    largest_change,
    listed_records,
    listing_query,
    record_values,
    session_from_row,
    session_values,
    snapshot_accounts,
    snapshots_from_rows,
    stored_from_row,
)

T = TypeVar("T")
log = logging.getLogger("csatdist.store")
#: Advisory lock ids: one for migrations, one for the retention purge.
MIGRATION_LOCK = 0x63736174_0001
PURGE_LOCK = 0x63736174_0002
PURGE_CHUNK = 5000
#: Finished alert deliveries stay in the log this long after the answers' retention.
DELIVERY_LOG_MS = 6 * 24 * 3600_000
RETRIES = 5
#: Answers and counter changes a store has written since its last fold after which its folder
#: runs. Fewer than SQLite's: an ingest looks its ids up in the log, so a longer log costs every
#: batch (measured on 300,000 answers onto 300,000: 43,300 answers/s acknowledged and 33,800
#: until folded at 20,000, against 39,000 and 28,200 at 60,000).
FOLD_AFTER_ROWS = 20_000
#: Rows folded per transaction (about 0.2 s of PostgreSQL): what a read that folds first waits
#: for at most when a background fold of the account holds it.
FOLD_STEP_ROWS = 20_000
#: A store's folder folds what any replica left pending once the store has written nothing
#: for this long (and looks again as often while something is pending).
FOLD_IDLE_SECONDS = 0.5
#: While nothing is pending, the folder looks twice as long after each look, up to this: an
#: idle server (or CLI) reads ``_BEHIND`` a few times a minute, not twice a second. This
#: store's writes wake it at once; another replica's are folded by that replica, by reads that
#: need them (they fold first), or here within this long.
FOLD_REST_SECONDS = 30.0
#: Closing a store that wrote folds what is pending for at most this long (other replicas'
#: folds, or the next start, do the rest).
CLOSE_FOLD_SECONDS = 10.0
#: A first connection failing for a reason that passes (the server still starting, refusing
#: connections) is retried this long; any other failure is reported at once.
START_WAIT_SECONDS = 5.0
#: Where a missing database is created from, in createdb's order.
MAINTENANCE_DATABASES = ("postgres", "template1")
#: libpq's and the server's words for failures that pass by themselves.
_TRANSIENT = (
    "connection refused",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "too many clients",
    "timeout expired",
    "server closed the connection unexpectedly",
    "connection reset by peer",
    "no such file or directory",  # the Unix socket of a server not started yet
)


class _Int8Array:
    """A ``bigint[]`` parameter encoded by numpy at once (psycopg's list dumpers encode a list
    value by value in Python: a third of an ingest's client time for 40,000 values)."""

    __slots__ = ("values",)

    def __init__(self, values: npt.NDArray[np.int64]) -> None:
        self.values = values


class _Int8ArrayDumper(Dumper):
    """PostgreSQL's binary array format: a header, then each value's length and value."""

    format = Format.BINARY
    oid = 1016  # int8[]

    def dump(self, obj: Any) -> bytes:
        values = obj.values
        if not len(values):
            return struct.pack(">iiI", 0, 0, 20)
        out = np.empty(len(values), dtype=[("size", ">i4"), ("value", ">i8")])
        out["size"] = 8
        out["value"] = values
        return struct.pack(">iiIii", 1, 0, 20, len(values), 1) + out.tobytes()


psycopg.adapters.register_dumper(_Int8Array, _Int8ArrayDumper)

#: An ingest's or an erasure's counter changes: the change log (one row: the changes packed, see
#: :mod:`csatdist.store.packed`) and the account's next version, in one statement (the account's
#: version row is already locked by the transaction). The counters get them at the next fold;
#: other servers' aggregates follow the change log at once.
_LOG_CHANGES = """
WITH next_version AS (
    UPDATE account_versions SET version = version + 1 WHERE account_id = %(account)s
    RETURNING version
)
INSERT INTO change_log (account_id, version, created_ms, changes)
SELECT %(account)s, version, %(created)s, %(packed)b FROM next_version
"""
#: New answers are copied into the answer log (binary COPY: no per-value text or array encoding
#: in Python, no unnest on the server; one B-tree, the primary key). Their ids were read absent
#: from the log and the records under the account's lock, so none can conflict: a conflict
#: would fail the transaction, never count an answer twice.
_COPY_LOGGED = f"COPY answer_log (account_id, {RECORD_COLUMNS}) FROM STDIN (FORMAT BINARY)"
#: The PostgreSQL types of :data:`_COPY_LOGGED`'s columns (``answer_log``, as ``answers``).
RECORD_COPY_TYPES = (
    "text",
    "text",
    "int8",
    "int8",
    "int8",
    "int2",
    "int8",
    "text",
    "text",
    "text",
    "text",
    "text",
)
#: The records an ingest or an erasure plans against, in the log or folded: one statement, so
#: one snapshot, in which a fold moving an answer has either committed or not (it is found in
#: one of the two). Those folded are locked until it commits: a purge deleting one meanwhile is
#: waited for, and the plan then sees it gone (those in the log are not: a fold moving one would
#: be waited for, then skipped). Id by id, each a look-up of the primary keys (``LIMIT 1`` keeps
#: the subquery apart): for 5,000 ids among 300,000 records the planner read every record of
#: the account instead (49 ms, and 63 before its statistics, against about 15).
_STORED_AMONG = f"""
SELECT found.* FROM unnest(%(ids)b::text[]) AS wanted(answer_id), LATERAL (
    SELECT {STORED_COLUMNS} FROM answer_log l
    WHERE l.account_id = %(account)s AND l.answer_id = wanted.answer_id
    UNION ALL
    SELECT * FROM (SELECT {STORED_COLUMNS} FROM answers a
                   WHERE a.account_id = %(account)s AND a.answer_id = wanted.answer_id
                   FOR UPDATE) AS folded
    LIMIT 1
) AS found
"""
_ERASED_AMONG = (
    "SELECT answer_id FROM erased_answers WHERE account_id = %s AND answer_id = ANY(%b::text[])"
)
#: Counter changes, summed, added to the counters (by a fold).
_UPSERT_COUNTERS = """
INSERT INTO buckets AS b (account_id, bucket_end, skill_id, agent_id,
                          score1, score2, score3, score4, score5)
SELECT %(account)s, * FROM unnest(%(ends)b::bigint[], %(skills)b::bigint[], %(agents)b::bigint[],
                                  %(s1)b::bigint[], %(s2)b::bigint[], %(s3)b::bigint[],
                                  %(s4)b::bigint[], %(s5)b::bigint[])
ON CONFLICT (account_id, bucket_end, skill_id, agent_id) DO UPDATE SET
    score1 = b.score1 + excluded.score1, score2 = b.score2 + excluded.score2,
    score3 = b.score3 + excluded.score3, score4 = b.score4 + excluded.score4,
    score5 = b.score5 + excluded.score5
"""
#: A fold's move of up to ``budget`` answers of an account from the log into the records,
#: sorted by time (the time index then gets them in order): the log's first ids, a range of its
#: primary key (an ``= ANY`` of them made the planner compare each row of the log with each id).
#: An answer an ingest corrects in the log meanwhile is waited for and moved as corrected.
_MOVE_LOGGED = f"""
WITH moved AS (
    DELETE FROM answer_log WHERE account_id = %(account)s AND answer_id <= (
        SELECT max(answer_id) FROM (
            SELECT answer_id FROM answer_log WHERE account_id = %(account)s
            ORDER BY answer_id LIMIT %(budget)s
        ) AS first)
    RETURNING {RECORD_COLUMNS}
)
INSERT INTO answers (account_id, {RECORD_COLUMNS})
SELECT %(account)s, {RECORD_COLUMNS} FROM moved ORDER BY answer_time, answer_id
"""
#: The versions after ``folded`` and up to ``through`` a fold step adds to the counters: in
#: order, as many as fit in ``bytes`` of packed changes (at least one). ``length`` of the
#: uncompressed, out-of-line ``changes`` (migration 10) reads no value.
_CHANGES_TO_FOLD = """
SELECT version, changes FROM (
    SELECT version, changes,
           sum(length(changes)) OVER (ORDER BY version) - length(changes) AS before
    FROM change_log
    WHERE account_id = %(account)s AND version > %(folded)s AND version <= %(through)s
) c WHERE before < %(bytes)s ORDER BY version
"""
#: Accounts with something to fold: versions the counters lack, or answers in the log.
_BEHIND = """
SELECT v.account_id FROM account_versions v LEFT JOIN account_folds f USING (account_id)
WHERE v.version > coalesce(f.folded_version, 0)
   OR EXISTS (SELECT 1 FROM answer_log l WHERE l.account_id = v.account_id)
"""
#: An account's version and the version its counters hold.
_VERSIONS = """
SELECT v.version, coalesce(f.folded_version, 0)
FROM account_versions v LEFT JOIN account_folds f USING (account_id) WHERE v.account_id = %s
"""
#: Changes older than a time and already in the counters go, and followers holding a version
#: before them are told to reload (one statement: a fold moving on meanwhile changes nothing).
_PURGE_CHANGES = """
WITH gone AS (
    DELETE FROM change_log c USING account_folds f
    WHERE f.account_id = c.account_id AND c.version <= f.folded_version AND c.created_ms < %s
    RETURNING c.account_id, c.version
),
purged AS (
    UPDATE account_versions v SET purged_through = greatest(v.purged_through, t.top)
    FROM (SELECT account_id, max(version) AS top FROM gone GROUP BY account_id) t
    WHERE t.account_id = v.account_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM purged)
"""
#: The version an account's counters hold (every version up to it is folded).
_FOLDED_VERSION = "coalesce((SELECT folded_version FROM account_folds WHERE account_id = {id}), 0)"


def _lock_account(conn: psycopg.Connection[TupleRow], account_id: str) -> None:
    """Take the account's version row for the rest of the transaction: every write of an
    account (ingest, correction, erasure) holds it, so they are planned and applied one at a
    time across replicas, and a reader that sees version v knows every version before it has
    committed."""
    locked = conn.execute(
        "SELECT 1 FROM account_versions WHERE account_id = %s FOR UPDATE", (account_id,)
    ).fetchone()
    if locked is None:  # the account's first write: create its row, then lock it
        conn.execute(
            "INSERT INTO account_versions (account_id, version) VALUES (%s, 0)"
            " ON CONFLICT (account_id) DO NOTHING",
            (account_id,),
        )
        conn.execute(
            "SELECT 1 FROM account_versions WHERE account_id = %s FOR UPDATE", (account_id,)
        )


def _runners(conn: psycopg.Connection[TupleRow]) -> tuple[history_sql.Run, history_sql.RunMany]:
    """``run`` and ``run_many`` of :mod:`csatdist.store.history` on a connection."""

    def run(sql: str, params: Sequence[Any]) -> list[Any]:
        return conn.execute(sql, params).fetchall()

    def run_many(sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with conn.cursor() as cursor:
                cursor.executemany(sql, rows)

    return run, run_many


def _id_list(column: str, values: list[int]) -> tuple[str, Any]:
    return f"{column} = ANY(%s::bigint[])", values


def _roll_up_step(conn: psycopg.Connection[TupleRow], *, account_id: str, up_to: int) -> int:
    _fold_counters(conn, account_id)  # every change, and no fold adds any until this commits
    run, run_many = _runners(conn)
    return history_sql.roll_up_step(run, run_many, "%s", account_id, up_to)


def _purge_history(conn: psycopg.Connection[TupleRow], *, account_id: str, before: int) -> int:
    run, _ = _runners(conn)
    return history_sql.purge_history(run, "%s", account_id, before)


def _delta_array(deltas: Deltas) -> npt.NDArray[np.int64]:
    """:func:`csatdist.records.delta_rows` as an array, one row per counter (bucket end,
    skill, agent, s1..s5) in that order, without the changes that cancel out (numpy's sort of
    a batch's thousands of counters instead of Python's, and no tuple per row)."""
    if not deltas:
        return np.empty((0, 8), dtype=np.int64)
    keys = np.array(list(deltas), dtype=np.int64)
    counts = np.array(list(deltas.values()), dtype=np.int64)
    kept = counts.any(axis=1)
    rows = np.hstack([keys[kept], counts[kept]])
    return rows[np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))]


#: The largest message (a change of the counters, a batch's ids) each connection taken from a
#: pool has carried since it was taken, in bytes, by ``id`` of the connection: libpq grows its
#: input and output buffers to the largest message a connection carries and keeps them at that
#: size until the connection is closed (a 10,000-answer batch's change, ~600 KB, left 2 MB
#: behind in every connection that read it: docs/security.md), so a connection that carried a
#: large one is closed after use rather than kept (``connection_keep_bytes``).
_carried: dict[int, int] = {}


def _carried_change(conn: psycopg.Connection[TupleRow], size: int) -> None:
    if size > _carried.get(id(conn), 0):
        _carried[id(conn)] = size


def _carried_ids(conn: psycopg.Connection[TupleRow], ids: list[str]) -> None:
    """A batch's ids sent as one array parameter (twice: stored and erased ones): ~40 bytes an
    id in libpq's output buffer, 400 KB for a 10,000-answer batch."""
    _carried_change(conn, sum(len(i) for i in ids) + 8 * len(ids))


def _log_changes(conn: psycopg.Connection[TupleRow], account_id: str, deltas: Deltas) -> int:
    """Move the account to its next version with signed counter changes in the change log.
    Returns the counters changed."""
    rows = _delta_array(deltas)
    if len(rows):
        change = packed.pack_array(rows)
        conn.execute(
            _LOG_CHANGES,
            {"account": account_id, "created": int(time.time() * 1000), "packed": change},
        )
        _carried_change(conn, len(change))
    return len(rows)


def _add_to_counters(
    conn: psycopg.Connection[TupleRow], account_id: str, rows: npt.NDArray[np.int64]
) -> None:
    """Add summed changes (:func:`csatdist.store.packed.summed_array`) to the counters and to
    the history of the buckets already rolled up."""
    if not len(rows):
        return
    run, run_many = _runners(conn)
    history_sql.changes_to_rolled_buckets(run, run_many, "%s", account_id, rows.tolist())
    names = ("ends", "skills", "agents", "s1", "s2", "s3", "s4", "s5")
    conn.execute(
        _UPSERT_COUNTERS,
        {
            "account": account_id,
            **{name: _Int8Array(values) for name, values in zip(names, rows.T, strict=True)},
        },
    )


def _fold_step(
    conn: psycopg.Connection[TupleRow],
    account_id: str,
    budget: int,
    *,
    wait: bool = True,
    through: int | None = None,
) -> bool | None:
    """Inside the caller's transaction, fold about ``budget`` rows of an account: answers of
    the log into the records, then the versions of the change log after the account's
    ``folded_version``, summed, into the counters and the history; with ``through``, only
    the versions up to it (what a read of the counters needs: the records are read in the
    log too). True when nothing is left; None, without waiting, when another fold (of any
    replica) holds the account and ``wait`` is false.

    One fold of an account at a time: each holds its ``account_folds`` row, never the
    account's version row an ingest holds, so the two do not wait for each other. All or
    nothing: a fold killed midway leaves what it would have moved where it was."""
    conn.execute(
        "INSERT INTO account_folds (account_id, folded_version) VALUES (%s, 0)"
        " ON CONFLICT (account_id) DO NOTHING",
        (account_id,),
    )
    row = conn.execute(
        "SELECT folded_version FROM account_folds WHERE account_id = %s FOR UPDATE"
        + ("" if wait else " SKIP LOCKED"),
        (account_id,),
    ).fetchone()
    if row is None:
        return None
    folded = int(row[0])
    moved = 0
    if through is None:
        now = conn.execute(ACCOUNT_VERSION.format(p="%s"), (account_id,)).fetchone()
        through = int(now[0]) if now else 0
        moved = conn.execute(_MOVE_LOGGED, {"account": account_id, "budget": budget}).rowcount
    left = budget - moved
    if left > 0 and through > folded:
        versions = conn.execute(
            _CHANGES_TO_FOLD,
            {
                "account": account_id,
                "folded": folded,
                "through": through,
                "bytes": left * packed.ROW_BYTES,
            },
        ).fetchall()
        if versions:
            _carried_change(conn, max(len(v[1]) for v in versions))
            _add_to_counters(conn, account_id, packed.summed_array(bytes(v[1]) for v in versions))
            folded = int(versions[-1][0])
            conn.execute(
                "UPDATE account_folds SET folded_version = %s WHERE account_id = %s",
                (folded, account_id),
            )
    return moved < budget and folded >= through


def _fold_counters(conn: psycopg.Connection[TupleRow], account_id: str) -> None:
    """Fold every version of an account into its counters, inside the caller's transaction
    (which then holds the account's fold until it commits: nothing else adds to its
    counters meanwhile)."""
    now = conn.execute(ACCOUNT_VERSION.format(p="%s"), (account_id,)).fetchone()
    through = int(now[0]) if now else 0
    while not _fold_step(conn, account_id, FOLD_STEP_ROWS, through=through):
        pass


# first connection --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a URL points, for messages (never its password)."""

    host: str
    port: str
    user: str
    dbname: str

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}" if self.host else f"the local socket (port {self.port})"

    def createdb(self, *, as_user: str, owner: str | None = None) -> str:
        words = ["createdb"]
        if self.host:
            words += ["-h", self.host]
        words += ["-p", self.port, "-U", as_user]
        if owner:
            words += ["-O", owner]
        return shlex.join([*words, self.dbname])


def _target(url: str) -> _Target:
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise DatabaseMisconfigured(
            f"invalid PostgreSQL URL: {_reason(exc)}; expected "
            "postgresql://user[:password]@host[:port]/database"
        ) from None
    user = str(params.get("user") or os.environ.get("PGUSER") or getpass.getuser())
    return _Target(
        host=str(params.get("host") or os.environ.get("PGHOST") or ""),
        port=str(params.get("port") or os.environ.get("PGPORT") or "5432"),
        user=user,
        dbname=str(params.get("dbname") or os.environ.get("PGDATABASE") or user),
    )


def _reason(exc: Exception) -> str:
    """libpq's or the server's own words, without psycopg's "connection to server at … failed"
    preamble, on one line."""
    text = str(exc).rpartition(" failed: ")[2] if " failed: " in str(exc) else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return " ".join(first.split()).removeprefix("FATAL: ").removeprefix("connection is bad: ")


def is_transient(exc: Exception) -> bool:
    """Whether a failed connection may succeed if tried again shortly (the server is starting,
    restarting or busy), as opposed to a wrong URL, host, role, password or database."""
    text = str(exc).lower()
    return not isinstance(exc, psycopg.ProgrammingError) and any(t in text for t in _TRANSIENT)


def explain_failure(target: _Target, exc: Exception) -> str:
    """One line: what is wrong with a connection that failed for good, and what to do."""
    reason = _reason(exc)
    lowered = reason.lower()
    if isinstance(exc, psycopg.ProgrammingError) or "connection option" in lowered:
        return (
            f"invalid PostgreSQL URL: {reason}; expected "
            "postgresql://user[:password]@host[:port]/database"
        )
    if "failed to resolve host" in lowered or "could not translate host name" in lowered:
        return (
            f"unknown PostgreSQL host {target.host!r} ({reason}): check the host in the database "
            "URL (--database or CSATDIST_DATABASE_URL)"
        )
    if f'database "{target.dbname}" does not exist' in reason:
        return (
            f'PostgreSQL database "{target.dbname}" does not exist on {target.server}, and no '
            f"maintenance database ({', '.join(MAINTENANCE_DATABASES)}) accepted role "
            f'"{target.user}" to create it; create it with: '
            f"{target.createdb(as_user=target.user)}"
        )
    if "authentication failed" in lowered or "password" in lowered or "role" in lowered:
        return (
            f'PostgreSQL on {target.server} refused role "{target.user}": {reason}; check the '
            "user and password in the database URL (--database or CSATDIST_DATABASE_URL)"
        )
    return (
        f'cannot use PostgreSQL database "{target.dbname}" on {target.server} as role '
        f'"{target.user}": {reason}'
    )


def _create_missing(
    url: str, target: _Target, connect_timeout: int, notice: Callable[[str], None]
) -> Literal["created", "exists", "busy", "unreachable"]:
    """Create the database of ``url`` from a maintenance database if it does not exist."""
    for maintenance in MAINTENANCE_DATABASES:
        if maintenance == target.dbname:
            continue
        try:
            conn = psycopg.connect(
                make_conninfo(url, dbname=maintenance),
                autocommit=True,  # CREATE DATABASE cannot run in a transaction
                connect_timeout=connect_timeout,
            )
        except psycopg.Error:
            continue
        with conn:
            found = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (target.dbname,)
            ).fetchone()
            if found:
                return "exists"
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.dbname)))
            except (pg_errors.DuplicateDatabase, pg_errors.UniqueViolation):
                return "exists"  # another replica created it at the same moment
            except pg_errors.ObjectInUse:
                return "busy"  # the template database is in use for a moment
            except pg_errors.InsufficientPrivilege:
                raise DatabaseMisconfigured(
                    f'PostgreSQL database "{target.dbname}" does not exist on {target.server} '
                    f'and role "{target.user}" may not create it (no CREATEDB privilege); ask a '
                    "role that may to create it, e.g.: "
                    f"{target.createdb(as_user='postgres', owner=target.user)}"
                ) from None
        notice(f'created PostgreSQL database "{target.dbname}" on {target.server}')
        return "created"
    return "unreachable"


def prepare_database(url: str, *, connect_timeout: float, notice: Callable[[str], None]) -> None:
    """Connect once before opening the pool (which would retry any failure until its timeout):
    create the database when it is missing and the role may, retry briefly what passes by
    itself, and fail at once, with one clear line, on anything else."""
    target = _target(url)
    timeout = max(1, int(connect_timeout))
    deadline = time.monotonic() + START_WAIT_SECONDS
    announced = rechecked = False
    attempt = 0
    while True:
        try:
            psycopg.connect(url, connect_timeout=timeout).close()
            return
        except psycopg.Error as exc:
            failure: Exception = exc
        if isinstance(failure, psycopg.ProgrammingError):
            raise DatabaseMisconfigured(explain_failure(target, failure))
        if not is_transient(failure):
            outcome = _create_missing(url, target, timeout, notice)
            if outcome == "created":
                continue
            if outcome == "exists" and not rechecked:
                rechecked = True  # created meanwhile by another replica: connect again once
                continue
            if outcome != "busy":
                raise DatabaseMisconfigured(explain_failure(target, failure))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StoreUnavailable(
                f"cannot reach PostgreSQL on {target.server}: {_reason(failure)} (retried for "
                f"{START_WAIT_SECONDS:g} s); check that the server is running and accepts "
                "connections there"
            )
        if not announced:
            notice(
                f"PostgreSQL on {target.server} is not accepting connections yet "
                f"({_reason(failure)}); retrying for up to {START_WAIT_SECONDS:g} s"
            )
            announced = True
        attempt += 1
        time.sleep(min(0.1 * 2**attempt, remaining, 1.0))


class PostgresStore:
    point_reads_inline = False

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        connection_keep_bytes: int = 64 * 1024,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url
        self._pool_size = pool_size
        self._keep_bytes = connection_keep_bytes
        self._connect_timeout = connect_timeout
        prepare_database(url, connect_timeout=connect_timeout, notice=notice or log.info)
        self._pool: ConnectionPool[psycopg.Connection[TupleRow]] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"connect_timeout": max(1, int(connect_timeout))},
            check=ConnectionPool.check_connection,  # a restarted server is noticed on checkout
            timeout=connect_timeout,
            open=False,
            name="csatdist",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout as exc:
            self._pool.close()
            raise StoreUnavailable(f"cannot reach PostgreSQL: {exc}") from exc
        try:
            self.migrate()
        except BaseException:
            self._pool.close()
            raise
        self._written = 0  # rows written since this store's folder last ran
        self._wrote_at = 0.0
        self._fold_now = False  # FOLD_AFTER_ROWS written: fold without waiting to be idle
        self._resting = False  # the folder waits longer than FOLD_IDLE_SECONDS: wake it
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._folder = threading.Thread(target=self._fold_in_background, name="csatdist-fold")
        self._folder.daemon = True
        self._folder.start()  # first, what a stopped or killed replica left

    def point_reads(self) -> AsyncPointReads:
        """A new, unopened pool of point reads for one event loop (the server's): the version
        and credential reads of a query answered from memory, with no worker thread."""
        return AsyncPointReads(
            self.url,
            max_size=self._pool_size,
            connect_timeout=self._connect_timeout,
            connection_keep_bytes=self._keep_bytes,
        )

    # plumbing ----------------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[TupleRow]]:
        try:
            with self._pool.connection() as conn:
                try:
                    yield conn
                except BaseException:
                    if _carried.pop(id(conn), 0) > self._keep_bytes:
                        retire(conn)  # the pool keeps a connection a failed transaction used
                    raise
                if _carried.pop(id(conn), 0) > self._keep_bytes:
                    retire(conn)
        except PoolTimeout as exc:
            raise StoreUnavailable(f"no PostgreSQL connection available: {exc}") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL is unreachable: {exc}") from exc

    def _transaction(self, work: Callable[[psycopg.Connection[TupleRow]], T]) -> T:
        """Run ``work`` in one transaction, retrying deadlocks and serialization failures."""
        for attempt in range(RETRIES):
            try:
                with self._connection() as conn, conn.transaction():
                    return work(conn)
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure):
                if attempt == RETRIES - 1:
                    raise
                time.sleep(0.01 * 2**attempt)
        raise AssertionError("unreachable")

    def _read(
        self,
        sql: str,
        params: Sequence[Any] | dict[str, Any],
        largest: Callable[[list[TupleRow]], int] | None = None,
    ) -> list[TupleRow]:
        """The rows of ``sql``; with ``largest``, the bytes of their largest value count as
        carried by the connection (:data:`_carried`)."""
        with self._connection() as conn:
            rows = conn.execute(sql, params).fetchall()
            if largest is not None:
                _carried_change(conn, largest(rows))
            return rows

    # schema ------------------------------------------------------------------------------

    def migrate(self) -> int:
        """Apply pending migrations; several replicas starting at once take turns."""

        def apply(conn: psycopg.Connection[TupleRow]) -> int:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)"
            )
            row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
            version = int(row[0]) if row else 0
            known = migrations_for("postgresql")
            if known and version > known[-1].version:
                raise SchemaTooNew(
                    f"the database has schema version {version}; this csatdist knows up to "
                    f"{known[-1].version}. Upgrade csatdist."
                )
            for migration in known:
                if migration.version > version:
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_ms)"
                        " VALUES (%s, %s, %s)",
                        (migration.version, migration.name, int(time.time() * 1000)),
                    )
                    version = migration.version
            return version

        return self._transaction(apply)

    def schema_version(self) -> int:
        rows = self._read("SELECT max(version) FROM schema_migrations", ())
        return int(rows[0][0] or 0)

    # the fold ------------------------------------------------------------------------------

    def _wrote(self, rows: int) -> None:
        """After a write committed: wake the folder once enough is pending."""
        self._wrote_at = time.monotonic()
        self._written += rows
        if self._written >= FOLD_AFTER_ROWS:
            self._written = 0
            self._fold_now = True
            self._wake.set()
        elif self._resting:  # back to looking every FOLD_IDLE_SECONDS (to fold once idle)
            self._resting = False
            self._wake.set()

    def _fold_in_background(self) -> None:
        """The folder's thread: fold every account with something pending, one step per
        transaction, skipping an account another fold (of any replica) holds; while nothing is
        pending, looking less and less often (:data:`FOLD_REST_SECONDS`)."""
        idle = True
        delay = FOLD_IDLE_SECONDS
        while not self._stopping.is_set():
            if idle or self._fold_now:
                self._fold_now = False
                looked_at = time.monotonic()
                behind = True
                try:
                    behind = self._fold_all(wait=False)
                except (StoreUnavailable, psycopg.Error) as exc:
                    log.warning("background fold failed, to be tried again: %s", exc)
                except Exception:  # the thread goes on: reads fold what they need meanwhile
                    log.exception("background fold failed, to be tried again")
                delay = FOLD_IDLE_SECONDS if behind else min(2 * delay, FOLD_REST_SECONDS)
                # Resting, then whether this store wrote since it looked (in that order, and
                # _wrote the other way round: one of the two sees the other's).
                self._resting = delay > FOLD_IDLE_SECONDS
                if self._resting and self._wrote_at >= looked_at:
                    self._resting, delay = False, FOLD_IDLE_SECONDS
            self._wake.wait(max(delay, FOLD_IDLE_SECONDS))
            self._wake.clear()
            if not self._resting:  # a write woke it (or it was not resting)
                delay = FOLD_IDLE_SECONDS
            idle = time.monotonic() - self._wrote_at >= FOLD_IDLE_SECONDS

    def _fold_all(self, *, wait: bool = True, seconds: float | None = None) -> bool:
        """Fold every account with something pending: with ``wait``, including those another
        fold holds, else only until the store stops; for at most about ``seconds``. Whether
        anything was pending."""
        deadline = None if seconds is None else time.monotonic() + seconds

        def stop() -> bool:
            if deadline is not None and time.monotonic() > deadline:
                return True
            return not wait and self._stopping.is_set()

        behind = self._read(_BEHIND, ())
        for (account_id,) in behind:
            step = functools.partial(
                _fold_step, account_id=account_id, budget=FOLD_STEP_ROWS, wait=wait
            )
            while not stop() and self._transaction(step) is False:  # None: another holds it
                pass
            if stop():
                break
        return bool(behind)

    def _counted(self, account_id: str) -> None:
        """Before a read of an account's counters as a whole (sums, reports): fold its
        versions up to the current one (what any server acknowledged before this read began
        is then in them). One indexed read when nothing is pending."""
        rows = self._read(_VERSIONS, (account_id,))
        if not rows or int(rows[0][1]) >= int(rows[0][0]):
            return
        step = functools.partial(
            _fold_step, account_id=account_id, budget=FOLD_STEP_ROWS, through=int(rows[0][0])
        )
        while not self._transaction(step):
            pass

    def _all_counted(self) -> None:
        """:meth:`_counted` for every account with something pending."""
        for (account_id,) in self._read(_BEHIND, ()):
            self._counted(account_id)

    # answers and counts ------------------------------------------------------------------

    def record_answers(self, account_id: str, answers: Sequence[Answer]) -> IngestOutcome:
        if not answers:
            return IngestOutcome(0, 0, 0)
        ids = [a.id for a in answers]

        def write(conn: psycopg.Connection[TupleRow]) -> tuple[IngestOutcome, int]:
            _lock_account(conn, account_id)
            _carried_ids(conn, ids)
            stored = {
                row[0]: stored_from_row(row)
                for row in conn.execute(_STORED_AMONG, {"account": account_id, "ids": ids})
            }
            erased = [row[0] for row in conn.execute(_ERASED_AMONG, (account_id, ids))]
            plan = plan_ingest(answers, stored, erased)
            _, run_many = _runners(conn)
            names_of_answers(run_many, "%s", account_id, [*plan.new, *plan.corrected])
            if plan.new:
                with conn.cursor() as cursor, cursor.copy(_COPY_LOGGED) as copy:
                    copy.set_types(RECORD_COPY_TYPES)
                    for answer in plan.new:
                        copy.write_row(record_values(account_id, answer))
            if plan.corrected:
                corrections = [correction_values(account_id, a) for a in plan.corrected]
                with conn.cursor() as cursor:
                    for table in RECORD_TABLES:  # wherever it is now
                        cursor.executemany(CORRECT_RECORD.format(p="%s", table=table), corrections)
            changed = _log_changes(conn, account_id, plan.deltas)
            outcome = IngestOutcome(
                len(plan.new), len(plan.corrected), plan.duplicates, plan.refused
            )
            return outcome, len(plan.new) + changed

        outcome, written = self._transaction(write)
        self._wrote(written)
        return outcome

    def erase_answers(self, account_id: str, ids: Sequence[str], now_ms: int) -> ErasureOutcome:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return ErasureOutcome([], [])

        def write(conn: psycopg.Connection[TupleRow]) -> tuple[ErasureOutcome, int]:
            _lock_account(conn, account_id)
            _carried_ids(conn, wanted)
            records = [
                stored_from_row(row)
                for row in conn.execute(_STORED_AMONG, {"account": account_id, "ids": wanted})
            ]
            before = {row[0] for row in conn.execute(_ERASED_AMONG, (account_id, wanted))}
            for table in RECORD_TABLES:
                conn.execute(
                    f"DELETE FROM {table} WHERE account_id = %s AND answer_id = ANY(%s::text[])",
                    (account_id, wanted),
                )
            conn.execute(
                "INSERT INTO erased_answers (account_id, answer_id, erased_ms)"
                " SELECT %s, answer_id, %s FROM unnest(%s::text[]) AS t(answer_id)"
                " ORDER BY answer_id ON CONFLICT (account_id, answer_id) DO NOTHING",
                (account_id, now_ms, wanted),
            )
            changed = _log_changes(conn, account_id, erasure_deltas(records))
            return erasure_outcome(wanted, records, before), changed

        outcome, written = self._transaction(write)
        self._wrote(written)
        return outcome

    def list_answers(self, request: AnswersRequest) -> list[AnswerRecord]:
        def read(conn: psycopg.Connection[TupleRow]) -> list[AnswerRecord]:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            rows: list[Any] = []
            for table in RECORD_TABLES:  # one snapshot: a fold moves answers between them
                sql, params = listing_query(request, "%s", _id_list, table)
                rows += conn.execute(sql, params).fetchall()
            return listed_records(rows, request.limit)

        return self._transaction(read)

    def counts(self, request: CountsRequest) -> list[CountRow]:
        window = request.window
        columns = group_columns(request, "NULL::bigint")
        sql = (
            f"SELECT {', '.join(columns)}, sum(score1), sum(score2), sum(score3), sum(score4),"
            " sum(score5) FROM buckets"
            " WHERE account_id = %s AND bucket_end > %s AND bucket_end <= %s"
        )
        params: list[Any] = [request.account_id, window.start_ms, window.end_ms]
        for column, selection in (("skill_id", request.skills), ("agent_id", request.agents)):
            if selection is not None and selection.ids is not None:
                sql += f" AND {column} = ANY(%s::bigint[])"
                params.append(sorted(selection.ids))
        sql += " GROUP BY 1, 2, 3"
        self._counted(request.account_id)
        rows = self._read(sql, params)
        return [
            CountRow(r[0], r[1], r[2], (int(r[3]), int(r[4]), int(r[5]), int(r[6]), int(r[7])))
            for r in rows
        ]

    def account_snapshot(self, account_id: str) -> tuple[int, list[BucketRow]]:
        def read(conn: psycopg.Connection[TupleRow]) -> tuple[int, list[BucketRow]]:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = conn.execute(  # the version the counters hold: the change log has the rest
                "SELECT " + _FOLDED_VERSION.format(id="%s"), (account_id,)
            ).fetchone()
            rows = conn.execute(
                "SELECT bucket_end, skill_id, agent_id, score1, score2, score3, score4, score5"
                " FROM buckets WHERE account_id = %s",
                (account_id,),
            ).fetchall()
            return (int(row[0]) if row else 0), [tuple(map(int, r)) for r in rows]  # type: ignore[misc]

        return self._transaction(read)

    def account_snapshots(
        self, account_ids: Sequence[str], max_rows: int
    ) -> dict[str, tuple[int, list[BucketRow]]]:
        ids = list(account_ids)

        def read(conn: psycopg.Connection[TupleRow]) -> dict[str, tuple[int, list[BucketRow]]]:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            versions = conn.execute(  # the versions the counters hold
                "SELECT account_id, folded_version FROM account_folds WHERE account_id = ANY(%s)",
                (ids,),
            ).fetchall()
            sizes = conn.execute(SNAPSHOT_SIZES.format(accounts="= ANY(%s)"), (ids,)).fetchall()
            chosen = snapshot_accounts(sizes, max_rows)
            rows = conn.execute(SNAPSHOT_ROWS.format(accounts="= ANY(%s)"), (chosen,)).fetchall()
            return snapshots_from_rows(ids, versions, sizes, rows)  # BIGINT columns: ints

        return self._transaction(read)

    def account_changes(self, account_id: str, since_version: int) -> AccountChanges:
        return changes_from_rows(
            self._read(CHANGES_SINCE.format(p="%s"), (since_version, account_id), largest_change)
        )

    def account_version(self, account_id: str) -> int:
        rows = self._read(ACCOUNT_VERSION.format(p="%s"), (account_id,))
        return int(rows[0][0]) if rows else 0

    def busiest_accounts(self, limit: int) -> list[str]:
        return [row[0] for row in self._read(BUSIEST_ACCOUNTS.format(p="%s"), (limit,))]

    def latest_answer_ms(self, account_id: str) -> int | None:
        rows = self._read(  # one statement, one snapshot of both
            "SELECT greatest((SELECT max(answer_time) FROM answer_log WHERE account_id = %s),"
            " (SELECT max(answer_time) FROM answers WHERE account_id = %s))",
            (account_id, account_id),
        )
        return None if rows[0][0] is None else int(rows[0][0])

    def purge_changes(self, older_than_ms: int) -> int:
        """Never a change the counters do not hold yet: what is pending is folded first, and
        what was written since stays."""
        self._all_counted()

        def write(conn: psycopg.Connection[TupleRow]) -> int:
            row = conn.execute(_PURGE_CHANGES, (older_than_ms,)).fetchone()
            return int(row[0]) if row else 0

        return self._transaction(write)

    def purge(self, older_than_ms: int, history_older_than_ms: int | None = None) -> PurgeResult:
        """One purger at a time across replicas; small transactions so ingest never waits long."""
        cutoff = floor_to_bucket(older_than_ms)
        with self._connection() as lock_conn:
            lock_conn.autocommit = True
            row = lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (PURGE_LOCK,)).fetchone()
            if not row or not row[0]:
                return PurgeResult(0, 0)  # another replica is purging
            try:
                self._all_counted()  # the counters purged hold every change
                accounts = self._read("SELECT account_id, rolled_through FROM account_versions", ())
                buckets = records = history = 0
                for account_id, through in accounts:
                    buckets += self._purge_chunks(  # never a bucket the history lacks
                        "DELETE FROM buckets WHERE ctid = ANY(ARRAY(SELECT ctid FROM buckets"
                        f" WHERE account_id = %s AND bucket_end <= %s LIMIT {PURGE_CHUNK}))",
                        (account_id, min(cutoff, int(through))),
                    )
                    for table in RECORD_TABLES:  # in this order: a fold may move some
                        records += self._purge_chunks(
                            f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table}"
                            f" WHERE account_id = %s AND answer_time < %s LIMIT {PURGE_CHUNK}))",
                            (account_id, cutoff),
                            lock_account=account_id,  # a correction plans against these records
                        )
                    if history_older_than_ms is not None:
                        history += self._transaction(
                            functools.partial(
                                _purge_history, account_id=account_id, before=history_older_than_ms
                            )
                        )
                tombstones = self._purge_chunks(
                    "DELETE FROM erased_answers WHERE ctid = ANY(ARRAY(SELECT ctid FROM"
                    f" erased_answers WHERE erased_ms < %s LIMIT {PURGE_CHUNK}))",
                    (older_than_ms - CLOCK_SKEW_MS,),
                )
                self._purge_chunks("DELETE FROM sessions WHERE expires_ms < %s", (older_than_ms,))
                self._in_transaction(
                    lambda run, _: alerts_sql.purge_deliveries(
                        run, "%s", older_than_ms - DELIVERY_LOG_MS
                    )
                )
            finally:
                lock_conn.execute("SELECT pg_advisory_unlock(%s)", (PURGE_LOCK,))
                lock_conn.autocommit = False
        return PurgeResult(buckets, records, tombstones, history)

    # history -----------------------------------------------------------------------------

    def roll_up(self, up_to_ms: int) -> int:
        behind = [
            row[0]
            for row in self._read(
                "SELECT account_id FROM account_versions WHERE rolled_through < %s", (up_to_ms,)
            )
        ]
        for account_id in behind:
            while (
                self._transaction(
                    functools.partial(_roll_up_step, account_id=account_id, up_to=up_to_ms)
                )
                < up_to_ms
            ):
                pass
        return len(behind)

    def report_sums(self, request: SumsRequest) -> list[SumRow]:
        def read(conn: psycopg.Connection[TupleRow]) -> list[SumRow]:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            run, _ = _runners(conn)
            return history_sql.report_sums(run, "%s", _id_list, request)

        self._counted(request.account_id)
        return self._transaction(read)

    # directory and alerts ----------------------------------------------------------------

    def _in_transaction(self, work: Callable[[history_sql.Run, history_sql.RunMany], T]) -> T:
        return self._transaction(lambda conn: work(*_runners(conn)))

    def directory(self, account_id: str) -> Directory:
        return self._in_transaction(lambda run, _: read_directory(run, "%s", account_id))

    def update_directory(self, account_id: str, update: DirectoryUpdate, now_ms: int) -> None:
        self._in_transaction(
            lambda run, run_many: apply_update(run, run_many, "%s", account_id, update, now_ms)
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
        def work(run: history_sql.Run, _: history_sql.RunMany) -> tuple[bool, StoredRule]:
            # Serialise rule creation per account, so two replicas cannot both pass the cap.
            run("SELECT pg_advisory_xact_lock(hashtext(%s)) IS NULL", (f"rules:{account_id}",))
            return alerts_sql.put_rule(
                run,
                "%s",
                " FOR UPDATE",
                account_id,
                name,
                document,
                sealed_secret,
                now_ms,
                max_rules,
            )

        return self._in_transaction(work)

    def alert_rule(self, account_id: str, name: str) -> StoredRule | None:
        return self._in_transaction(
            lambda run, _: alerts_sql.get_rule(run, "%s", "", account_id, name)
        )

    def alert_rules(self, account_id: str | None = None) -> list[StoredRule]:
        return self._in_transaction(lambda run, _: alerts_sql.list_rules(run, "%s", account_id))

    def delete_alert_rule(self, account_id: str, name: str) -> bool:
        return self._in_transaction(
            lambda run, _: alerts_sql.delete_rule(run, "%s", account_id, name)
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
        return self._in_transaction(
            lambda run, _: alerts_sql.record_evaluation(
                run, "%s", " FOR UPDATE", account_id, name, order, now_ms, decide, limits
            )
        )

    def claim_deliveries(self, now_ms: int, lease_ms: int, limit: int) -> list[PendingDelivery]:
        return self._in_transaction(
            lambda run, _: alerts_sql.claim(
                run, "%s", " FOR UPDATE SKIP LOCKED", now_ms, lease_ms, limit
            )
        )

    def finish_attempt(
        self,
        delivery_id: str,
        attempt: AttemptRecord,
        next_attempt_ms: int | None,
        outcome: str | None,
    ) -> None:
        self._in_transaction(
            lambda run, _: alerts_sql.finish(
                run, "%s", delivery_id, attempt, next_attempt_ms, outcome
            )
        )

    def deliveries(self, account_id: str, name: str, limit: int) -> list[DeliveryRecord]:
        return self._in_transaction(
            lambda run, _: alerts_sql.list_deliveries(run, "%s", account_id, name, limit)
        )

    def import_history(self, account_id: str, rows: Sequence[Sequence[int]]) -> int:
        def write(conn: psycopg.Connection[TupleRow]) -> int:
            _lock_account(conn, account_id)
            _fold_counters(conn, account_id)  # the import checks itself against the counters
            run, run_many = _runners(conn)
            return history_sql.import_history(run, run_many, "%s", account_id, rows)

        return self._transaction(write)

    def _purge_chunks(
        self, sql: str, params: tuple[Any, ...], *, lock_account: str | None = None
    ) -> int:
        """Run a bounded DELETE until it deletes fewer rows than a chunk; the total deleted.
        With ``lock_account``, each chunk holds the account's write lock, like its writes."""

        def delete_chunk(conn: psycopg.Connection[TupleRow]) -> int:
            if lock_account is not None:
                _lock_account(conn, lock_account)
            return conn.execute(sql, params).rowcount

        total = 0
        while True:
            deleted = self._transaction(delete_chunk)
            total += deleted
            if deleted < PURGE_CHUNK:
                return total

    def ping(self) -> None:
        self._read("SELECT 1", ())

    # keys --------------------------------------------------------------------------------

    def add_key(self, key: ApiKey) -> None:
        values = key_values(key)
        self._transaction(
            lambda conn: conn.execute(
                f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ({', '.join(['%s'] * 11)})",
                values,
            )
        )

    def find_key(self, account_id: str, key_id: str) -> ApiKey | None:
        rows = self._read(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE account_id = %s AND key_id = %s",
            (account_id, key_id),
        )
        return key_from_row(rows[0]) if rows else None

    def list_keys(self, account_id: str | None = None) -> list[ApiKey]:
        sql = f"SELECT {KEY_COLUMNS} FROM api_keys"
        params: tuple[Any, ...] = ()
        if account_id is not None:
            sql += " WHERE account_id = %s"
            params = (account_id,)
        return [
            key_from_row(r) for r in self._read(sql + " ORDER BY account_id, created_ms", params)
        ]

    def revoke_key(self, key_id: str, at_ms: int) -> ApiKey | None:
        def write(conn: psycopg.Connection[TupleRow]) -> ApiKey | None:
            conn.execute(
                "UPDATE api_keys SET revoked_ms = %s WHERE key_id = %s AND revoked_ms IS NULL",
                (at_ms, key_id),
            )
            row = conn.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = %s", (key_id,)
            ).fetchone()
            return key_from_row(row) if row else None

        return self._transaction(write)

    # users and sessions ------------------------------------------------------------------

    def add_user(self, user: User) -> bool:
        def write(conn: psycopg.Connection[TupleRow]) -> bool:
            row = conn.execute(
                f"INSERT INTO users ({USER_COLUMNS}) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (account_id, username)"
                " DO UPDATE SET password_hash = excluded.password_hash"
                " RETURNING (xmax = 0)",
                (user.account_id, user.username, user.password_hash, user.created_ms),
            ).fetchone()
            created = bool(row and row[0])
            if not created:
                conn.execute(
                    REVOKE_SESSIONS.format(p="%s"),
                    (int(time.time() * 1000), user.account_id, user.username),
                )
            return created

        return self._transaction(write)

    def find_user(self, account_id: str, username: str) -> User | None:
        rows = self._read(
            f"SELECT {USER_COLUMNS} FROM users WHERE account_id = %s AND username = %s",
            (account_id, username),
        )
        return User(*rows[0]) if rows else None

    def list_users(self, account_id: str) -> list[User]:
        rows = self._read(
            f"SELECT {USER_COLUMNS} FROM users WHERE account_id = %s ORDER BY username",
            (account_id,),
        )
        return [User(*row) for row in rows]

    def delete_user(self, account_id: str, username: str) -> bool:
        def write(conn: psycopg.Connection[TupleRow]) -> bool:
            conn.execute(
                "DELETE FROM sessions WHERE account_id = %s AND username = %s",
                (account_id, username),
            )
            deleted = conn.execute(
                "DELETE FROM users WHERE account_id = %s AND username = %s",
                (account_id, username),
            ).rowcount
            return deleted > 0

        return self._transaction(write)

    def revoke_sessions(self, account_id: str, username: str, at_ms: int) -> int:
        return self._transaction(
            lambda conn: (
                conn.execute(REVOKE_SESSIONS.format(p="%s"), (at_ms, account_id, username)).rowcount
            )
        )

    def add_session(self, session: Session) -> None:
        self._transaction(
            lambda conn: conn.execute(
                f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                session_values(session),
            )
        )

    def find_session(self, account_id: str, session_id: str) -> Session | None:
        rows = self._read(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE account_id = %s AND session_id = %s",
            (account_id, session_id),
        )
        if not rows:
            return None
        row = rows[0]
        return session_from_row(row)

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._folder.join()
        if self._wrote_at:  # a store closed cleanly leaves nothing of its own pending
            try:
                self._fold_all(seconds=CLOSE_FOLD_SECONDS)
            except (StoreUnavailable, psycopg.Error) as exc:
                log.warning("fold on close failed, left for the next fold: %s", exc)
        self._pool.close()
