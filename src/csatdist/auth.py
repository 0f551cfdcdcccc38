"""Who may call what: every 401 is decided here.

A credential is bound to one account; a key of another account, an unknown or revoked key, an
expired or revoked session, a missing or malformed header, a bad OAuth signature or a replayed
nonce, and a credential without the needed scope are all 401 (CONTRACT.md section 4). The
messages never reveal whether an account exists.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from csatdist.clock import Clock
from csatdist.errors import Unauthorized
from csatdist.keys import parse_bearer, secret_matches
from csatdist.oauth1 import MemoryNonceCache, NonceCache, verify_oauth1
from csatdist.sealing import SecretBox
from csatdist.store import ApiKey, PointReads, Session, Store

T = TypeVar("T")

ACCOUNT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Login sessions may read, like a read API key.
SESSION_SCOPES = frozenset({"read"})


@dataclass(frozen=True, slots=True)
class Principal:
    account_id: str
    credential: str  # "key", "oauth1" or "session"
    credential_id: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What an OAuth signature covers: the method and URI as the client saw them, and headers."""

    method: str
    uri: str
    headers: Mapping[str, str]


def valid_account_id(account_id: str) -> bool:
    return ACCOUNT_ID.fullmatch(account_id) is not None


class Authenticator:
    def __init__(
        self,
        store: Store,
        box: Callable[[], SecretBox],
        clock: Clock,
        oauth_window_seconds: int = 300,
        nonces: NonceCache | None = None,
        cache_seconds: float = 0.0,
    ) -> None:
        self.store = store
        self._box = box
        self.clock = clock
        self.oauth_window_seconds = oauth_window_seconds
        self.nonces = nonces or MemoryNonceCache(oauth_window_seconds)
        self._records = _RecordCache(cache_seconds)

    def authenticate_cached(
        self, account_id: str, scope: str, authorization: str | None, *, store_reads: bool = False
    ) -> Principal | None:
        """Decide a bearer credential on the caller's thread: from recently read records, and
        with ``store_reads`` also by reading the store's key or session (a point read). Returns
        the Principal, or raises :class:`Unauthorized`, or None when :meth:`authenticate` must
        decide (another scheme, or a record not read recently)."""
        if not authorization or not (self._records.enabled or store_reads):
            return None
        scheme, _, rest = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or parse_bearer(rest.strip()) is None:
            return None
        try:
            principal = self._bearer(account_id, rest.strip(), cached_only=not store_reads)
        except _CacheMiss:
            return None
        if scope not in principal.scopes:
            raise Unauthorized(f"the credential lacks the '{scope}' scope needed here")
        return principal

    async def authenticate_point_read(
        self, account_id: str, scope: str, authorization: str | None, reads: PointReads
    ) -> Principal | None:
        """Decide a bearer credential by reading its key or session with ``reads`` (awaited on
        the event loop), then exactly as :meth:`authenticate` does, remembering the record as
        a read on a worker thread would. None when :meth:`authenticate` must decide (another
        scheme, a malformed token: it words the refusal)."""
        if not authorization:
            return None
        scheme, _, rest = authorization.strip().partition(" ")
        token = rest.strip()
        parsed = parse_bearer(token) if scheme.lower() == "bearer" else None
        if parsed is None or not valid_account_id(account_id):
            return None
        if parsed.kind == "csb":
            session = await reads.find_session(account_id, parsed.record_id)
            principal = self._bearer(account_id, token, read_session=lambda: session)
        else:
            key = await reads.find_key(account_id, parsed.record_id)
            principal = self._bearer(account_id, token, read_key=lambda: key)
        if scope not in principal.scopes:
            raise Unauthorized(f"the credential lacks the '{scope}' scope needed here")
        return principal

    def authenticate(
        self,
        account_id: str,
        scope: str,
        authorization: str | None,
        signed: Callable[[], SignedRequest],
    ) -> Principal:
        if not authorization or not authorization.strip():
            raise Unauthorized(
                "missing credentials: send 'Authorization: Bearer <token>' or an OAuth 1.0a "
                "signature"
            )
        scheme, _, rest = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and rest.strip():
            principal = self._bearer(account_id, rest.strip())
        elif scheme.lower() == "oauth" and rest.strip():
            principal = self._oauth1(account_id, signed())
        else:
            raise Unauthorized(
                "malformed Authorization header: expected 'Bearer <token>' or 'OAuth …'"
            )
        if scope not in principal.scopes:
            raise Unauthorized(f"the credential lacks the '{scope}' scope needed here")
        return principal

    def still_valid(self, principal: Principal) -> bool:
        """Whether a credential accepted earlier is still good (not revoked, not expired): for
        long-lived requests, which cannot be re-signed."""
        if principal.credential == "session":
            session = self.store.find_session(principal.account_id, principal.credential_id)
            return session is not None and session.active and session.expires_ms > self.clock()
        key = self.store.find_key(principal.account_id, principal.credential_id)
        return key is not None and key.active

    def _bearer(
        self,
        account_id: str,
        token: str,
        *,
        cached_only: bool = False,
        read_key: Callable[[], ApiKey | None] | None = None,
        read_session: Callable[[], Session | None] | None = None,
    ) -> Principal:
        """``read_key``, ``read_session``: give the record read already, instead of reading
        it from the store here (when it is not remembered)."""
        parsed = parse_bearer(token)
        if parsed is None:
            raise Unauthorized("malformed bearer token: expected a csatdist key or login token")
        if not valid_account_id(account_id):
            raise Unauthorized("the credential is not valid for this account")
        if parsed.kind == "csb":
            session = self._records.get(
                account_id,
                "csb",
                parsed.record_id,
                _miss
                if cached_only
                else read_session
                or (lambda: self.store.find_session(account_id, parsed.record_id)),
            )
            if session is None or not secret_matches(session.secret_hash, parsed.secret):
                raise Unauthorized("the credential is not valid for this account")
            if not session.active:
                raise Unauthorized(
                    "the login session has been revoked (password changed or sessions revoked);"
                    " log in again"
                )
            if session.expires_ms <= self.clock():
                raise Unauthorized("the login session has expired; log in again")
            return Principal(account_id, "session", session.session_id, SESSION_SCOPES)
        key = self._records.get(
            account_id,
            "csd",
            parsed.record_id,
            _miss
            if cached_only
            else read_key or (lambda: self.store.find_key(account_id, parsed.record_id)),
        )
        if (
            key is None
            or key.kind != "bearer"
            or not secret_matches(key.secret_hash, parsed.secret)
        ):
            raise Unauthorized("the credential is not valid for this account")
        if not key.active:
            raise Unauthorized("the key has been revoked")
        return Principal(account_id, "key", key.key_id, key.scopes)

    def _oauth1(self, account_id: str, signed: SignedRequest) -> Principal:
        if not valid_account_id(account_id):
            raise Unauthorized(
                "OAuth consumer_key_unknown: the consumer key is not valid for this account",
                oauth_problem="consumer_key_unknown",
            )
        key = verify_oauth1(
            self.store,
            self._box(),
            self.nonces,
            account_id,
            signed.uri,
            signed.method,
            signed.headers,
            self.oauth_window_seconds,
        )
        return Principal(account_id, "oauth1", key.key_id, key.scopes)


class _CacheMiss(Exception):
    pass


def _miss() -> None:
    raise _CacheMiss


class _RecordCache:
    """Keys and sessions read from the store in the last ``seconds``, so that a busy client's
    every request (and every refusal with 429) does not wait for a store read. A revocation is
    therefore seen within ``seconds`` on every server; 0 turns the cache off."""

    MAX_ENTRIES = 10_000

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._entries: dict[tuple[str, str, str], tuple[float, object]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.seconds > 0

    def get(self, account_id: str, kind: str, record_id: str, read: Callable[[], T]) -> T:
        if not self.enabled:
            return read()
        key = (account_id, kind, record_id)
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is not None and now - entry[0] < self.seconds:
            return entry[1]  # type: ignore[return-value]
        record = read()
        if record is not None:  # unknown ids are not remembered: they cannot fill the cache
            with self._lock:
                if len(self._entries) >= self.MAX_ENTRIES:
                    self._entries.clear()
                self._entries[key] = (now, record)
        return record
