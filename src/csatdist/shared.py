"""What the worker processes of one ``csatdist serve --workers N`` share: the concurrency limits
and the OAuth nonces, in shared memory, each change made under a file lock.

Without it every worker would keep its own counts, and a per-account limit of 10 would let
10 x N queries in flight, a nonce used on one worker would be accepted again on another.
Redis does the same across machines; this needs nothing on one machine.

**Crash safety.** Each worker owns a column of the counters, claimed by its pid when it starts.
A worker killed with requests in flight leaves counts in its column; the worker started in its
place (uvicorn restarts dead workers) claims the first column whose pid is gone and zeroes it,
so nothing stays held.

**Layout** (one segment per limit): the workers' pids, then one row per account holding slots
now — at most the global limit of them, since each holds at least one — with the account's hash
and a count per worker column, then each row's total and the total of all rows (kept with the
counts, so taking a slot reads two numbers instead of summing every row's columns). Nonces: an
open-addressing table of (128-bit hash, expiry).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

from csatdist.errors import LimitPolicy, TooManyRequests
from csatdist.settings import Settings

#: Worker columns: more workers than this share no limits (serve refuses to start them).
MAX_WORKERS = 64
#: Slots the nonce table holds: a 5-minute window at about 3,000 OAuth requests a second.
NONCE_SLOTS = 1 << 20
#: The longest run of slots searched for a nonce; past it the table counts as full.
NONCE_PROBES = 64


def _hash64(text: str) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") | 1  # never 0: 0 marks a free row


class _Region:
    """A named shared-memory segment and the lock file that guards it."""

    def __init__(self, name: str, size: int, lock_path: Path, *, create: bool) -> None:
        self.name = name
        if create:
            with contextlib.suppress(FileNotFoundError):
                old = shared_memory.SharedMemory(name=name)
                old.close()
                old.unlink()
            self.memory = shared_memory.SharedMemory(name=name, create=True, size=size)
            np.ndarray((size,), np.uint8, self.memory.buf)[:] = 0
            lock_path.touch()
        else:
            self.memory = shared_memory.SharedMemory(name=name)
        self._lock = os.open(lock_path, os.O_RDWR)
        self.views: list[np.ndarray] = []

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def view(self, shape: tuple[int, ...], dtype: type, offset: int) -> np.ndarray:
        array: np.ndarray = np.ndarray(shape, dtype, self.memory.buf, offset)
        self.views.append(array)
        return array

    def close(self, *, unlink: bool = False) -> None:
        self.views.clear()  # no view may outlive the mapping
        with contextlib.suppress(OSError):
            os.close(self._lock)
        with contextlib.suppress(BufferError):
            self.memory.close()
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                self.memory.unlink()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SharedLimiter:
    """At most ``per_account`` slots per account and ``global_limit`` in all, across the
    workers attached to the same segment. The :class:`csatdist.limits.Limiter` protocol."""

    def __init__(
        self,
        name: str,
        per_account: int,
        global_limit: int,
        lock_path: Path,
        *,
        create: bool = False,
        noun: str = "queries in flight",
    ) -> None:
        self.per_account = per_account
        self.global_limit = global_limit
        self.noun = noun
        rows = global_limit
        counts_at = 8 * MAX_WORKERS + 8 * rows
        totals_at = counts_at + 4 * rows * MAX_WORKERS
        size = totals_at + 4 * rows + 8
        self._region = _Region(name, size, lock_path, create=create)
        region = self._region
        self._pids = region.view((MAX_WORKERS,), np.int64, 0)
        self._hashes = region.view((rows,), np.uint64, 8 * MAX_WORKERS)
        self._counts = region.view((rows, MAX_WORKERS), np.int32, counts_at)
        self._totals = region.view((rows,), np.int32, totals_at)  # each row's columns summed
        self._in_all = region.view((1,), np.int64, totals_at + 4 * rows)  # every row's
        self._rows: dict[int, int] = {}  # this process's guess of an account's row
        self.column = -1 if create else self._claim_column()

    def _claim_column(self) -> int:
        """This process's column: the first one free or left by a dead worker (zeroed)."""
        pid = os.getpid()
        with self._region.locked():
            for column in range(MAX_WORKERS):
                held = int(self._pids[column])
                if held == pid:
                    return column
                if not _pid_alive(held):
                    left = self._counts[:, column].copy()  # a dead worker's slots, given back
                    self._totals[:] -= left
                    self._in_all[0] -= int(left.sum())
                    self._counts[:, column] = 0
                    self._pids[column] = pid
                    return column
        raise RuntimeError(f"more than {MAX_WORKERS} workers share the limits")

    def _row_of(self, key: int) -> int:
        """The row holding ``key``'s slots, or -1 (under the lock): the row this process saw
        it in last if it still holds it, else a search of every row's hash."""
        row = self._rows.get(key, -1)
        if row >= 0 and int(self._hashes[row]) == key:
            return row
        rows = np.flatnonzero(self._hashes == np.uint64(key))
        row = int(rows[0]) if len(rows) else -1
        if row >= 0:
            if len(self._rows) >= len(self._hashes):  # bounded like the rows themselves
                self._rows.clear()
            self._rows[key] = row
        return row

    def _policies(self) -> list[LimitPolicy]:
        return [LimitPolicy("account", self.per_account), LimitPolicy("global", self.global_limit)]

    def take(self, account_id: str) -> str:
        key = _hash64(account_id)
        with self._region.locked():
            row = self._row_of(key)
            held = int(self._totals[row]) if row >= 0 else 0
            if held >= self.per_account:
                who = "this account already has"
                raise self._refusal("account", f"{who} {held} {self.noun}", self.per_account)
            in_all = int(self._in_all[0])
            if in_all >= self.global_limit:
                raise self._refusal(
                    "global", f"the service has {in_all} {self.noun}", self.global_limit
                )
            if row < 0:  # a row no account holds slots in
                row = int(np.flatnonzero(self._totals == 0)[0])
                self._hashes[row] = key
                self._rows[key] = row
            self._counts[row, self.column] += 1
            self._totals[row] += 1
            self._in_all[0] += 1
        return "shared"

    def _refusal(self, scope: str, what: str, limit: int) -> TooManyRequests:
        return TooManyRequests(
            f"{what} (limit {limit}); retry shortly", self._policies(), scope=scope
        )

    def give_back(self, account_id: str) -> None:
        with self._region.locked():
            row = self._row_of(_hash64(account_id))
            if row >= 0 and self._counts[row, self.column] > 0:
                self._counts[row, self.column] -= 1
                self._totals[row] -= 1
                self._in_all[0] -= 1

    def in_flight_for(self, account_id: str) -> int:
        with self._region.locked():
            row = self._row_of(_hash64(account_id))
            return int(self._totals[row]) if row >= 0 else 0

    async def acquire(self, account_id: str) -> str:
        return self.take(account_id)

    async def release(self, account_id: str, lease: str) -> None:
        self.give_back(account_id)

    async def renew(self, account_id: str, lease: str) -> None:
        return None

    async def close(self) -> None:
        self._close()

    def _close(self) -> None:
        del self._pids, self._hashes, self._counts, self._totals, self._in_all
        self._region.close(unlink=self.column < 0)

    def unlink(self) -> None:
        """Remove the segment (the supervisor, when the server stops)."""
        self.column = -1
        self._close()


class SharedNonceCache:
    """OAuth nonces seen in the last window, across workers (the NonceCache protocol)."""

    def __init__(
        self,
        name: str,
        window_seconds: int,
        lock_path: Path,
        *,
        create: bool = False,
        slots: int = NONCE_SLOTS,
    ) -> None:
        self.window_seconds = window_seconds
        self.slots = slots
        self._region = _Region(name, 24 * slots, lock_path, create=create)
        self._keys = self._region.view((slots, 2), np.uint64, 0)
        self._expires = self._region.view((slots,), np.float64, 16 * slots)

    def first_use(self, client_key: str, token: str, timestamp: str, nonce: str) -> bool:
        digest = hashlib.blake2b(
            "\x00".join((client_key, token, timestamp, nonce)).encode(), digest_size=16
        ).digest()
        high = int.from_bytes(digest[:8], "little") | 1
        low = int.from_bytes(digest[8:], "little")
        now = time.time()
        start = high % self.slots
        positions = (start + np.arange(NONCE_PROBES)) % self.slots
        with self._region.locked():
            keys = self._keys[positions]
            live = self._expires[positions] > now
            same = (keys[:, 0] == np.uint64(high)) & (keys[:, 1] == np.uint64(low)) & live
            if same.any():
                return False
            free = np.flatnonzero(~live)
            if not len(free):  # too many nonces at once: refuse rather than forget one
                return False
            position = positions[free[0]]
            self._keys[position] = (high, low)
            self._expires[position] = now + 2 * self.window_seconds
        return True

    def close(self, *, unlink: bool = False) -> None:
        del self._keys, self._expires
        self._region.close(unlink=unlink)


#: Names the shared segments of a running ``serve --workers N`` (set by it for its workers).
STATE_VARIABLE = "CSATDIST_SHARED_STATE"


class SharedState:
    """The shared limits and nonces of one multi-worker server, by kind of work."""

    KINDS = ("queries", "ingest", "exports", "streams")

    def __init__(self, prefix: str, directory: Path, settings: Settings, *, create: bool) -> None:
        self.prefix = prefix
        self.directory = directory
        limits = {
            "queries": (settings.max_concurrent_requests, settings.max_concurrent_requests_global),
            "ingest": (settings.max_concurrent_ingest, settings.max_concurrent_ingest_global),
            "exports": (settings.max_concurrent_exports, settings.max_concurrent_exports_global),
            "streams": (settings.max_streams_per_account, settings.max_streams_global),
        }
        nouns = {
            "queries": "queries in flight",
            "ingest": "write requests in flight",
            "exports": "exports in flight",
            "streams": "open streams",
        }
        self.limiters = {
            kind: SharedLimiter(
                f"{prefix}-{kind}",
                per_account,
                in_all,
                directory / f"{kind}.lock",
                create=create,
                noun=nouns[kind],
            )
            for kind, (per_account, in_all) in limits.items()
        }
        self.nonces = SharedNonceCache(
            f"{prefix}-nonces",
            settings.oauth_timestamp_window_seconds,
            directory / "nonces.lock",
            create=create,
        )

    @property
    def primary(self) -> bool:
        """The first worker: the one that runs the server's single background jobs."""
        return self.limiters["queries"].column == 0

    @classmethod
    def create(cls, settings: Settings, directory: Path) -> SharedState:
        """The supervisor's segments (before it starts the workers)."""
        return cls(f"csatdist-{os.getpid()}", directory, settings, create=True)

    def variable(self) -> str:
        return f"{self.prefix}|{self.directory}"

    @classmethod
    def from_environment(cls, settings: Settings) -> SharedState | None:
        """A worker's view of its supervisor's segments, when it runs under one."""
        value = os.environ.get(STATE_VARIABLE)
        if not value:
            return None
        prefix, _, directory = value.partition("|")
        return cls(prefix, Path(directory), settings, create=False)

    def unlink(self) -> None:
        for limiter in self.limiters.values():
            limiter.unlink()
        self.nonces.close(unlink=True)
