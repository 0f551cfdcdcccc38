"""Login users for the compat login endpoint: Argon2id password hashes, sessions, throttling."""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from csatdist.errors import TooManyRequests, Unauthorized
from csatdist.keys import issue_session
from csatdist.store import Store, User

_hasher = PasswordHasher()  # Argon2id with the library's maintained defaults (RFC 9106)
#: Verified against when the user does not exist, so both cases take the same time.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
MIN_PASSWORD_LENGTH = 8
MAX_USERNAME_LENGTH = 128


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


#: How much lower than the server's the CPU priority of password checks is (a nice value).
PASSWORD_CHECK_NICENESS = 10


def _lower_this_threads_priority() -> None:
    """Raise the nice value of the calling thread (Linux schedules threads by their own nice
    value, and the threads Argon2 starts for its lanes inherit it); elsewhere, do nothing."""
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + PASSWORD_CHECK_NICENESS))


#: Password checks run on these threads, below the priority of everything else: a check is
#: ~0.3 s of CPU spread over 4 lanes (Argon2id), and unauthenticated clients can ask for them,
#: so they take the CPU that requests of signed-in tenants leave. How many run at once is the
#: login limiter's business (``CSATDIST_MAX_CONCURRENT_LOGINS``); threads start as needed.
_checker = ThreadPoolExecutor(
    max_workers=64, thread_name_prefix="csatdist-password", initializer=_lower_this_threads_priority
)


def password_matches(password_hash: str, password: str) -> bool:
    """Whether ``password`` is the one hashed; checked on the low-priority password thread."""
    return _checker.submit(_verify, password_hash, password).result()


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def make_user(account_id: str, username: str, password: str, now_ms: int) -> User:
    if not 1 <= len(username) <= MAX_USERNAME_LENGTH or username.strip() != username:
        raise ValueError(
            f"the username must have 1 to {MAX_USERNAME_LENGTH} characters and no surrounding "
            "spaces"
        )
    return User(account_id, username, hash_password(password), now_ms)


class Throttle(Protocol):
    """Failed logins per account and user name: one process's (:class:`LoginThrottle`) or the
    server's workers' together (:class:`csatdist.shared.SharedLoginThrottle`)."""

    def check(self, account_id: str, username: str) -> None:
        """Raise :class:`TooManyRequests` while the user is locked out."""
        ...

    def failed(self, account_id: str, username: str) -> None: ...

    def succeeded(self, account_id: str, username: str) -> None: ...


def lockout(recent: list[float], max_failures: int, window_seconds: float, now: float) -> None:
    """Raise the 429 of a user name whose ``recent`` failures (the oldest first) fill the
    window, with the seconds until the oldest leaves it."""
    if len(recent) >= max_failures:
        retry = max(1, int(recent[0] + window_seconds - now) + 1)
        error = TooManyRequests(
            f"too many failed logins for this user; retry in {retry} s", scope="login"
        )
        error.retry_after = retry
        raise error


#: The fewest and the most user names a table of failed logins holds.
FAILED_NAMES_MIN, FAILED_NAMES_MAX = 10_000, 100_000


def failed_names_bound(checks_per_minute: int, window_seconds: float) -> int:
    """The user names a table of failed logins holds: as many as the password checks of a
    window can fail (each can be a new name), so that it never fills, within
    :data:`FAILED_NAMES_MIN` and :data:`FAILED_NAMES_MAX` (settings past that can fill it,
    and then names with no failures are refused until the oldest failures leave)."""
    names = checks_per_minute * math.ceil(window_seconds / 60)
    return min(FAILED_NAMES_MAX, max(FAILED_NAMES_MIN, names))


def crowded(retry_seconds: float) -> TooManyRequests:
    """The 429 of a user name with no failures counted when the table of failed logins is full
    of failures still in the window: it waits for the first of them to leave."""
    retry = max(1, int(retry_seconds) + 1)
    error = TooManyRequests(
        f"too many user names failed to log in lately; retry in {retry} s", scope="login"
    )
    error.retry_after = retry
    return error


class LoginThrottle:
    """At most ``max_failures`` failed logins per account and username per window.

    The table is bounded: each entry keeps at most ``max_failures`` times, user names are at
    most :data:`MAX_USERNAME_LENGTH` characters, and it holds at most ``max_entries`` names.
    Names whose failures have all left the window go when room is needed; **a failure within
    the window is never forgotten**: with the table full of them, a name with none is refused
    (429) until the oldest leaves, rather than let a flood of other names clear a lockout.
    (:func:`failed_names_bound` sizes the table so that the global rate of password checks
    keeps that out of reach: 300 a minute fail at most 4,500 names in a 15-minute window.)
    """

    def __init__(
        self,
        max_failures: int,
        window_seconds: float,
        *,
        max_entries: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.max_entries = max_entries
        self._monotonic = monotonic
        self._failures: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._failures)

    def _recent(self, key: tuple[str, str], now: float) -> list[float]:
        recent = [t for t in self._failures.get(key, []) if t > now - self.window_seconds]
        if recent:
            self._failures[key] = recent
        else:
            self._failures.pop(key, None)
        return recent

    def check(self, account_id: str, username: str) -> None:
        now = self._monotonic()
        key = (account_id, username)
        with self._lock:
            if key not in self._failures:
                self._make_room(now)  # refused when the name could not be counted
                return
            recent = self._recent(key, now)
        lockout(recent, self.max_failures, self.window_seconds, now)

    def failed(self, account_id: str, username: str) -> None:
        now = self._monotonic()
        key = (account_id, username)
        with self._lock:
            if key not in self._failures:
                self._make_room(now)
            times = self._failures.pop(key, [])
            times.append(now)
            # The most recent last, and the names in the order of their last failure.
            self._failures[key] = times[-self.max_failures :]

    def _make_room(self, now: float) -> None:
        """Room for one more name (under the lock): the names whose failures have all left
        the window go, the first in the table's order (that of their last failure), or raise
        the 429 that waits for the first name's last failure to leave."""
        failures, since = self._failures, now - self.window_seconds
        while failures and next(iter(failures.values()))[-1] <= since:
            failures.popitem(last=False)
        if len(failures) >= self.max_entries:
            raise crowded(next(iter(failures.values()))[-1] - since)

    def succeeded(self, account_id: str, username: str) -> None:
        with self._lock:
            self._failures.pop((account_id, username), None)


@dataclass(frozen=True, slots=True)
class LoginResult:
    bearer: str
    csrf: str
    expires_ms: int


def login(
    store: Store,
    throttle: Throttle,
    account_id: str,
    username: str,
    password: str,
    now_ms: int,
    ttl_ms: int,
) -> LoginResult:
    throttle.check(account_id, username)
    # No user name holds NUL (PostgreSQL text cannot): such a login is simply a wrong one.
    user = None if "\x00" in username else store.find_user(account_id, username)
    matches = password_matches(user.password_hash if user else _DUMMY_HASH, password)
    if user is None or not matches:
        throttle.failed(account_id, username)
        raise Unauthorized("invalid username or password")
    throttle.succeeded(account_id, username)
    session, token = issue_session(account_id, username, now_ms, ttl_ms)
    store.add_session(session)
    # A password change revokes the sessions that exist when it commits; one committed while
    # this login was checking the old password would miss the session just added.
    current = store.find_user(account_id, username)
    if current is None or current.password_hash != user.password_hash:
        store.revoke_sessions(account_id, username, now_ms)
        raise Unauthorized("invalid username or password")
    return LoginResult(bearer=token, csrf=secrets.token_urlsafe(24), expires_ms=session.expires_ms)
