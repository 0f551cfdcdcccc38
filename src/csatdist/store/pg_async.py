"""PostgreSQL point reads awaited on the event loop: an account's version (with its changes
since the version a server holds), a key, a session.

A small query whose aggregate and rendered response are already in memory needs only these
reads; through the store's own (synchronous) pool each one took a hop to a worker thread and,
in an implicit transaction with a check on checkout, four round trips (check, BEGIN, SELECT,
COMMIT). Here each is one statement on an autocommit connection of an asyncio pool: one round
trip, no thread. A single statement sees every transaction committed before it started, so a
version read here after a request arrived is at least that of any write acknowledged before.
When the version moved, the changes read with it are what a worker thread applies: the change
log is not read a second time there (in the synchronous pool's four round trips).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from csatdist.errors import StoreUnavailable
from csatdist.store import ApiKey, FetchedChanges, Session
from csatdist.store.sql import (
    CHANGES_SINCE,
    KEY_COLUMNS,
    SESSION_COLUMNS,
    changes_from_rows,
    key_from_row,
    largest_change,
    session_from_row,
)

_FIND_KEY = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE account_id = %s AND key_id = %s"
_FIND_SESSION = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE account_id = %s AND session_id = %s"


def retire(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Have the pool close ``conn`` when it is given back and open another when one is needed:
    the path of the pool's own ``max_lifetime`` (the time psycopg keeps on every connection for
    its pool), quietly, where closing it ourselves would log a warning for each."""
    conn._expire_at = 0.0


class AsyncPointReads:
    """Point reads on their own asyncio connection pool, opened and closed on the event loop
    that uses it (the server's lifespan)."""

    def __init__(
        self,
        url: str,
        *,
        max_size: int,
        connect_timeout: float,
        connection_keep_bytes: int = 64 * 1024,
    ) -> None:
        self._keep_bytes = connection_keep_bytes
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max(1, max_size),
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout))},
            timeout=connect_timeout,
            open=False,
            name="csatdist-point-reads",
        )

    async def open(self) -> None:
        await self._pool.open(wait=False)  # connections are made in the background

    async def close(self) -> None:
        await self._pool.close()

    async def _rows(
        self,
        sql: str,
        params: tuple[Any, ...],
        largest: Callable[[list[TupleRow]], int] | None = None,
    ) -> list[TupleRow]:
        """The rows of ``sql``; a connection whose ``largest`` value in them is over
        ``connection_keep_bytes`` is closed, not kept (the store's ``_carried``)."""
        for attempt in range(2):
            try:
                async with self._pool.connection() as conn:
                    cursor = await conn.execute(sql, params)
                    rows = await cursor.fetchall()
                    if largest is not None and largest(rows) > self._keep_bytes:
                        retire(conn)
                    return rows
            except PoolTimeout as exc:
                raise StoreUnavailable(f"no PostgreSQL connection available: {exc}") from exc
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if attempt:
                    raise StoreUnavailable(f"PostgreSQL is unreachable: {exc}") from exc
                # A connection broken by a server restart: drop every such idle one (the pool
                # makes new ones), then try once more.
                await self._pool.check()
        raise AssertionError("unreachable")

    async def _row(self, sql: str, params: tuple[Any, ...]) -> TupleRow | None:
        rows = await self._rows(sql, params)
        return rows[0] if rows else None

    async def account_changes(self, account_id: str, since_version: int) -> FetchedChanges:
        rows = await self._rows(
            CHANGES_SINCE.format(p="%s"), (since_version, account_id), largest_change
        )
        version = int(rows[0][0]) if rows else 0
        return FetchedChanges(since_version, version, functools.partial(changes_from_rows, rows))

    async def find_key(self, account_id: str, key_id: str) -> ApiKey | None:
        row = await self._row(_FIND_KEY, (account_id, key_id))
        return key_from_row(row) if row else None

    async def find_session(self, account_id: str, session_id: str) -> Session | None:
        row = await self._row(_FIND_SESSION, (account_id, session_id))
        return session_from_row(row) if row else None
