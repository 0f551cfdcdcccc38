"""What the worker processes of one ``csatdist serve --workers N`` share: the concurrency limits,
the large replies' memory budget, the login rates and the OAuth nonces, in shared memory, each
change made under a file lock.

Without it every worker would keep its own counts, and a per-account limit of 10 would let
10 x N queries in flight, a nonce used on one worker would be accepted again on another.
Redis does the same across machines; this needs nothing on one machine.

**Crash safety.** Each worker owns a column of the counters, claimed by its pid when it starts.
A worker killed with requests in flight leaves counts in its column; the worker started in its
place (the supervisor replaces a dead worker) claims the first column whose pid is gone and gives
its slots back, so nothing stays held.

**Layout** (one segment per limit): the workers' pids, then a hash table of the accounts holding
slots now (open addressing, linear probing; a power of two of rows, at least twice the global
limit, since each account in it holds a slot at least), each row with the account's hash and a
count per worker column, then each row's total and the total of all rows (kept with the counts,
so taking a slot reads two numbers instead of summing every row's columns). A row is emptied
when its total returns to 0, and the rows after it that probing would no longer reach move back
(no tombstones). Taking and giving back a slot hold the lock for a few item reads and writes
through memoryviews (4 µs for both on this machine, the two file locks' system calls half of
it; a NumPy array's items one at a time made it 9 µs, and finding a row by scanning every
row's hash 14 µs). Nonces: an open-addressing table of (128-bit hash, expiry). Login rates:
one of (64-bit hash, tokens, time), whose rows are taken over, never emptied.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import hashlib
import math
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import shared_memory
from pathlib import Path
from typing import Literal

import numpy as np

from csatdist.errors import LimitPolicy, TooManyRequests
from csatdist.limits import (
    LARGE_RESPONSE_BYTES,
    answer_rate_refusal,
    memory_refusal,
    rate_refusal,
    spend_tokens,
)
from csatdist.settings import Settings, answer_burst, heavy_places
from csatdist.users import crowded, failed_names_bound, lockout

#: Worker columns: more workers than this share no limits (serve refuses to start them).
MAX_WORKERS = 64
#: Slots the nonce table holds: a 5-minute window at about 3,000 OAuth requests a second.
NONCE_SLOTS = 1 << 20
#: The longest run of slots searched for a nonce; past it the table counts as full.
NONCE_PROBES = 64
#: The run of rows searched for a client's rate; past it the bucket idle longest is dropped.
RATE_PROBES = 32


#: A row's worker counts, all zero.
_ZEROS = array.array("i", bytes(4 * MAX_WORKERS))


def _table_rows(global_limit: int) -> int:
    """Rows of a limiter's table: a power of two, at least twice the accounts that can hold
    slots at once (each holds one at least), so that probes stay short."""
    return 1 << max(3, (2 * global_limit - 1).bit_length())


def _hash64(text: str, secret: bytes = b"") -> int:
    """A 64-bit hash of ``text``, keyed with ``secret`` (a table whose keys clients choose, so
    that they cannot choose names that meet in one row run offline)."""
    digest = hashlib.blake2b(text.encode(), digest_size=8, key=secret).digest()
    return int.from_bytes(digest, "little") | 1  # never 0: 0 marks a free row


#: Bytes before the rows of a table keyed with a secret: the secret, then padding to a line.
_HEADER = 64
_SECRET = 32


class _Region:
    """A named shared-memory segment and the lock file that guards it."""

    def __init__(self, name: str, size: int, lock_path: Path, *, create: bool) -> None:
        self.name = name
        self.views: list[np.ndarray] = []
        self._scalars: list[memoryview[int] | memoryview[float]] = []
        self._lock = -1
        self._threads = threading.Lock()
        if create:
            with contextlib.suppress(FileNotFoundError):
                old = shared_memory.SharedMemory(name=name)
                old.close()
                old.unlink()
            # A new segment reads as zeros (the kernel's pages), and stays unmapped until used:
            # writing the zeros would make all of it resident at once.
            self.memory = shared_memory.SharedMemory(name=name, create=True, size=size)
            lock_path.touch()
        else:
            self.memory = shared_memory.SharedMemory(name=name)
        self._lock = os.open(lock_path, os.O_RDWR)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.lock()
        try:
            yield
        finally:
            self.unlock()

    def __del__(self) -> None:
        # Dropped unclosed (a test's worker, an interpreter exiting): the memoryviews go first,
        # or the mapping, freed before them, could not close.
        if hasattr(self, "memory"):
            self.close()

    def lock(self) -> None:
        """Wait for the segment's lock: this process's threads' first (a file lock belongs to
        the open file, so another thread of the process would get it at once), then the file
        lock (a process killed holding it loses it)."""
        self._threads.acquire()
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def unlock(self) -> None:
        try:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def secret(self, *, create: bool) -> bytes:
        """The hash key of this segment's rows, in its first bytes: chosen at random by the
        process creating it, read by the others."""
        buffer = self.memory.buf
        if buffer is None:
            raise ValueError(f"{self.name} is closed")
        if create:
            buffer[:_SECRET] = os.urandom(_SECRET)
        return bytes(buffer[:_SECRET])

    def view(self, shape: tuple[int, ...], dtype: type, offset: int) -> np.ndarray:
        values: np.ndarray = np.ndarray(shape, dtype, self.memory.buf, offset)
        self.views.append(values)
        return values

    def scalars(self, code: Literal["i", "q", "Q"], offset: int, length: int) -> memoryview:
        """``length`` values of struct type ``code`` from ``offset``: a memoryview, whose items
        read and write several times faster than a NumPy array's one at a time."""
        window = self._window(offset, struct.calcsize(code) * length)
        values: memoryview = window.cast(code)
        self._scalars.append(values)
        return values

    def _window(self, offset: int, size: int) -> memoryview:
        buffer = self.memory.buf
        if buffer is None:
            raise ValueError(f"{self.name} is closed")
        window = buffer[offset : offset + size]
        self._scalars.append(window)
        return window

    def floats(self, offset: int, length: int) -> memoryview[float]:
        """``length`` doubles from ``offset`` (as :meth:`scalars`)."""
        window = self._window(offset, 8 * length)
        values: memoryview[float] = window.cast("d")
        self._scalars.append(values)
        return values

    @property
    def closed(self) -> bool:
        return self._lock < 0

    def close(self, *, unlink: bool = False) -> None:
        """Unmap the segment (and remove it, with ``unlink``); again, nothing more."""
        self.views.clear()  # no view may outlive the mapping
        for released in reversed(self._scalars):  # each cast before its window
            released.release()
        self._scalars.clear()
        if self._lock >= 0:  # once: the descriptor's number may be another file's afterwards
            os.close(self._lock)
            self._lock = -1
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
        holders: int | None = None,
        refusal: Callable[[Literal["account", "global"], int], TooManyRequests] | None = None,
    ) -> None:
        """``holders``: the most accounts that can hold some at once (by default the global
        limit: each holds one at least), which sizes the table. ``refusal``: the 429 given
        the scope refused and what is held there (by default, one naming ``noun``)."""
        self.per_account = per_account
        self.global_limit = global_limit
        self.noun = noun
        self._refusal = refusal
        rows = _table_rows(holders or global_limit)
        self._mask = rows - 1
        counts_at = 8 * MAX_WORKERS + 8 * rows
        totals_at = counts_at + 4 * rows * MAX_WORKERS
        size = totals_at + 4 * rows + 8
        self._region = _Region(name, size, lock_path, create=create)
        region = self._region
        self._pids = region.view((MAX_WORKERS,), np.int64, 0)
        self._hashes = region.scalars("Q", 8 * MAX_WORKERS, rows)
        self._counts = region.scalars("i", counts_at, rows * MAX_WORKERS)  # row-major
        self._totals = region.scalars("i", totals_at, rows)  # each row's columns summed
        self._in_all = region.scalars("q", totals_at + 4 * rows, 1)  # every row's
        self._keys: dict[str, int] = {}  # account id -> its hash, bounded like the table
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
                    self._reclaim(column)
                    self._pids[column] = pid
                    return column
        raise RuntimeError(f"more than {MAX_WORKERS} workers share the limits")

    def _reclaim(self, column: int) -> None:
        """Give back a dead worker's slots (under the lock): its column's counts leave every
        row's total, and the table is rebuilt without the rows left holding nothing. Totals
        are summed again from the counts, not decreased: a worker killed between two of its
        updates (a row's count and the total of all, or halfway through moving a row back,
        which leaves a copy with fewer slots) would otherwise leave them off for good."""
        width = MAX_WORKERS
        live: dict[int, list[int]] = {}
        for row in range(self._mask + 1):
            key = self._hashes[row]
            if not key:
                continue
            counts = list(self._counts[row * width : (row + 1) * width])
            counts[column] = 0
            if sum(counts) > sum(live.get(key, ())):  # a half-moved copy has fewer
                live[key] = counts
            self._clear(row)
        for key, counts in live.items():
            if any(counts):
                row = self._insert(key)
                self._counts[row * width : (row + 1) * width] = array.array("i", counts)
                self._totals[row] = sum(counts)
        self._in_all[0] = sum(sum(counts) for counts in live.values())

    def _key(self, account_id: str) -> int:
        key = self._keys.get(account_id)
        if key is None:
            if len(self._keys) > 2 * (self._mask + 1):
                self._keys.clear()
            key = self._keys[account_id] = _hash64(account_id)
        return key

    def _find(self, key: int) -> int:
        """The row holding ``key``'s slots, or -1 (under the lock). Open addressing with linear
        probing from the key's home row (its bits above the lowest, which is always 1): the
        table is at least twice the rows that can be in use at once, so a probe meets an empty
        row within a few steps."""
        mask, hashes = self._mask, self._hashes
        row = (key >> 1) & mask
        for _ in range(mask + 1):
            held = hashes[row]
            if held == key:
                return row
            if not held:
                return -1
            row = (row + 1) & mask
        raise RuntimeError(f"{self._region.name}: no empty row (the segment is corrupt)")

    def _insert(self, key: int) -> int:
        """A row for ``key``, known to hold none (under the lock)."""
        mask, hashes = self._mask, self._hashes
        row = (key >> 1) & mask
        for _ in range(mask + 1):
            if not hashes[row]:
                hashes[row] = key
                return row
            row = (row + 1) & mask
        raise RuntimeError(f"{self._region.name}: no empty row (the segment is corrupt)")

    def _clear(self, row: int) -> None:
        width = MAX_WORKERS
        self._hashes[row] = 0
        self._totals[row] = 0
        self._counts[row * width : (row + 1) * width] = _ZEROS

    def _remove(self, row: int) -> None:
        """Empty ``row`` (its total is 0) and move back the rows after it that probing would no
        longer reach (backward-shift deletion: no tombstones, chains stay short)."""
        mask, hashes, width = self._mask, self._hashes, MAX_WORKERS
        gap = row
        while True:
            row = (row + 1) & mask
            key = hashes[row]
            if not key:
                break
            home = (key >> 1) & mask
            if (gap < row and gap < home <= row) or (gap > row and (home > gap or home <= row)):
                continue  # reachable from its home without passing the gap: stays
            hashes[gap] = key
            self._totals[gap] = self._totals[row]
            self._counts[gap * width : (gap + 1) * width] = self._counts[
                row * width : (row + 1) * width
            ]
            gap = row
        self._clear(gap)

    def _policies(self) -> list[LimitPolicy]:
        return [LimitPolicy("account", self.per_account), LimitPolicy("global", self.global_limit)]

    def take(self, account_id: str, amount: int = 1) -> str:
        """Take ``amount`` for the account, or raise :class:`TooManyRequests` when it would pass
        the account's limit or the global one (an account holding none may take more than its
        limit at once, all the more when nobody holds any: what one request needs whole)."""
        key = self._key(account_id)
        region = self._region
        region.lock()  # not `with region.locked()`: its generator costs as much as the rest
        try:
            row = self._find(key)
            held = self._totals[row] if row >= 0 else 0
            if held + amount > self.per_account and held:
                raise self._refused("account", held)
            in_all = self._in_all[0]
            if in_all + amount > self.global_limit and in_all:
                raise self._refused("global", in_all)
            if row < 0:
                row = self._insert(key)
            self._counts[row * MAX_WORKERS + self.column] += amount
            self._totals[row] = held + amount
            self._in_all[0] = in_all + amount
        finally:
            region.unlock()
        return "shared"

    def _refused(self, scope: Literal["account", "global"], held: int) -> TooManyRequests:
        if self._refusal is not None:
            return self._refusal(scope, held)
        if scope == "account":
            what, limit = f"this account already has {held} {self.noun}", self.per_account
        else:
            what, limit = f"the service has {held} {self.noun}", self.global_limit
        return TooManyRequests(
            f"{what} (limit {limit}); retry shortly", self._policies(), scope=scope
        )

    def give_back(self, account_id: str, amount: int = 1) -> None:
        """Give back ``amount`` this worker took for the account (what it does not hold is
        ignored)."""
        key = self._key(account_id)
        region = self._region
        region.lock()
        try:
            row = self._find(key)
            cell = row * MAX_WORKERS + self.column
            given = min(amount, self._counts[cell]) if row >= 0 else 0
            if given > 0:
                self._counts[cell] -= given
                self._in_all[0] -= given
                left = self._totals[row] - given
                self._totals[row] = left
                if not left:
                    self._remove(row)
        finally:
            region.unlock()

    def in_flight(self) -> int:
        """What every account holds, in all."""
        with self._region.locked():
            return int(self._in_all[0])

    def in_flight_for(self, account_id: str) -> int:
        key = self._key(account_id)
        with self._region.locked():
            row = self._find(key)
            return self._totals[row] if row >= 0 else 0

    async def acquire(self, account_id: str) -> str:
        return self.take(account_id)

    async def release(self, account_id: str, lease: str) -> None:
        self.give_back(account_id)

    async def renew(self, account_id: str, lease: str) -> None:
        return None

    async def close(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._region.closed:
            return
        del self._pids, self._hashes, self._counts, self._totals, self._in_all
        self._region.close(unlink=self.column < 0)

    def unlink(self) -> None:
        """Remove the segment (the supervisor, when the server stops)."""
        self.column = -1
        self._close()


class SharedMemoryBudget:
    """The memory budget of large replies (:class:`csatdist.limits.MemoryBudget`), shared by the
    workers: the budget is the server's, not each worker's (with one each, two workers could
    hold twice the memory the settings allow). Counted in KiB, so that the counts fit the
    table's 32-bit cells; a reservation counts ``smallest`` bytes at least, which bounds the
    accounts that can hold some at once and so the table's rows."""

    def __init__(
        self,
        name: str,
        global_bytes: int,
        per_account_bytes: int,
        lock_path: Path,
        *,
        smallest: int,
        create: bool = False,
    ) -> None:
        self.global_bytes = global_bytes
        self.per_account_bytes = per_account_bytes
        self._smallest = _kib(smallest)
        self.slots = SharedLimiter(
            name,
            _kib(per_account_bytes),
            _kib(global_bytes),
            lock_path,
            create=create,
            holders=global_bytes // max(1, smallest) + 1,
            refusal=self._refused,
        )

    def _units(self, size: int) -> int:
        return max(_kib(size), self._smallest)

    def reserve(self, account_id: str, size: int) -> int:
        """Reserve ``size`` bytes; returns what to pass to :meth:`release`."""
        self.slots.take(account_id, self._units(size))
        return size

    def release(self, account_id: str, size: int) -> None:
        self.slots.give_back(account_id, self._units(size))

    @property
    def held(self) -> int:
        """Bytes held by every worker."""
        return self.slots.in_flight() * 1024

    def _refused(self, scope: Literal["account", "global"], held: int) -> TooManyRequests:
        limit = self.per_account_bytes if scope == "account" else self.global_bytes
        return memory_refusal(scope, held * 1024, limit)

    def unlink(self) -> None:
        self.slots.unlink()

    def close(self) -> None:
        """Detach (a worker, when it stops)."""
        self.slots._close()


def _kib(size: int) -> int:
    return -(-size // 1024)


def _probe_run(key: int, mask: int) -> Iterator[int]:
    """The :data:`RATE_PROBES` rows where ``key`` may be, from its home row (its bits above
    the lowest, which is always 1)."""
    home = (key >> 1) & mask
    return ((home + step) & mask for step in range(RATE_PROBES))


class SharedClientRate:
    """At most ``per_minute`` events per client across the workers (the
    :class:`csatdist.limits.Rate` protocol; :class:`csatdist.limits.ClientRate` is one
    process's): each worker with its own let a server of N workers allow N times the rate.

    A token bucket per client in a table of a fixed number of rows (twice ``max_clients``,
    open addressing, hashed with the segment's secret key so that clients cannot choose
    addresses whose rows meet): a client's row is found within :data:`RATE_PROBES` rows of its
    home, and a new client with none free there takes the row idle longest among them. A
    bucket idle a minute is full again, so forgetting it loses nothing; one idle less long
    starts again full (the permissive side, which the global rate of password checks bounds).
    The buckets' times are ``CLOCK_MONOTONIC``'s, the same in every process of the machine."""

    def __init__(
        self,
        name: str,
        per_minute: int,
        lock_path: Path,
        *,
        create: bool = False,
        max_clients: int = 10_000,
        noun: str = "attempts",
        scope: Literal["client", "global"] = "client",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self.noun = noun
        self.scope = scope
        self._monotonic = monotonic
        self._per_second = per_minute / 60.0
        self._capacity = float(per_minute)
        rows = _table_rows(max_clients)
        self._mask = rows - 1
        self._region = _Region(name, _HEADER + 24 * rows, lock_path, create=create)
        self._secret = self._region.secret(create=create)
        self._hashes = self._region.scalars("Q", _HEADER, rows)
        self._tokens = self._region.floats(_HEADER + 8 * rows, rows)
        self._at = self._region.floats(_HEADER + 16 * rows, rows)

    def __len__(self) -> int:
        """The clients the table holds (rows are never emptied, only taken over)."""
        with self._region.locked():
            return sum(1 for key in self._hashes if key)

    def take(self, client: str) -> None:
        """Spend one token of ``client``, or raise :class:`TooManyRequests` with the seconds
        until the next one in ``Retry-After``."""
        if wait := self._spend(client, 1):
            raise rate_refusal(self.noun, self.scope, self.per_minute, wait)

    def _spend(self, client: str, amount: int, *, debt: bool = False) -> int:
        """Spend ``amount`` tokens of ``client``: 0, or the seconds until it has them (see
        :func:`csatdist.limits.spend_tokens`)."""
        key = _hash64(client, self._secret)
        now = self._monotonic()
        region = self._region
        region.lock()
        try:
            row = self._row(key)
            if self._hashes[row] == key:
                tokens, at = self._tokens[row], self._at[row]
            else:
                tokens, at = self._capacity, now
            tokens, wait = spend_tokens(
                self._per_second, self._capacity, tokens, at, now, amount, debt=debt
            )
            self._tokens[row] = tokens
            self._at[row] = now
            # The key last: a worker killed before it leaves the row its old client's, with
            # a bucket that client may be refused by for a minute at most, never another's.
            self._hashes[row] = key
        finally:
            region.unlock()
        return wait

    def _row(self, key: int) -> int:
        """``key``'s row; else the first empty one of its run, or the one idle longest there
        (under the lock). Rows are never emptied, so an empty row ends the search."""
        hashes, at = self._hashes, self._at
        idlest, since = -1, math.inf
        for row in _probe_run(key, self._mask):
            held = hashes[row]
            if held == key or not held:
                return row
            if at[row] < since:
                idlest, since = row, at[row]
        return idlest

    def close(self, *, unlink: bool = False) -> None:
        if not self._region.closed:
            del self._hashes, self._tokens, self._at
        self._region.close(unlink=unlink)


class SharedAnswerRate(SharedClientRate):
    """Answers written per account and second across the workers (the
    :class:`csatdist.limits.AnswerRates` protocol; :class:`csatdist.limits.AnswerRate` is one
    process's, and says why): a token bucket of ``burst`` per account in the table of
    :class:`SharedClientRate`, whose rows are the accounts'."""

    def __init__(
        self,
        name: str,
        per_second: int,
        burst: int,
        lock_path: Path,
        *,
        create: bool = False,
        max_accounts: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_second < 1 or burst < 1:
            raise ValueError("per_second and burst must be at least 1")
        super().__init__(
            name,
            per_second * 60,
            lock_path,
            create=create,
            max_clients=max_accounts,
            noun="answers",
            monotonic=monotonic,
        )
        self.per_second = per_second
        self.burst = burst
        self._per_second = float(per_second)
        self._capacity = float(burst)

    def admit(self, account_id: str) -> None:
        """As :meth:`csatdist.limits.AnswerRate.admit`."""
        if wait := self._spend(account_id, 0):
            raise answer_rate_refusal(self.per_second, wait)

    def charge(self, account_id: str, amount: int) -> None:
        """As :meth:`csatdist.limits.AnswerRate.charge`."""
        if amount > 0:
            self._spend(account_id, amount, debt=True)


class SharedLoginThrottle:
    """Failed logins per account and user name across the workers (the
    :class:`csatdist.users.Throttle` protocol; :class:`csatdist.users.LoginThrottle` is one
    process's): with one each, a server of N workers let a password be guessed N times as
    often before the lockout.

    A row per user name that failed lately (twice ``max_entries`` rows), hashed with the
    segment's secret key (clients choose user names: with a public hash they could choose
    names whose rows meet): its hash, then the times of its last ``max_failures`` failures,
    the oldest first (0: none). A name's row is one of the :data:`RATE_PROBES` rows from its
    home, all of which are searched (a row is emptied when its user signs in). A new name takes
    the first row there that is empty or whose failures have all left the window; **no failure
    within the window is ever forgotten**: when every row of the run holds some, a name with
    none is refused (429) until the oldest leaves, rather than let a flood of other names clear
    a lockout. (:func:`csatdist.users.failed_names_bound` sizes the table so that the global
    rate of password checks keeps that out of reach: 300 a minute fail at most 4,500 names in a
    15-minute window, a seventh of the table's rows.)"""

    def __init__(
        self,
        name: str,
        max_failures: int,
        window_seconds: float,
        lock_path: Path,
        *,
        create: bool = False,
        max_entries: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self._monotonic = monotonic
        rows = _table_rows(max_entries)
        self._mask = rows - 1
        size = _HEADER + 8 * rows * (1 + max_failures)
        self._region = _Region(name, size, lock_path, create=create)
        self._secret = self._region.secret(create=create)
        self._hashes = self._region.scalars("Q", _HEADER, rows)
        self._times = self._region.floats(_HEADER + 8 * rows, rows * max_failures)  # row-major

    def __len__(self) -> int:
        """The user names the table holds."""
        with self._region.locked():
            return sum(1 for key in self._hashes if key)

    def _key(self, account_id: str, username: str) -> int:
        return _hash64(f"{account_id}\x00{username}", self._secret)

    def _find(self, key: int) -> int:
        """``key``'s row, or -1 (under the lock)."""
        hashes = self._hashes
        return next((row for row in _probe_run(key, self._mask) if hashes[row] == key), -1)

    def _failures(self, row: int) -> memoryview[float]:
        width = self.max_failures
        return self._times[row * width : (row + 1) * width]

    def _recent(self, row: int, now: float) -> list[float]:
        since = now - self.window_seconds
        return [t for t in self._failures(row) if t and t > since]

    def check(self, account_id: str, username: str) -> None:
        key = self._key(account_id, username)
        now = self._monotonic()
        with self._region.locked():
            row = self._find(key)
            if row < 0:
                self._place(key, now)  # refused when the name could not be counted
                return
            recent = self._recent(row, now)
        lockout(recent, self.max_failures, self.window_seconds, now)

    def failed(self, account_id: str, username: str) -> None:
        key = self._key(account_id, username)
        now = self._monotonic()
        width = self.max_failures
        with self._region.locked():
            row = self._find(key)
            recent = self._recent(row, now) if row >= 0 else []
            if row < 0:
                row = self._place(key, now)
            kept = [*recent, now][-width:]
            self._times[row * width : (row + 1) * width] = array.array(
                "d", kept + [0.0] * (width - len(kept))
            )
            # The key last: a worker killed before it leaves an empty row, never one name's
            # failures under another's key.
            self._hashes[row] = key

    def _place(self, key: int, now: float) -> int:
        """The row a name with none would take (under the lock): the first of its run that is
        empty or whose failures have all left the window; else raise the 429 that waits for
        the first of the run's to leave."""
        hashes, since = self._hashes, now - self.window_seconds
        soonest = math.inf
        for row in _probe_run(key, self._mask):
            if not hashes[row]:
                return row
            latest = max(self._failures(row))
            if latest <= since:
                return row
            soonest = min(soonest, latest)
        raise crowded(soonest - since)

    def succeeded(self, account_id: str, username: str) -> None:
        key = self._key(account_id, username)
        with self._region.locked():
            row = self._find(key)
            if row >= 0:
                self._hashes[row] = 0  # first: the times of an empty row are never read
                self._times[row * self.max_failures : (row + 1) * self.max_failures] = array.array(
                    "d", bytes(8 * self.max_failures)
                )

    def close(self, *, unlink: bool = False) -> None:
        if not self._region.closed:
            del self._hashes, self._times
        self._region.close(unlink=unlink)


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
        if not self._region.closed:
            del self._keys, self._expires
        self._region.close(unlink=unlink)


#: Names the shared segments of a running ``serve --workers N`` (set by it for its workers).
STATE_VARIABLE = "CSATDIST_SHARED_STATE"


class SharedHeavyPlaces:
    """The server's places for heavy work (the :class:`csatdist.limits.ServerPlaces` of its
    workers' :class:`csatdist.limits.HeavyTurns`): ``count`` lock files, each held (``flock``)
    by the one heavy piece a worker runs at a time. A piece takes a free one; when none is,
    one waiting piece at a time looks again every few milliseconds until one is (the others
    wait for the gate's lock to look), or, with one place, waits for its lock. No order is
    kept between processes. A worker killed holding a place loses it with its open files."""

    def __init__(self, directory: Path, count: int, *, create: bool) -> None:
        if count < 1:
            raise ValueError("the server needs a place for heavy work at least")
        paths = [directory / f"heavy-{place}.lock" for place in range(count)]
        if count > 1:
            paths.append(directory / "heavy-gate.lock")
        if create:
            for path in paths:
                path.touch()
        files = [os.open(path, os.O_RDWR) for path in paths]
        self._places = files[:count]
        self._gate = files[count] if count > 1 else -1

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Hold one of the places for the ``with`` block (one holder per process at a time:
        a file lock belongs to the open file, which this process's threads share)."""
        held = self._take()
        try:
            yield
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)

    def _take(self) -> int:
        free = self._free()
        if free is not None:
            return free
        if self._gate < 0:  # one place: its lock is the line
            fcntl.flock(self._places[0], fcntl.LOCK_EX)
            return self._places[0]
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        try:
            pause = 0.001
            while (free := self._free()) is None:
                time.sleep(pause)
                pause = min(2 * pause, 0.01)
            return free
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)

    def _free(self) -> int | None:
        """A place taken now, if one is free."""
        for file in self._places:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            return file
        return None

    def close(self) -> None:
        for file in [*self._places, self._gate]:
            if file >= 0:
                os.close(file)
        self._places, self._gate = [], -1


class SharedState:
    """The shared limits, memory budget and nonces of one multi-worker server.

    Two kinds: the limits of work across replicas (queries, ingest, exports, streams, and the
    nonces), which Redis holds instead when it is configured; and what bounds this machine's
    CPU and memory (password checks at once and a minute, login attempts per client, the
    large replies' memory), always the workers' own."""

    def __init__(self, prefix: str, directory: Path, settings: Settings, *, create: bool) -> None:
        self.prefix = prefix
        self.directory = directory
        limits = {
            "queries": (settings.max_concurrent_requests, settings.max_concurrent_requests_global),
            "ingest": (settings.max_concurrent_ingest, settings.max_concurrent_ingest_global),
            "exports": (settings.max_concurrent_exports, settings.max_concurrent_exports_global),
            "streams": (settings.max_streams_per_account, settings.max_streams_global),
            "logins": (settings.max_concurrent_logins, settings.max_concurrent_logins),
        }
        nouns = {
            "queries": "queries in flight",
            "ingest": "write requests in flight",
            "exports": "exports in flight",
            "streams": "open streams",
            "logins": "password checks",
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
        memory = settings.response_memory_mb * 1024 * 1024
        self.response_memory = SharedMemoryBudget(
            f"{prefix}-memory",
            memory,
            memory // 4,
            directory / "memory.lock",
            smallest=LARGE_RESPONSE_BYTES,
            create=create,
        )
        self.login_rate = SharedClientRate(
            f"{prefix}-login-rate",
            settings.login_attempts_per_client_minute,
            directory / "login-rate.lock",
            create=create,
            noun="login attempts",
        )
        self.password_rate = SharedClientRate(
            f"{prefix}-password-rate",
            settings.password_checks_per_minute,
            directory / "password-rate.lock",
            create=create,
            max_clients=1,
            noun="password checks",
            scope="global",
        )
        self.answer_rate = (
            SharedAnswerRate(
                f"{prefix}-answer-rate",
                settings.ingest_answers_per_second,
                answer_burst(settings),
                directory / "answer-rate.lock",
                create=create,
            )
            if settings.ingest_answers_per_second
            else None
        )
        self.login_failures = SharedLoginThrottle(
            f"{prefix}-login-failures",
            settings.login_max_failures,
            settings.login_lockout_seconds,
            directory / "login-failures.lock",
            create=create,
            max_entries=failed_names_bound(
                settings.password_checks_per_minute, settings.login_lockout_seconds
            ),
        )
        self.nonces = SharedNonceCache(
            f"{prefix}-nonces",
            settings.oauth_timestamp_window_seconds,
            directory / "nonces.lock",
            create=create,
        )
        self.heavy_places = SharedHeavyPlaces(directory, heavy_places(settings), create=create)

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

    def close(self) -> None:
        """Detach from every segment (a worker, when it stops; again, nothing more)."""
        for limiter in self.limiters.values():
            limiter._close()
        self.response_memory.close()
        self.login_rate.close()
        self.password_rate.close()
        if self.answer_rate is not None:
            self.answer_rate.close()
        self.login_failures.close()
        self.nonces.close()
        self.heavy_places.close()

    def unlink(self) -> None:
        for limiter in self.limiters.values():
            limiter.unlink()
        self.response_memory.unlink()
        self.login_rate.close(unlink=True)
        if self.answer_rate is not None:
            self.answer_rate.close(unlink=True)
        self.password_rate.close(unlink=True)
        self.login_failures.close(unlink=True)
        self.nonces.close(unlink=True)
        self.heavy_places.close()  # its files go with the directory
