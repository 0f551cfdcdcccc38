"""PostgreSQL backend: a psycopg 3 connection pool, set-based writes, advisory-locked upkeep.

Several API replicas share one database. Ingest is one statement in one transaction: the new
idempotency keys are inserted with ``ON CONFLICT DO NOTHING RETURNING`` and only those answers
are added to the counters. Rows are written in key order, so concurrent overlapping ingests wait
for each other instead of deadlocking; a deadlock or serialization failure is retried anyway.
Every statement filters on one ``account_id`` (ready for distribution by account with Citus).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolTimeout

from csatdist.answers import Answer
from csatdist.distribution import CountRow
from csatdist.errors import StoreUnavailable
from csatdist.store import (
    AccountChanges,
    ApiKey,
    BucketRow,
    CountsRequest,
    PurgeResult,
    Session,
    User,
)
from csatdist.store.migrations import SchemaTooNew, migrations_for
from csatdist.store.sql import (
    ACCOUNT_VERSION,
    CHANGES_SINCE,
    KEY_COLUMNS,
    REVOKE_SESSIONS,
    SESSION_COLUMNS,
    USER_COLUMNS,
    changes_from_rows,
    group_columns,
    key_from_row,
    key_values,
    session_from_row,
    session_values,
)

T = TypeVar("T")
#: Advisory lock ids: one for migrations, one for the retention purge.
MIGRATION_LOCK = 0x63736174_0001
PURGE_LOCK = 0x63736174_0002
PURGE_CHUNK = 5000
RETRIES = 5

_INGEST = """
WITH incoming AS (
    SELECT * FROM unnest(%(ids)s::text[], %(times)s::bigint[], %(ends)s::bigint[],
                         %(skills)s::bigint[], %(agents)s::bigint[], %(scores)s::smallint[])
        AS t(answer_id, answer_time, bucket_end, skill_id, agent_id, score)
),
inserted AS (
    INSERT INTO answer_ids (account_id, answer_id, answer_time)
    SELECT %(account)s, answer_id, answer_time FROM incoming ORDER BY answer_id
    ON CONFLICT (account_id, answer_id) DO NOTHING
    RETURNING answer_id
),
deltas AS (
    SELECT i.bucket_end, i.skill_id, i.agent_id,
           count(*) FILTER (WHERE i.score = 1) AS s1, count(*) FILTER (WHERE i.score = 2) AS s2,
           count(*) FILTER (WHERE i.score = 3) AS s3, count(*) FILTER (WHERE i.score = 4) AS s4,
           count(*) FILTER (WHERE i.score = 5) AS s5
    FROM incoming i JOIN inserted n ON n.answer_id = i.answer_id
    GROUP BY i.bucket_end, i.skill_id, i.agent_id
),
changes AS (
    INSERT INTO bucket_changes (account_id, version, bucket_end, skill_id, agent_id,
                                score1, score2, score3, score4, score5, created_ms)
    SELECT %(account)s, %(version)s, bucket_end, skill_id, agent_id, s1, s2, s3, s4, s5,
           %(created)s
    FROM deltas
    RETURNING 1
),
counted AS (
    INSERT INTO buckets AS b (account_id, bucket_end, skill_id, agent_id,
                              score1, score2, score3, score4, score5)
    SELECT %(account)s, bucket_end, skill_id, agent_id, s1, s2, s3, s4, s5 FROM deltas
    ORDER BY bucket_end, skill_id, agent_id
    ON CONFLICT (account_id, bucket_end, skill_id, agent_id) DO UPDATE SET
        score1 = b.score1 + excluded.score1, score2 = b.score2 + excluded.score2,
        score3 = b.score3 + excluded.score3, score4 = b.score4 + excluded.score4,
        score5 = b.score5 + excluded.score5
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM counted),
       (SELECT count(*) FROM changes)
"""


class PostgresStore:
    point_reads_inline = False

    def __init__(self, url: str, *, pool_size: int = 10, connect_timeout: float = 5.0) -> None:
        self.url = url
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

    # plumbing ----------------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[TupleRow]]:
        try:
            with self._pool.connection() as conn:
                yield conn
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

    def _read(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[TupleRow]:
        with self._connection() as conn:
            return conn.execute(sql, params).fetchall()

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

    # answers and counts ------------------------------------------------------------------

    def record_answers(self, account_id: str, answers: Sequence[Answer]) -> int:
        if not answers:
            return 0
        params = {
            "account": account_id,
            "ids": [a.id for a in answers],
            "times": [a.time_ms for a in answers],
            "ends": [a.bucket_end for a in answers],
            "skills": [a.skill_id for a in answers],
            "agents": [a.agent_id for a in answers],
            "scores": [a.score for a in answers],
        }

        def write(conn: psycopg.Connection[TupleRow]) -> int:
            # Taking the account's version row first orders every ingest of an account: a reader
            # that sees version v knows every version before it has committed.
            version = conn.execute(
                "INSERT INTO account_versions (account_id, version) VALUES (%s, 1)"
                " ON CONFLICT (account_id) DO UPDATE SET version = account_versions.version + 1"
                " RETURNING version",
                (account_id,),
            ).fetchone()
            row = conn.execute(
                _INGEST,
                {
                    **params,
                    "version": version[0] if version else 0,
                    "created": int(time.time() * 1000),
                },
            ).fetchone()
            return int(row[0]) if row else 0

        return self._transaction(write)

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
        rows = self._read(sql, params)
        return [
            CountRow(r[0], r[1], r[2], (int(r[3]), int(r[4]), int(r[5]), int(r[6]), int(r[7])))
            for r in rows
        ]

    def account_snapshot(self, account_id: str) -> tuple[int, list[BucketRow]]:
        def read(conn: psycopg.Connection[TupleRow]) -> tuple[int, list[BucketRow]]:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = conn.execute(
                "SELECT version FROM account_versions WHERE account_id = %s", (account_id,)
            ).fetchone()
            rows = conn.execute(
                "SELECT bucket_end, skill_id, agent_id, score1, score2, score3, score4, score5"
                " FROM buckets WHERE account_id = %s",
                (account_id,),
            ).fetchall()
            return (int(row[0]) if row else 0), [tuple(map(int, r)) for r in rows]  # type: ignore[misc]

        return self._transaction(read)

    def account_changes(self, account_id: str, since_version: int) -> AccountChanges:
        return changes_from_rows(
            self._read(CHANGES_SINCE.format(p="%s"), (since_version, account_id))
        )

    def account_version(self, account_id: str) -> int:
        rows = self._read(ACCOUNT_VERSION.format(p="%s"), (account_id,))
        return int(rows[0][0]) if rows else 0

    def latest_answer_ms(self, account_id: str) -> int | None:
        rows = self._read(
            "SELECT max(answer_time) FROM answer_ids WHERE account_id = %s", (account_id,)
        )
        return None if rows[0][0] is None else int(rows[0][0])

    def purge_changes(self, older_than_ms: int) -> int:
        def write(conn: psycopg.Connection[TupleRow]) -> int:
            conn.execute(
                "UPDATE account_versions v SET purged_through = greatest(v.purged_through, c.top)"
                " FROM (SELECT account_id, max(version) AS top FROM bucket_changes"
                "       WHERE created_ms < %s GROUP BY account_id) c"
                " WHERE c.account_id = v.account_id",
                (older_than_ms,),
            )
            return conn.execute(
                "DELETE FROM bucket_changes WHERE created_ms < %s", (older_than_ms,)
            ).rowcount

        return self._transaction(write)

    def purge(self, older_than_ms: int) -> PurgeResult:
        """One purger at a time across replicas; small transactions so ingest never waits long."""
        statements = {
            "buckets": "DELETE FROM buckets WHERE ctid = ANY(ARRAY(SELECT ctid FROM buckets"
            f" WHERE bucket_end <= %s LIMIT {PURGE_CHUNK}))",
            "answer_ids": "DELETE FROM answer_ids WHERE ctid = ANY(ARRAY(SELECT ctid FROM"
            f" answer_ids WHERE answer_time < %s LIMIT {PURGE_CHUNK}))",
        }
        totals = {"buckets": 0, "answer_ids": 0}

        def delete_chunk(sql: str, conn: psycopg.Connection[TupleRow]) -> int:
            return conn.execute(sql, (older_than_ms,)).rowcount

        with self._connection() as lock_conn:
            lock_conn.autocommit = True
            row = lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (PURGE_LOCK,)).fetchone()
            if not row or not row[0]:
                return PurgeResult(0, 0)  # another replica is purging
            try:
                for table, sql in statements.items():
                    while True:
                        deleted = self._transaction(functools.partial(delete_chunk, sql))
                        totals[table] += deleted
                        if deleted < PURGE_CHUNK:
                            break
                self._transaction(
                    lambda conn: conn.execute(
                        "DELETE FROM sessions WHERE expires_ms < %s", (older_than_ms,)
                    )
                )
            finally:
                lock_conn.execute("SELECT pg_advisory_unlock(%s)", (PURGE_LOCK,))
                lock_conn.autocommit = False
        return PurgeResult(**totals)

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
        self._pool.close()
