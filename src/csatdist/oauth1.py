"""OAuth 1.0a (HMAC-SHA1) request verification with oauthlib's server-side endpoints.

LivePerson "app keys" sign each request with a consumer key/secret and, usually, an access
token/secret (3-legged); a consumer key alone is 2-legged. oauthlib does the signature work; this
module supplies the credential look-ups, replay protection (nonce + timestamp) and names the exact
OAuth problem when a request is refused (the "OAuth Problem Reporting" names).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import redis
from oauthlib.common import Request as OAuthRequest
from oauthlib.oauth1 import RequestValidator, ResourceEndpoint, SignatureOnlyEndpoint
from oauthlib.oauth1.rfc5849.utils import parse_authorization_header
from redis.exceptions import RedisError

from csatdist.errors import Unauthorized
from csatdist.sealing import SealingError, SecretBox
from csatdist.store import ApiKey, Store

_DUMMY = "0" * 32
log = logging.getLogger("csatdist.oauth1")


class NonceCache(Protocol):
    """Nonces seen within the timestamp window; a second use of one is a replay."""

    def first_use(self, client_key: str, token: str, timestamp: str, nonce: str) -> bool: ...


class MemoryNonceCache:
    """One process's memory: right for one server (replicas share :class:`RedisNonceCache`)."""

    def __init__(self, window_seconds: int) -> None:
        self.window_seconds = window_seconds
        self._seen: dict[tuple[str, str, str, str], float] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def first_use(self, client_key: str, token: str, timestamp: str, nonce: str) -> bool:
        now = time.monotonic()
        entry = (client_key, token, timestamp, nonce)
        with self._lock:
            if now >= self._next_sweep:
                horizon = now - 2 * self.window_seconds
                self._seen = {k: t for k, t in self._seen.items() if t > horizon}
                self._next_sweep = now + self.window_seconds
            if entry in self._seen:
                return False
            self._seen[entry] = now
            return True


class RedisNonceCache:
    """Nonces in Redis (``SET NX EX``), so a nonce used on one replica is refused on all.

    When Redis is unreachable the replica falls back to its own memory: replays across replicas
    are then caught only by the timestamp window (logged and counted).
    """

    def __init__(self, url: str, window_seconds: int, prefix: str = "csatdist") -> None:
        self.window_seconds = window_seconds
        self._prefix = f"{prefix}:nonce:"
        self._client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._fallback = MemoryNonceCache(window_seconds)

    def first_use(self, client_key: str, token: str, timestamp: str, nonce: str) -> bool:
        digest = hashlib.sha256(f"{client_key}|{token}|{timestamp}|{nonce}".encode()).hexdigest()
        try:
            # Kept twice the window: a timestamp may be up to one window early or late.
            stored = self._client.set(
                self._prefix + digest, b"1", nx=True, ex=2 * self.window_seconds
            )
        except RedisError:
            log.warning("Redis unreachable; checking OAuth nonces in this replica's memory")
            return self._fallback.first_use(client_key, token, timestamp, nonce)
        return bool(stored)


@dataclass
class _Validator(RequestValidator):
    """Look-ups for one request to one account; remembers why a request failed."""

    store: Store
    box: SecretBox
    nonces: NonceCache
    account_id: str
    window_seconds: int
    key: ApiKey | None = None
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    # Formats: LivePerson and common client libraries use hex or alphanumeric values.
    @property
    def enforce_ssl(self) -> bool:
        return False  # TLS is the deployment's choice (csatdist serve --tls-cert, or a proxy)

    @property
    def client_key_length(self) -> tuple[int, int]:
        return 8, 128

    @property
    def access_token_length(self) -> tuple[int, int]:
        return 8, 128

    @property
    def nonce_length(self) -> tuple[int, int]:
        return 6, 128

    @property
    def allowed_signature_methods(self) -> tuple[str, ...]:
        # PLAINTEXT would send the secrets themselves; RSA keys are not issued.
        return ("HMAC-SHA1", "HMAC-SHA256")

    @property
    def timestamp_lifetime(self) -> int:
        return self.window_seconds

    @property
    def dummy_client(self) -> str:
        return _DUMMY

    @property
    def dummy_access_token(self) -> str:
        return _DUMMY

    def _lookup(self, client_key: str) -> ApiKey | None:
        if "\x00" in client_key:  # never a key id (and PostgreSQL text cannot hold it)
            return None
        if self.key is None or self.key.key_id != client_key:
            found = self.store.find_key(self.account_id, client_key)
            self.key = found if found is not None and found.kind == "oauth1" else None
        return self.key

    def _open(self, sealed: bytes | None) -> str:
        if sealed is None:
            return _DUMMY
        try:
            return self.box.open(sealed)
        except SealingError:
            self.problems.append("consumer_key_rejected")
            return _DUMMY

    def validate_client_key(self, client_key: str, request: OAuthRequest) -> bool:
        key = self._lookup(client_key)
        if key is None:
            self.problems.append("consumer_key_unknown")
            return False
        if not key.active:
            self.problems.append("consumer_key_rejected")
            return False
        return True

    def get_client_secret(self, client_key: str, request: OAuthRequest) -> str:
        key = self._lookup(client_key)
        return self._open(key.consumer_secret) if key else _DUMMY

    def validate_access_token(self, client_key: str, token: str, request: OAuthRequest) -> bool:
        key = self._lookup(client_key)
        if key is None or key.access_token is None:
            self.problems.append("token_rejected")
            return False
        if not hmac.compare_digest(key.access_token.encode(), token.encode()):
            self.problems.append("token_rejected")
            return False
        return True

    def get_access_token_secret(self, client_key: str, token: str, request: OAuthRequest) -> str:
        key = self._lookup(client_key)
        if key is None or key.access_token != token:
            return _DUMMY
        return self._open(key.token_secret)

    def validate_timestamp_and_nonce(
        self,
        client_key: str,
        timestamp: str,
        nonce: str,
        request: OAuthRequest,
        request_token: str | None = None,
        access_token: str | None = None,
    ) -> bool:
        if self.nonces.first_use(client_key, access_token or "", timestamp, nonce):
            return True
        self.problems.append("nonce_used")
        return False

    def validate_realms(self, *args: object, **kwargs: object) -> bool:
        return True


def _mandatory_problem(request: OAuthRequest | None, window_seconds: int) -> tuple[str, str]:
    """Why oauthlib refused a request before any look-up (it does not say which rule)."""
    if request is None:
        return "parameter_rejected", "the OAuth Authorization header cannot be parsed"
    if request.signature_method not in ("HMAC-SHA1", "HMAC-SHA256"):
        return (
            "signature_method_rejected",
            "only HMAC-SHA1 (or HMAC-SHA256) signatures are accepted",
        )
    if not all((request.client_key, request.nonce, request.timestamp, request.signature)):
        return (
            "parameter_absent",
            "oauth_consumer_key, oauth_nonce, oauth_timestamp and oauth_signature are required",
        )
    try:
        stamp = int(request.timestamp or "")
    except ValueError:
        return "parameter_rejected", "oauth_timestamp must be seconds since the epoch"
    if abs(time.time() - stamp) > window_seconds:
        return "timestamp_refused", (
            f"oauth_timestamp is more than {window_seconds} s away from the server's clock"
        )
    return "parameter_rejected", "an OAuth parameter has an invalid format"


_DETAILS = {
    "consumer_key_unknown": "the consumer key is not valid for this account",
    "consumer_key_rejected": "the consumer key has been revoked",
    "token_rejected": "the access token does not belong to this consumer key",
    "nonce_used": "this oauth_nonce was already used (a replayed request)",
    "signature_invalid": "the OAuth signature does not match the request",
}


def verify_oauth1(
    store: Store,
    box: SecretBox,
    nonces: NonceCache,
    account_id: str,
    uri: str,
    method: str,
    headers: Mapping[str, str],
    window_seconds: int,
) -> ApiKey:
    """The app key that signed this request, or :class:`Unauthorized` naming the problem."""
    validator = _Validator(store, box, nonces, account_id, window_seconds)
    header = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    try:
        params = dict(parse_authorization_header(header))
    except (ValueError, IndexError):
        params = {}
    try:
        if "oauth_token" in params:
            valid, request = ResourceEndpoint(validator).validate_protected_resource_request(
                uri, http_method=method, body=None, headers=dict(headers)
            )
        else:
            valid, request = SignatureOnlyEndpoint(validator).validate_request(
                uri, http_method=method, body=None, headers=dict(headers)
            )
    except ValueError:  # oauthlib raises on some malformed headers instead of returning
        valid, request = False, None
    if valid and validator.key is not None and not validator.problems:
        return validator.key
    if validator.problems:
        problem = validator.problems[0]
    elif request is not None and request.validator_log.get("signature") is False:
        problem = "signature_invalid"
    else:
        problem, detail = _mandatory_problem(request, window_seconds)
        raise Unauthorized(f"OAuth {problem}: {detail}", oauth_problem=problem)
    raise Unauthorized(f"OAuth {problem}: {_DETAILS[problem]}", oauth_problem=problem)
