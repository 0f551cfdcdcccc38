"""Credentials: issuing API keys, OAuth 1.0a app keys and login sessions, and checking tokens.

Bearer tokens read ``csd_<key id>_<secret>`` (API keys) or ``csb_<session id>_<secret>`` (login
sessions). The id locates the record; the secret has 256 bits of entropy, so a plain SHA-256 is
the right hash (a slow KDF protects low-entropy passwords, not random tokens), and it is compared
in constant time. OAuth 1.0a secrets are sealed instead (see :mod:`csatdist.sealing`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from csatdist.sealing import SecretBox
from csatdist.store import ApiKey, Session

API_KEY_PREFIX = "csd"
SESSION_PREFIX = "csb"
SCOPES = frozenset({"read", "write"})
_TOKEN = re.compile(r"(csd|csb)_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: ApiKey
    token: str


@dataclass(frozen=True, slots=True)
class IssuedOAuthKey:
    key: ApiKey
    consumer_key: str
    consumer_secret: str
    token: str
    token_secret: str


@dataclass(frozen=True, slots=True)
class BearerToken:
    kind: str  # "csd" (API key) or "csb" (session)
    record_id: str
    secret: str


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def _check_scopes(scopes: frozenset[str]) -> None:
    if not scopes or scopes - SCOPES:
        raise ValueError(f"scopes must be a non-empty subset of {sorted(SCOPES)}")


def issue_key(account_id: str, scopes: frozenset[str], label: str, now_ms: int) -> IssuedKey:
    _check_scopes(scopes)
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(
        key_id=key_id,
        account_id=account_id,
        secret_hash=hash_secret(secret),
        scopes=scopes,
        label=label,
        created_ms=now_ms,
    )
    return IssuedKey(key=key, token=f"{API_KEY_PREFIX}_{key_id}_{secret}")


def issue_oauth_key(
    account_id: str, scopes: frozenset[str], label: str, now_ms: int, box: SecretBox
) -> IssuedOAuthKey:
    """An app key: consumer key/secret and access token/secret, secrets sealed for storage."""
    _check_scopes(scopes)
    consumer_key = secrets.token_hex(16)
    consumer_secret = secrets.token_hex(16)
    token = secrets.token_hex(16)
    token_secret = secrets.token_hex(16)
    key = ApiKey(
        key_id=consumer_key,
        account_id=account_id,
        secret_hash=b"",
        scopes=scopes,
        label=label,
        created_ms=now_ms,
        kind="oauth1",
        consumer_secret=box.seal(consumer_secret),
        access_token=token,
        token_secret=box.seal(token_secret),
    )
    return IssuedOAuthKey(key, consumer_key, consumer_secret, token, token_secret)


def issue_session(account_id: str, username: str, now_ms: int, ttl_ms: int) -> tuple[Session, str]:
    session_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    session = Session(
        account_id=account_id,
        session_id=session_id,
        secret_hash=hash_secret(secret),
        username=username,
        created_ms=now_ms,
        expires_ms=now_ms + ttl_ms,
    )
    return session, f"{SESSION_PREFIX}_{session_id}_{secret}"


def parse_bearer(token: str) -> BearerToken | None:
    match = _TOKEN.fullmatch(token)
    return BearerToken(match.group(1), match.group(2), match.group(3)) if match else None


def secret_matches(expected_hash: bytes, secret: str) -> bool:
    return hmac.compare_digest(expected_hash, hash_secret(secret))
