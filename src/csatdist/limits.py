"""Limits on work in flight: at most N of a kind (queries, ingests, streams, logins) per account
and in all, login attempts per client, the memory large responses may hold, and one large body
built at a time per account.

Excess requests are refused at once (429, ``Retry-After: 1``) rather than queued, as the original
API does; only a large body waits for the account's other one being built (its query holds a
slot already). Slots are released in ``finally`` so errors and client disconnects never leak one.

:class:`LocalLimiter` counts in this process. :class:`RedisLimiter` holds the slots in Redis so
the limits hold across replicas: a sorted-set semaphore in a Lua script, with leases that expire
so a crashed replica cannot keep slots, and a stated policy for when Redis is unreachable.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Literal, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from csatdist.errors import LimitPolicy, StoreUnavailable, TooManyRequests
from csatdist.observability import LIMITER_FALLBACKS

log = logging.getLogger("csatdist.limits")
FallbackPolicy = Literal["local", "reject"]


def _policies(per_account: int, global_limit: int) -> list[LimitPolicy]:
    return [LimitPolicy("account", per_account), LimitPolicy("global", global_limit)]


def _refusal(
    scope: str, held: int, limit: int, policies: list[LimitPolicy], noun: str
) -> TooManyRequests:
    who = "this account already has" if scope == "account" else "the service has"
    return TooManyRequests(
        f"{who} {held} {noun} (limit {limit}); retry shortly", policies, scope=scope
    )


class Limiter(Protocol):
    per_account: int
    global_limit: int

    async def acquire(self, account_id: str) -> str:
        """Take a slot and return its lease id, or raise :class:`TooManyRequests`."""
        ...

    async def release(self, account_id: str, lease: str) -> None: ...

    async def renew(self, account_id: str, lease: str) -> None:
        """Keep a long-held slot (an open stream) from expiring."""
        ...

    async def close(self) -> None: ...


class LocalLimiter:
    """In-process counters: the limits of one server."""

    def __init__(
        self, per_account: int, global_limit: int, *, noun: str = "queries in flight"
    ) -> None:
        if per_account < 1 or global_limit < 1:
            raise ValueError("concurrency limits must be at least 1")
        self.per_account = per_account
        self.global_limit = global_limit
        self.noun = noun
        self._in_flight: dict[str, int] = {}
        self._total = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._total

    def in_flight_for(self, account_id: str) -> int:
        return self._in_flight.get(account_id, 0)

    def take(self, account_id: str) -> str:
        policies = _policies(self.per_account, self.global_limit)
        with self._lock:
            held = self._in_flight.get(account_id, 0)
            if held >= self.per_account:
                raise _refusal("account", held, self.per_account, policies, self.noun)
            if self._total >= self.global_limit:
                raise _refusal("global", self._total, self.global_limit, policies, self.noun)
            self._in_flight[account_id] = held + 1
            self._total += 1
        return "local"

    def give_back(self, account_id: str) -> None:
        with self._lock:
            held = self._in_flight.get(account_id, 0) - 1
            if held > 0:
                self._in_flight[account_id] = held
            else:
                self._in_flight.pop(account_id, None)
            self._total -= 1

    async def acquire(self, account_id: str) -> str:
        return self.take(account_id)

    async def release(self, account_id: str, lease: str) -> None:
        self.give_back(account_id)

    async def renew(self, account_id: str, lease: str) -> None:
        return None

    async def close(self) -> None:
        return None


def _script(name: str) -> str:
    return resources.files("csatdist").joinpath("lua", name).read_text("utf-8")


class RedisLimiter:
    """Slots in Redis, shared by every replica that uses the same Redis and key prefix."""

    def __init__(
        self,
        url: str,
        per_account: int,
        global_limit: int,
        *,
        lease_seconds: float = 30.0,
        fallback: FallbackPolicy = "local",
        prefix: str = "csatdist",
        timeout_seconds: float = 0.5,
        noun: str = "queries in flight",
    ) -> None:
        self.per_account = per_account
        self.global_limit = global_limit
        self.lease_ms = int(lease_seconds * 1000)
        self.fallback = fallback
        # One hash tag for every key, so the script's keys share a slot on Redis Cluster.
        self._prefix = "{" + prefix + "}:inflight:"
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
        )
        self._acquire = self._client.register_script(_script("acquire.lua"))
        self._release = self._client.register_script(_script("release.lua"))
        self._renew = self._client.register_script(_script("renew.lua"))
        self.noun = noun
        self.local = LocalLimiter(per_account, global_limit, noun=noun)

    def _keys(self, account_id: str) -> list[str]:
        return [self._prefix + "account:" + account_id, self._prefix + "global"]

    async def acquire(self, account_id: str) -> str:
        lease = uuid.uuid4().hex
        try:
            taken, count, scope = await self._acquire(
                keys=self._keys(account_id),
                args=[self.per_account, self.global_limit, self.lease_ms, lease],
            )
        except RedisError as exc:
            return self._without_redis(account_id, exc)
        if not int(taken):
            limit = self.per_account if scope == b"account" else self.global_limit
            policies = _policies(self.per_account, self.global_limit)
            raise _refusal(scope.decode(), int(count), limit, policies, self.noun)
        return lease

    def _without_redis(self, account_id: str, exc: Exception) -> str:
        LIMITER_FALLBACKS.labels(self.fallback).inc()
        if self.fallback == "reject":
            raise StoreUnavailable(f"the concurrency limiter (Redis) is unreachable: {exc}")
        log.warning("Redis unreachable; enforcing this replica's own limits", exc_info=exc)
        self.local.take(account_id)
        return "local"

    async def release(self, account_id: str, lease: str) -> None:
        if lease == "local":
            self.local.give_back(account_id)
            return
        try:
            await self._release(keys=self._keys(account_id), args=[lease])
        except RedisError:
            log.warning("could not release a Redis slot; its lease will expire", exc_info=True)

    async def renew(self, account_id: str, lease: str) -> None:
        if lease == "local":
            return
        try:
            await self._renew(keys=self._keys(account_id), args=[lease, self.lease_ms])
        except RedisError:
            log.warning("could not renew a Redis slot; it may expire early", exc_info=True)

    async def close(self) -> None:
        await self._client.aclose()


class Rate(Protocol):
    """At most so many events a minute per client (:class:`ClientRate`, this process's; or
    :class:`csatdist.shared.SharedClientRate`, the server's workers' together)."""

    per_minute: int

    def take(self, client: str) -> None:
        """Spend one of ``client``'s events, or raise :class:`TooManyRequests`."""
        ...


def spend_tokens(
    per_second: float,
    capacity: float,
    tokens: float,
    at: float,
    now: float,
    amount: int,
    *,
    debt: bool = False,
) -> tuple[float, int]:
    """A token bucket of ``capacity`` refilled with ``per_second`` tokens a second, which held
    ``tokens`` at ``at``: what it holds at ``now`` once ``amount`` are spent, and 0; or, when
    it holds fewer, what it holds (none spent) and the whole seconds until it holds them.
    ``amount`` 0 asks whether it holds one, spending none. With ``debt`` the amount is spent
    whatever the bucket holds (it may go below 0: what was done is counted)."""
    tokens = min(capacity, tokens + max(0.0, now - at) * per_second)
    if debt:
        return tokens - amount, 0
    need = max(1, amount)
    if tokens < need:
        return tokens, max(1, math.ceil((need - tokens) / per_second))
    return tokens - amount, 0


def answer_rate_refusal(per_second: int, wait: int) -> TooManyRequests:
    """The 429 of an account writing answers faster than its rate."""
    error = TooManyRequests(
        f"this account writes more than {per_second} answers a second (bursts up to one full "
        f"batch); retry in {wait} s",
        scope="account",
    )
    error.retry_after = wait
    return error


class AnswerRates(Protocol):
    """Answers written per account and second (:class:`AnswerRate`, or the workers' shared)."""

    def admit(self, account_id: str) -> None: ...

    def charge(self, account_id: str, amount: int) -> None: ...


def rate_refusal(
    noun: str, scope: Literal["client", "global"], per_minute: int, wait: int
) -> TooManyRequests:
    """The 429 of a client (or the server) over its rate, which may go on in ``wait`` s."""
    whose = "from this client" if scope == "client" else "on this server"
    error = TooManyRequests(
        f"too many {noun} {whose} (limit {per_minute} a minute); retry in {wait} s", scope=scope
    )
    error.retry_after = wait
    return error


class ClientRate:
    """At most ``per_minute`` events per client (e.g. login attempts per address), as a token
    bucket refilled continuously. The table holds at most ``max_clients`` entries: when full,
    the entries idle longest are dropped (a dropped client starts again with a full bucket:
    a bucket idle a minute is full anyway, and one idle less long errs on the permissive side,
    which the global rate of password checks bounds)."""

    def __init__(
        self,
        per_minute: int,
        *,
        max_clients: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
        noun: str = "attempts",
        scope: Literal["client", "global"] = "client",
    ) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self.max_clients = max_clients
        self.noun = noun
        self.scope = scope
        self._monotonic = monotonic
        self._per_second = per_minute / 60.0
        self._capacity = float(per_minute)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str) -> None:
        """Spend one token of ``client``, or raise :class:`TooManyRequests` with the seconds
        until the next one in ``Retry-After``."""
        if wait := self._spend(client, 1):
            raise rate_refusal(self.noun, self.scope, self.per_minute, wait)

    def _spend(self, client: str, amount: int, *, debt: bool = False) -> int:
        """Spend ``amount`` tokens of ``client``: 0, or the seconds until it has them (see
        :func:`spend_tokens`)."""
        now = self._monotonic()
        with self._lock:
            tokens, at = self._buckets.pop(client, (self._capacity, now))
            tokens, wait = spend_tokens(
                self._per_second, self._capacity, tokens, at, now, amount, debt=debt
            )
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return wait


class AnswerRate(ClientRate):
    """At most ``per_second`` answers a second per account on average, ``burst`` at once, as a
    token bucket (one process's; :class:`csatdist.shared.SharedAnswerRate` is the server's
    workers'): one account's flood of batches takes its share of the writer and no more, so the
    others' writes do not queue behind it. A request is admitted (:meth:`admit`) before its
    body is read, while the bucket holds an answer at least, and its answers are counted once
    decoded (:meth:`charge`), even past what the bucket held: a refused request costs no
    decoding, and the next wait until the debt is paid. The table holds ``max_accounts``
    buckets at most, the idlest dropped first (a bucket idle ``burst / per_second`` s is full
    anyway)."""

    def __init__(
        self,
        per_second: int,
        burst: int,
        *,
        max_accounts: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_second < 1 or burst < 1:
            raise ValueError("per_second and burst must be at least 1")
        super().__init__(
            per_second * 60, max_clients=max_accounts, monotonic=monotonic, noun="answers"
        )
        self.per_second = per_second
        self.burst = burst
        self._per_second = float(per_second)
        self._capacity = float(burst)

    def admit(self, account_id: str) -> None:
        """Raise :class:`TooManyRequests` with the seconds to wait while the account's bucket
        holds less than one answer."""
        if wait := self._spend(account_id, 0):
            raise answer_rate_refusal(self.per_second, wait)

    def charge(self, account_id: str, amount: int) -> None:
        """Count ``amount`` answers written (past what the bucket holds, if need be)."""
        if amount > 0:
            self._spend(account_id, amount, debt=True)


def client_key(host: str | None) -> str:
    """The key a client's rate is kept under: its IPv4 address, or the /64 network of its IPv6
    address (one site's or one host's usual allocation, whose addresses cost it nothing)."""
    if not host:
        return "-"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # a Unix socket path or a test client's name
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


#: Responses from this size on hold a share of the response memory budget until they are sent.
LARGE_RESPONSE_BYTES = 1024 * 1024


def memory_refusal(scope: Literal["account", "global"], held: int, limit: int) -> TooManyRequests:
    """The 429 of a memory budget that cannot give a reservation (``held`` bytes of ``limit``)."""
    mib = 1024 * 1024
    if scope == "account":
        what = f"this account's large responses in flight already hold {held // mib} MiB"
    else:
        what = f"large responses in flight hold {held // mib} MiB"
    return TooManyRequests(
        f"{what} (limit {limit // mib} MiB); retry shortly", scope=f"{scope}-memory"
    )


class Budget(Protocol):
    """Bytes that work in flight may hold, per account and in all: this process's
    (:class:`MemoryBudget`) or the server's workers' together
    (:class:`csatdist.shared.SharedMemoryBudget`)."""

    def reserve(self, account_id: str, size: int) -> int: ...

    def release(self, account_id: str, size: int) -> None: ...

    @property
    def held(self) -> int: ...


class MemoryBudget:
    """Bytes that work in flight may hold (responses being built or sent), per account and in
    all. Reservations are refused at once (429) rather than queued, like the other limits."""

    def __init__(self, global_bytes: int, per_account_bytes: int) -> None:
        self.global_bytes = global_bytes
        self.per_account_bytes = per_account_bytes
        self._held: dict[str, int] = {}
        self._total = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._total

    def reserve(self, account_id: str, size: int) -> int:
        """Reserve ``size`` bytes; returns what to pass to :meth:`release`."""
        with self._lock:
            held = self._held.get(account_id, 0)
            if held + size > self.per_account_bytes and held:
                raise memory_refusal("account", held, self.per_account_bytes)
            if self._total + size > self.global_bytes and self._total:
                raise memory_refusal("global", self._total, self.global_bytes)
            self._held[account_id] = held + size
            self._total += size
        return size

    def release(self, account_id: str, size: int) -> None:
        with self._lock:
            held = self._held.get(account_id, 0) - size
            if held > 0:
                self._held[account_id] = held
            else:
                self._held.pop(account_id, None)
            self._total -= size


class Reservation:
    """What one request holds of a :class:`MemoryBudget`, resized as its needs become known
    (an estimate before a response is built, then its real size) and released once. Sizes
    below ``threshold`` hold nothing: small replies are bounded by the concurrency limits."""

    def __init__(self, budget: Budget, account_id: str, threshold: int) -> None:
        self.budget = budget
        self.account_id = account_id
        self.threshold = threshold
        self.size = 0

    def hold(self, size: int) -> None:
        """Hold ``size`` bytes from now on (429 when the budget cannot give them)."""
        wanted = size if size >= self.threshold else 0
        if wanted == self.size:
            return
        self.release()
        if wanted:
            self.size = self.budget.reserve(self.account_id, wanted)

    def release(self) -> None:
        if self.size:
            self.budget.release(self.account_id, self.size)
            self.size = 0


class ServerPlaces(Protocol):
    """Places for heavy work in the whole server, its worker processes together
    (:class:`csatdist.shared.SharedHeavyPlaces`): a process's piece holds one while it runs."""

    def holding(self) -> contextlib.AbstractContextManager[None]: ...


class HeavyTurns:
    """Heavy work of this process (building a large body or the sums behind it, decoding and
    checking a large ingest body) one piece at a time, the accounts that have some taking
    turns: an account's next piece waits behind the first of every other account waiting.
    With ``server``, a piece also waits for one of the server's places for heavy work, which
    its worker processes share: with a worker per core each running a heavy piece, one
    tenant's large reads took every core, and the small requests, the store and its writer
    waited for the CPU (bench/abuse.py on PostgreSQL: the victim's query p99 52-57 ms with a
    place per worker, 40 ms with one for two workers; docs/security.md).

    The interpreter runs one thread at a time and hands it over every switch interval to any
    thread that asks: with one tenant's large renders, batch decodes and garbage checks on
    five threads at once, another tenant's small request could get as little as a sixth of it
    (reasoned from the hand-over, not measured; the measured effect is in docs/security.md).
    One heavy thread at a time leaves the small requests, which never wait for a turn here,
    half of it; heavy work loses little, since its threads ran one at a time anyway. Waiting
    pieces hold their worker threads (as the per-account locks before did). The table holds
    the work waiting or running, no more."""

    def __init__(self, server: ServerPlaces | None = None) -> None:
        self._server = server
        self._changed = threading.Condition()
        self._waiting: dict[str, deque[object]] = {}  # each account's pieces, in order
        self._accounts: deque[str] = deque()  # accounts with pieces, in serving order
        self._busy = False

    @contextlib.contextmanager
    def holding(self, account_id: str) -> Iterator[None]:
        """Run the ``with`` block as ``account_id``'s heavy work, in its turn."""
        piece = object()
        with self._changed:
            pieces = self._waiting.get(account_id)
            if pieces is None:
                pieces = self._waiting[account_id] = deque()
                self._accounts.append(account_id)
            pieces.append(piece)
            try:
                while self._busy or self._accounts[0] != account_id or pieces[0] is not piece:
                    self._changed.wait()
            except BaseException:  # interrupted while waiting: out of the line
                self._leave(account_id, pieces, piece)
                raise
            self._busy = True
        try:
            with self._server.holding() if self._server else contextlib.nullcontext():
                yield
        finally:
            with self._changed:
                self._busy = False
                self._leave(account_id, pieces, piece)

    def _leave(self, account_id: str, pieces: deque[object], piece: object) -> None:
        """``piece`` done or given up (the caller holds the condition's lock): an account
        with pieces left goes to the back of the line."""
        pieces.remove(piece)
        self._accounts.remove(account_id)
        if pieces:
            self._accounts.append(account_id)
        else:
            del self._waiting[account_id]
        self._changed.notify_all()

    def __len__(self) -> int:
        return len(self._waiting)
