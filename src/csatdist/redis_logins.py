"""Failed logins counted in Redis, so that the lockout of a user name holds on every replica.

:class:`csatdist.users.LoginThrottle` counts one process's failed logins and
:class:`csatdist.shared.SharedLoginThrottle` one machine's: with R replicas behind a load
balancer each kept its own lockout, and a password could be guessed R times as often.
:class:`RedisLoginThrottle` keeps the failures in the Redis the replicas share, and falls back
to the machine's own throttle while Redis cannot be reached.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from csatdist.errors import TooManyRequests
from csatdist.limits import _script
from csatdist.users import Throttle, lockout

log = logging.getLogger("csatdist.logins")

#: The least time between two warnings that Redis is unreachable (the calls in between are
#: counted in the next one): an outage fails every login, which would flood the log.
WARNING_INTERVAL_SECONDS = 60.0


class RedisLoginThrottle:
    """At most ``max_failures`` failed logins per account and user name per window, counted in
    Redis for every replica that uses the same Redis and key prefix (the
    :class:`csatdist.users.Throttle` protocol).

    **Keys.** One sorted set per user name, ``{prefix}:logins:<digest>``: the digest is a
    BLAKE2b of the account and the name (joined by NUL, which account ids never hold), so a key
    is 32 hex digits whatever the name's length or characters (lone surrogates included), and
    the hash tag keeps every key of the prefix in one slot of a Redis Cluster, like the
    limiter's. Its members are the name's last ``max_failures`` failures, scored by their time
    in microseconds of Redis's clock (``TIME``, read in the scripts), so replicas whose clocks
    disagree agree on the lockout, and the Retry-After is counted from the time the script
    returns. Each member has a random id: two failures in the same microsecond count twice.

    **Memory.** Each key holds at most ``max_failures`` members and expires a window after its
    last failure, when all of them have left the window: Redis forgets idle names by itself,
    and holds at most the names that failed within the last window (bounded by the replicas'
    rates of password checks). Unlike the in-process tables there is no table to fill, so no
    name is ever refused for want of room. Redis must not evict these keys early: a
    ``maxmemory-policy`` other than ``noeviction`` could drop a lockout before its time
    (with ``noeviction`` a full Redis refuses the write, and this replica falls back).

    **Atomic.** :meth:`failed` is one Lua script (trim the window, add, keep the last
    ``max_failures``, set the expiry) and :meth:`check` one read-only script (Redis's time and
    the failures still in the window), so replicas racing on one name never lose a failure.
    :meth:`succeeded` deletes the key.

    **What is consulted and recorded where.** While Redis answers, :meth:`check` consults Redis
    only (it holds every replica's failures, this machine's included); :meth:`failed` records
    each failure in Redis *and* in ``fallback`` (the machine's own throttle: a
    :class:`~csatdist.users.LoginThrottle` or :class:`~csatdist.shared.SharedLoginThrottle`),
    so that an outage does not forget what this machine saw (a failure the fallback has no room
    for is then counted in Redis alone); :meth:`succeeded` clears the name in both. When a
    call to Redis fails (unreachable, a timeout, any :class:`redis.RedisError`), that call
    uses ``fallback`` alone, as the machine's own lockout (its 429s, including the one of a
    full table, are the fallback's), and a warning is logged at most once every
    :data:`WARNING_INTERVAL_SECONDS`. The next call tries Redis again. Failures counted only in
    the fallback during an outage are not copied into Redis when it answers again, and a Redis
    that lost its data (a restart without persistence) has lost the lockouts: for up to one
    window after either, a name may be guessed again up to ``max_failures`` times.

    Each call waits for Redis at most ``timeout_seconds`` to connect and as long for the reply,
    and is not retried (a login falls back instead of waiting). The methods block: they are
    called on the worker thread that checks the password, never on the event loop.

    ``script_time`` is a test hook: when given, the scripts take its time (seconds) instead of
    Redis's clock, so that a test can move time without sleeping. The keys' expiry stays in
    Redis's real time.
    """

    def __init__(
        self,
        url: str,
        max_failures: int,
        window_seconds: float,
        *,
        fallback: Throttle,
        prefix: str = "csatdist",
        timeout_seconds: float = 0.5,
        monotonic: Callable[[], float] = time.monotonic,
        script_time: Callable[[], float] | None = None,
    ) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.fallback = fallback
        self._window_us = round(window_seconds * 1_000_000)
        self._expiry_ms = max(1, math.ceil(window_seconds * 1000))
        self._prefix = "{" + prefix + "}:logins:"
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 0),
        )
        self._failed = self._client.register_script(_script("login_failed.lua"))
        self._check = self._client.register_script(_script("login_check.lua"))
        self._monotonic = monotonic
        self._script_time = script_time
        self._warning_lock = threading.Lock()
        self._warned_at: float | None = None
        self._unwarned = 0  # calls that fell back since the last warning

    def key(self, account_id: str, username: str) -> str:
        """The Redis key of a user name's failures."""
        name = f"{account_id}\x00{username}".encode("utf-8", "surrogatepass")
        return self._prefix + hashlib.blake2b(name, digest_size=16).hexdigest()

    def _now_argument(self) -> str:
        """The time the scripts take: '' (Redis's clock) except under the test hook."""
        if self._script_time is None:
            return ""
        return str(round(self._script_time() * 1_000_000))

    def check(self, account_id: str, username: str) -> None:
        """Raise :class:`TooManyRequests` while the name has ``max_failures`` failures in the
        window (in Redis; in the fallback while Redis cannot be reached)."""
        try:
            reply: list[Any] = self._check(
                keys=[self.key(account_id, username)],
                args=[self._window_us, self._now_argument()],
            )
        except RedisError as exc:
            self._without_redis(exc)
            self.fallback.check(account_id, username)
            return
        now = int(reply[0]) / 1_000_000
        recent = [float(score) / 1_000_000 for score in reply[1:]]
        lockout(recent, self.max_failures, self.window_seconds, now)

    def failed(self, account_id: str, username: str) -> None:
        """Count a failed login in Redis and in the fallback (in the fallback alone while
        Redis cannot be reached)."""
        try:
            self._failed(
                keys=[self.key(account_id, username)],
                args=[
                    self.max_failures,
                    self._window_us,
                    self._expiry_ms,
                    secrets.token_hex(8),
                    self._now_argument(),
                ],
            )
        except RedisError as exc:
            self._without_redis(exc)
            self.fallback.failed(account_id, username)  # its 429 of a full table is the reply
            return
        # No room in the machine's table: Redis, which has no table to fill, counted it.
        with contextlib.suppress(TooManyRequests):
            self.fallback.failed(account_id, username)

    def succeeded(self, account_id: str, username: str) -> None:
        """Clear the name's failures, in Redis and in the fallback."""
        self.fallback.succeeded(account_id, username)
        try:
            self._client.delete(self.key(account_id, username))
        except RedisError as exc:
            self._without_redis(exc)

    def _without_redis(self, exc: RedisError) -> None:
        """Log that Redis failed a call, at most once every :data:`WARNING_INTERVAL_SECONDS`."""
        now = self._monotonic()
        with self._warning_lock:
            self._unwarned += 1
            if self._warned_at is not None and now - self._warned_at < WARNING_INTERVAL_SECONDS:
                return
            self._warned_at, calls, self._unwarned = now, self._unwarned, 0
        log.warning(
            "Redis unreachable (%s); failed logins are counted by this machine alone "
            "(%d call(s) fell back since the last warning)",
            exc,
            calls,
        )

    def close(self) -> None:
        """Close the connections to Redis (the fallback belongs to whoever made it)."""
        self._client.close()
