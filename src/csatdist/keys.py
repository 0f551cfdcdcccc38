"""API keys: issuing tokens and checking them. Only a hash of the secret is ever stored.

A token reads ``csd_<key id>_<secret>``. The key id locates the record; the secret has 256 bits
of entropy, so a plain SHA-256 is the right hash (a slow KDF protects low-entropy passwords, not
random tokens), and it is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from csatdist.store import ApiKey

TOKEN_PREFIX = "csd"  # noqa: S105 - a public prefix, not a secret
SCOPES = frozenset({"read", "write"})
_TOKEN = re.compile(r"csd_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: ApiKey
    token: str


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def issue_key(account_id: str, scopes: frozenset[str], label: str, now_ms: int) -> IssuedKey:
    unknown = scopes - SCOPES
    if unknown or not scopes:
        raise ValueError(f"scopes must be a non-empty subset of {sorted(SCOPES)}")
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
    return IssuedKey(key=key, token=f"{TOKEN_PREFIX}_{key_id}_{secret}")


def split_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed token, else None."""
    match = _TOKEN.fullmatch(token)
    return (match.group(1), match.group(2)) if match else None


def secret_matches(key: ApiKey, secret: str) -> bool:
    return hmac.compare_digest(key.secret_hash, hash_secret(secret))
