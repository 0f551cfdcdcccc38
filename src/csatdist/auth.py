"""Who may call what: every 401 is decided here.

A credential is bound to one account; a key of another account, an unknown or revoked key, a
missing or malformed header, and a key without the needed scope are all 401 (CONTRACT.md
section 4). The messages never reveal whether an account exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from csatdist.errors import Unauthorized
from csatdist.keys import secret_matches, split_token
from csatdist.store import Store

ACCOUNT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True, slots=True)
class Principal:
    account_id: str
    key_id: str
    scopes: frozenset[str]


def valid_account_id(account_id: str) -> bool:
    return ACCOUNT_ID.fullmatch(account_id) is not None


def authenticate(store: Store, authorization: str | None, account_id: str, scope: str) -> Principal:
    """The principal behind an ``Authorization`` header, or :class:`Unauthorized`."""
    if not authorization or not authorization.strip():
        raise Unauthorized("missing credentials: send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'")
    parts = split_token(token.strip())
    if parts is None:
        raise Unauthorized("malformed bearer token: expected a csatdist API key (csd_...)")
    if not valid_account_id(account_id):
        raise Unauthorized("the key is not valid for this account")
    key_id, secret = parts
    key = store.find_key(account_id, key_id)
    if key is None or not secret_matches(key, secret):
        raise Unauthorized("the key is not valid for this account")
    if not key.active:
        raise Unauthorized("the key has been revoked")
    if scope not in key.scopes:
        raise Unauthorized(f"the key lacks the '{scope}' scope needed here")
    return Principal(account_id=account_id, key_id=key.key_id, scopes=key.scopes)
