"""SQL pieces both backends share: column lists, row decoding, the grouping expressions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from csatdist.answers import Answer
from csatdist.buckets import MINUTE_MS
from csatdist.records import StoredAnswer
from csatdist.store import (
    AccountChanges,
    AnswerRecord,
    AnswersRequest,
    ApiKey,
    BucketRow,
    CountsRequest,
    ErasureOutcome,
    Session,
    packed,
)

KEY_COLUMNS = (
    "key_id, account_id, secret_hash, scopes, label, created_ms, revoked_ms,"
    " kind, consumer_secret, access_token, token_secret"
)
SESSION_COLUMNS = (
    "account_id, session_id, secret_hash, username, created_ms, expires_ms, revoked_ms"
)
ACCOUNT_VERSION = "SELECT version FROM account_versions WHERE account_id = {p}"
BUSIEST_ACCOUNTS = (
    "SELECT account_id FROM account_versions WHERE version > 0 ORDER BY version DESC LIMIT {p}"
)
USER_COLUMNS = "account_id, username, password_hash, created_ms"
#: A password change revokes every live session of the user.
REVOKE_SESSIONS = (
    "UPDATE sessions SET revoked_ms = {p} WHERE account_id = {p} AND username = {p}"
    " AND revoked_ms IS NULL"
)
#: An account's version, how far its change log is purged, and its change-log rows after a
#: version (PostgreSQL; one row with NULL changes when there are none).
CHANGES_SINCE = (
    "SELECT v.version, v.purged_through, c.changes"
    " FROM account_versions v LEFT JOIN change_log c"
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


#: :meth:`Store.account_snapshots`, first: how many counter rows each account has (in the
#: order of the rows below), so the accounts read are chosen before any row is.
SNAPSHOT_SIZES = (
    "SELECT account_id, count(*) FROM buckets WHERE account_id {accounts}"
    " GROUP BY account_id ORDER BY account_id"
)
#: Then the rows of the accounts chosen, grouped by account (by bucket within one, which spares
#: the aggregate's load a sort).
SNAPSHOT_ROWS = (
    "SELECT bucket_end, skill_id, agent_id, score1, score2, score3, score4, score5"
    " FROM buckets WHERE account_id {accounts} ORDER BY account_id, bucket_end"
)


def snapshot_accounts(sizes: Sequence[Sequence[Any]], max_rows: int) -> list[str]:
    """The accounts of :data:`SNAPSHOT_SIZES` (account, rows) whose rows to read: a prefix,
    within ``max_rows`` together or the first alone."""
    chosen: list[str] = []
    total = 0
    for account, size in sizes:
        if chosen and total + size > max_rows:
            break
        chosen.append(account)
        total += size
    return chosen


def snapshots_from_rows(
    ids: Sequence[str],
    versions: Sequence[Sequence[Any]],
    sizes: Sequence[Sequence[Any]],
    rows: list[Any],
) -> dict[str, tuple[int, list[BucketRow]]]:
    """Decode :meth:`Store.account_snapshots`: ``versions`` are (account, version) pairs,
    ``sizes`` the rows of :data:`SNAPSHOT_SIZES` and ``rows`` those of :data:`SNAPSHOT_ROWS`
    read for the accounts :func:`snapshot_accounts` chose. The accounts without rows are
    always complete; those with rows and not read are left out."""
    version_of = {account: int(version) for account, version in versions}
    with_rows = {account for account, _ in sizes}
    snapshots: dict[str, tuple[int, list[BucketRow]]] = {
        account: (version_of.get(account, 0), []) for account in ids if account not in with_rows
    }
    start = 0
    for account, size in sizes:
        if start == len(rows):  # the accounts after those chosen
            break
        snapshots[account] = (version_of.get(account, 0), rows[start : start + size])
        start += size
    return snapshots


def largest_change(rows: Sequence[Sequence[Any]]) -> int:
    """The bytes of the largest packed change in rows of :data:`CHANGES_SINCE`."""
    return max((len(r[2]) for r in rows if r[2] is not None), default=0)


def changes_from_rows(rows: Sequence[Sequence[Any]]) -> AccountChanges:
    """Decode the rows of :data:`CHANGES_SINCE` (no row: the account has no version yet): the
    changes of every version in them, summed per counter."""
    if not rows:
        return AccountChanges(0, 0, [])
    changes = packed.summed(bytes(r[2]) for r in rows if r[2] is not None)
    return AccountChanges(int(rows[0][0]), int(rows[0][1]), changes)


# answer records ------------------------------------------------------------------------------

#: A record's columns after ``account_id``, in :class:`AnswerRecord` order.
RECORD_COLUMNS = (
    "answer_id, answer_time, skill_id, agent_id, score, updated_ms, conversation_id, comment,"
    " channel, skill_name, agent_name"
)
#: Where an account's records are: still in the answer log (acknowledged, not folded yet) or
#: folded into the records (one of them at most). A store that folds while another transaction
#: writes reads and writes them in this order, each statement seeing what committed before it:
#: a fold moves an answer from the first to the second in one transaction, so an answer looked
#: for in the log, then in the records, is never missed (at worst seen in both).
RECORD_TABLES = ("answer_log", "answers")
#: What planning an ingest or an erasure needs of a record (:class:`StoredAnswer`).
STORED_COLUMNS = "answer_id, answer_time, skill_id, agent_id, score, updated_ms"
#: A correction replaces every field but the id (``table``: the records, or the answer log).
CORRECT_RECORD = (
    "UPDATE {table} SET answer_time = {p}, skill_id = {p}, agent_id = {p}, score = {p},"
    " updated_ms = {p}, conversation_id = {p}, comment = {p}, channel = {p}, skill_name = {p},"
    " agent_name = {p} WHERE account_id = {p} AND answer_id = {p}"
)


def record_values(account_id: str, answer: Answer) -> tuple[Any, ...]:
    """``account_id`` and the :data:`RECORD_COLUMNS` of an answer, for an INSERT."""
    return (account_id, *_fields(answer))


def correction_values(account_id: str, answer: Answer) -> tuple[Any, ...]:
    """The parameters of :data:`CORRECT_RECORD`."""
    return (*_fields(answer)[1:], account_id, answer.id)


def _fields(answer: Answer) -> tuple[Any, ...]:
    return (
        answer.id,
        answer.time_ms,
        answer.skill_id,
        answer.agent_id,
        answer.score,
        answer.updated,
        answer.conversation_id,
        answer.comment,
        answer.channel,
        answer.skill_name,
        answer.agent_name,
    )


def stored_from_row(row: Sequence[Any]) -> StoredAnswer:
    return StoredAnswer(
        row[0],
        int(row[1]),
        None if row[2] is None else int(row[2]),
        None if row[3] is None else int(row[3]),
        None if row[4] is None else int(row[4]),
        int(row[5]),
    )


def record_from_row(row: Sequence[Any]) -> AnswerRecord:
    return AnswerRecord(
        row[0],
        int(row[1]),
        None if row[2] is None else int(row[2]),
        None if row[3] is None else int(row[3]),
        None if row[4] is None else int(row[4]),
        int(row[5]),
        *row[6:11],
    )


def listing_query(
    request: AnswersRequest,
    p: str,
    id_list: Callable[[str, list[int]], tuple[str, Any]],
    table: str = "answers",
) -> tuple[str, list[Any]]:
    """The SELECT of one page of :class:`AnswersRequest` from ``table`` (the records, or
    the answer log); ``p`` is the backend's placeholder and ``id_list(column, ids)`` its
    "column is one of these" condition and parameter.

    After a cursor the time range ends at the cursor's time, as the one upper bound: the time
    index then seeks straight to the cursor (with the window's end as well, SQLite ranged over
    every record newer than the cursor, and an export of a 1,000,000-answer day took over ten
    minutes, each page slower than the last)."""
    after = request.after
    end_condition, end = f"answer_time < {p}", request.end_ms
    if after is not None and after[0] < request.end_ms:
        end_condition, end = f"answer_time <= {p}", after[0]
    sql = (
        f"SELECT {RECORD_COLUMNS} FROM {table} WHERE account_id = {p}"
        f" AND answer_time >= {p} AND {end_condition} AND score IS NOT NULL"
    )
    params: list[Any] = [request.account_id, request.start_ms, end]
    for column, selection in (("skill_id", request.skills), ("agent_id", request.agents)):
        if selection is not None and selection.ids is not None:
            condition, value = id_list(column, sorted(selection.ids))
            sql += f" AND {condition}"
            params.append(value)
    if request.scores is not None:
        condition, value = id_list("score", sorted(request.scores))
        sql += f" AND {condition}"
        params.append(value)
    if after is not None:
        time_ms, answer_id = after
        sql += f" AND (answer_time < {p} OR (answer_time = {p} AND answer_id > {p}))"
        params += [time_ms, time_ms, answer_id]
    sql += f" ORDER BY answer_time DESC, answer_id LIMIT {p}"
    params.append(request.limit)
    return sql, params


def listed_records(rows: list[Any], limit: int) -> list[AnswerRecord]:
    """One page of :class:`AnswersRequest` from the rows of :func:`listing_query` on each of
    :data:`RECORD_TABLES`, read in one snapshot: newest first, then by id."""
    rows.sort(key=lambda row: (-row[1], row[0]))
    return [record_from_row(row) for row in rows[:limit]]


def erasure_outcome(
    wanted: Sequence[str], records: Sequence[StoredAnswer], erased_before: set[str]
) -> ErasureOutcome:
    """Ids erased now or before are ``erased`` (an erasure repeated after a timeout reads the
    same); the others were never recorded: ``unknown``."""
    found = {record.answer_id for record in records} | erased_before
    return ErasureOutcome(
        erased=[i for i in wanted if i in found], unknown=[i for i in wanted if i not in found]
    )
