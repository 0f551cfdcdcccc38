"""SQL pieces both backends share: column lists, row decoding, the grouping expressions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from csatdist.buckets import MINUTE_MS
from csatdist.store import AccountChanges, ApiKey, BucketRow, CountsRequest, Session

KEY_COLUMNS = (
    "key_id, account_id, secret_hash, scopes, label, created_ms, revoked_ms,"
    " kind, consumer_secret, access_token, token_secret"
)
SESSION_COLUMNS = (
    "account_id, session_id, secret_hash, username, created_ms, expires_ms, revoked_ms"
)
ACCOUNT_VERSION = "SELECT version FROM account_versions WHERE account_id = {p}"
USER_COLUMNS = "account_id, username, password_hash, created_ms"
#: A password change revokes every live session of the user.
REVOKE_SESSIONS = (
    "UPDATE sessions SET revoked_ms = {p} WHERE account_id = {p} AND username = {p}"
    " AND revoked_ms IS NULL"
)
CHANGES_SINCE = (
    "SELECT v.version, v.purged_through, c.bucket_end, c.skill_id, c.agent_id,"
    " c.score1, c.score2, c.score3, c.score4, c.score5"
    " FROM account_versions v LEFT JOIN bucket_changes c"
    " ON c.account_id = v.account_id AND c.version > {p} AND c.version <= v.version"
    " WHERE v.account_id = {p}"
)


def key_values(key: ApiKey) -> tuple[Any, ...]:
    return (
        key.key_id,
        key.account_id,
        key.secret_hash,
        ",".join(sorted(key.scopes)),
        key.label,
        key.created_ms,
        key.revoked_ms,
        key.kind,
        key.consumer_secret,
        key.access_token,
        key.token_secret,
    )


def key_from_row(row: Sequence[Any]) -> ApiKey:
    return ApiKey(
        key_id=row[0],
        account_id=row[1],
        secret_hash=bytes(row[2]),
        scopes=frozenset(filter(None, str(row[3]).split(","))),
        label=row[4],
        created_ms=row[5],
        revoked_ms=row[6],
        kind=row[7],
        consumer_secret=None if row[8] is None else bytes(row[8]),
        access_token=row[9],
        token_secret=None if row[10] is None else bytes(row[10]),
    )


def session_values(session: Session) -> tuple[Any, ...]:
    return (
        session.account_id,
        session.session_id,
        session.secret_hash,
        session.username,
        session.created_ms,
        session.expires_ms,
        session.revoked_ms,
    )


def session_from_row(row: Sequence[Any]) -> Session:
    return Session(row[0], row[1], bytes(row[2]), row[3], row[4], row[5], row[6])


def group_columns(request: CountsRequest, null: str) -> list[str]:
    """The interval, skill and agent expressions a counts query selects and groups by."""
    grouping, window = request.grouping, request.window
    columns = []
    if grouping.by_interval and request.interval_minutes:
        step = int(request.interval_minutes) * MINUTE_MS
        end = int(window.end_ms)
        columns.append(f"{end} - (({end} - bucket_end) / {step}) * {step}")
    else:
        columns.append(null)
    columns.append("skill_id" if grouping.by_skill else null)
    columns.append("agent_id" if grouping.by_agent else null)
    return columns


def changes_from_rows(rows: Sequence[Sequence[Any]]) -> AccountChanges:
    """Decode the rows of :data:`CHANGES_SINCE` (no row: the account has no version yet)."""
    if not rows:
        return AccountChanges(0, 0, [])
    changes: list[BucketRow] = [
        (int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]), int(r[7]), int(r[8]), int(r[9]))
        for r in rows
        if r[2] is not None
    ]
    return AccountChanges(int(rows[0][0]), int(rows[0][1]), changes)
