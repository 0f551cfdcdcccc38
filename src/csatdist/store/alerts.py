"""Alert rules, their evaluations and the delivery outbox: the SQL both stores share.

Every function takes ``run(sql, params) -> rows`` and ``run_many`` bound to one transaction, the
backend's placeholder ``p``, and ``lock`` (`` FOR UPDATE`` where rows must be locked: the SQLite
store runs every write on its one writer, which serialises them anyway).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from csatdist.store import (
    AttemptRecord,
    DeliveryRecord,
    EvaluationOutcome,
    OutboxLimits,
    PendingDelivery,
    StoredRule,
)
from csatdist.store.history import Run

_RULE_COLUMNS = (
    "account_id, name, rule, secret, created_ms, updated_ms, state, state_since_ms,"
    " evaluated_ms, last_value, last_total"
)
PENDING = "outcome IS NULL"


def rule_from_row(row: Any) -> StoredRule:
    return StoredRule(
        row[0],
        row[1],
        orjson.loads(row[2]),
        bytes(row[3]),
        int(row[4]),
        int(row[5]),
        row[6],
        None if row[7] is None else int(row[7]),
        None if row[8] is None else int(row[8]),
        None if row[9] is None else float(row[9]),
        None if row[10] is None else int(row[10]),
    )


def put_rule(
    run: Run,
    p: str,
    lock: str,
    account_id: str,
    name: str,
    document: dict[str, Any],
    sealed_secret: bytes,
    now_ms: int,
    max_rules: int,
) -> tuple[bool, StoredRule]:
    found = run(
        f"SELECT {_RULE_COLUMNS} FROM alert_rules WHERE account_id = {p} AND name = {p}{lock}",
        (account_id, name),
    )
    text = orjson.dumps(document).decode()
    if found:  # a new document; the secret and the state stay, re-evaluated at once
        run(
            f"UPDATE alert_rules SET rule = {p}, updated_ms = {p}, evaluated_version = -1,"
            f" evaluated_window_end = 0 WHERE account_id = {p} AND name = {p} RETURNING 1",
            (text, now_ms, account_id, name),
        )
    else:
        count = run(f"SELECT count(*) FROM alert_rules WHERE account_id = {p}", (account_id,))
        if int(count[0][0]) >= max_rules:
            raise ValueError(f"this account already has {max_rules} alert rules, the limit")
        run(
            f"INSERT INTO alert_rules (account_id, name, rule, secret, created_ms, updated_ms)"
            f" VALUES ({p}, {p}, {p}, {p}, {p}, {p}) RETURNING 1",
            (account_id, name, text, sealed_secret, now_ms, now_ms),
        )
    rule = get_rule(run, p, "", account_id, name)
    if rule is None:  # written just above, in this transaction
        raise RuntimeError(f"alert rule {name!r} vanished while being written")
    return not found, rule


def get_rule(run: Run, p: str, lock: str, account_id: str, name: str) -> StoredRule | None:
    rows = run(
        f"SELECT {_RULE_COLUMNS} FROM alert_rules WHERE account_id = {p} AND name = {p}{lock}",
        (account_id, name),
    )
    return rule_from_row(rows[0]) if rows else None


def list_rules(run: Run, p: str, account_id: str | None) -> list[StoredRule]:
    sql = f"SELECT {_RULE_COLUMNS} FROM alert_rules"
    params: tuple[Any, ...] = ()
    if account_id is not None:
        sql += f" WHERE account_id = {p}"
        params = (account_id,)
    return [rule_from_row(row) for row in run(sql + " ORDER BY account_id, name", params)]


def delete_rule(run: Run, p: str, account_id: str, name: str) -> bool:
    run(
        f"DELETE FROM alert_attempts WHERE delivery_id IN (SELECT delivery_id FROM"
        f" alert_deliveries WHERE account_id = {p} AND rule_name = {p}) RETURNING 1",
        (account_id, name),
    )
    run(
        f"DELETE FROM alert_deliveries WHERE account_id = {p} AND rule_name = {p} RETURNING 1",
        (account_id, name),
    )
    return bool(
        run(
            f"DELETE FROM alert_rules WHERE account_id = {p} AND name = {p} RETURNING 1",
            (account_id, name),
        )
    )


def record_evaluation(
    run: Run,
    p: str,
    lock: str,
    account_id: str,
    name: str,
    order: tuple[int, int],
    now_ms: int,
    decide: Callable[[StoredRule], EvaluationOutcome],
    limits: OutboxLimits,
) -> EvaluationOutcome | None:
    rows = run(
        f"SELECT {_RULE_COLUMNS}, evaluated_version, evaluated_window_end FROM alert_rules"
        f" WHERE account_id = {p} AND name = {p}{lock}",
        (account_id, name),
    )
    if not rows or (int(rows[0][11]), int(rows[0][12])) >= order:
        return None  # gone, or an evaluation as late or later is already stored
    rule = rule_from_row(rows[0])
    outcome = decide(rule)
    changed = outcome.state != rule.state
    run(
        f"UPDATE alert_rules SET state = {p}, state_since_ms = {p}, evaluated_version = {p},"
        f" evaluated_window_end = {p}, evaluated_ms = {p}, last_value = {p}, last_total = {p}"
        f" WHERE account_id = {p} AND name = {p} RETURNING 1",
        (
            outcome.state,
            now_ms if changed else rule.state_since_ms,
            order[0],
            order[1],
            now_ms,
            outcome.value,
            outcome.total,
            account_id,
            name,
        ),
    )
    delivery = outcome.delivery
    if delivery is None:
        return outcome
    pending = run(
        f"SELECT count(*) FROM alert_deliveries WHERE account_id = {p} AND {PENDING}",
        (account_id,),
    )
    pending_all = run(f"SELECT count(*) FROM alert_deliveries WHERE {PENDING}", ())
    over = int(pending[0][0]) >= limits.per_account or int(pending_all[0][0]) >= limits.in_all
    run(
        f"INSERT INTO alert_deliveries (delivery_id, account_id, rule_name, transition, url,"
        f" body, created_ms, next_attempt_ms, outcome, finished_ms)"
        f" VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}) RETURNING 1",
        (
            delivery.delivery_id,
            account_id,
            name,
            delivery.transition,
            delivery.url,
            delivery.body,
            now_ms,
            None if over else now_ms,
            "dropped" if over else None,  # too many pending: kept in the log, never sent
            now_ms if over else None,
        ),
    )
    return outcome


def claim(
    run: Run, p: str, skip_locked: str, now_ms: int, lease_ms: int, limit: int
) -> list[PendingDelivery]:
    due = run(
        f"SELECT delivery_id FROM alert_deliveries WHERE next_attempt_ms <= {p}"
        f" AND lease_until_ms < {p} AND {PENDING} ORDER BY next_attempt_ms LIMIT {p}{skip_locked}",
        (now_ms, now_ms, limit),
    )
    claimed = []
    for (delivery_id,) in due:
        rows = run(
            f"UPDATE alert_deliveries SET lease_until_ms = {p} WHERE delivery_id = {p}"
            " RETURNING delivery_id, account_id, rule_name, url, body, attempts, created_ms",
            (now_ms + lease_ms, delivery_id),
        )
        row = rows[0]
        secret = run(
            f"SELECT secret FROM alert_rules WHERE account_id = {p} AND name = {p}",
            (row[1], row[2]),
        )
        if secret:
            claimed.append(
                PendingDelivery(
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    bytes(row[4]),
                    int(row[5]),
                    int(row[6]),
                    bytes(secret[0][0]),
                )
            )
    return claimed


def finish(
    run: Run,
    p: str,
    delivery_id: str,
    attempt: AttemptRecord,
    next_attempt_ms: int | None,
    outcome: str | None,
) -> None:
    run(
        f"INSERT INTO alert_attempts (delivery_id, attempt, at_ms, status, error, duration_ms,"
        f" response) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}) RETURNING 1",
        (
            delivery_id,
            attempt.attempt,
            attempt.at_ms,
            attempt.status,
            attempt.error,
            attempt.duration_ms,
            attempt.response,
        ),
    )
    run(
        f"UPDATE alert_deliveries SET attempts = {p}, next_attempt_ms = {p}, lease_until_ms = 0,"
        f" outcome = {p}, finished_ms = {p} WHERE delivery_id = {p} RETURNING 1",
        (
            attempt.attempt,
            next_attempt_ms,
            outcome,
            attempt.at_ms if outcome is not None else None,
            delivery_id,
        ),
    )


def list_deliveries(
    run: Run, p: str, account_id: str, name: str, limit: int
) -> list[DeliveryRecord]:
    rows = run(
        f"SELECT delivery_id, transition, created_ms, attempts, next_attempt_ms, outcome,"
        f" finished_ms FROM alert_deliveries WHERE account_id = {p} AND rule_name = {p}"
        f" ORDER BY created_ms DESC, delivery_id LIMIT {p}",
        (account_id, name, limit),
    )
    found = []
    for row in rows:
        tries = [
            AttemptRecord(int(a[0]), int(a[1]), a[2], a[3], int(a[4]), a[5] or "")
            for a in run(
                f"SELECT attempt, at_ms, status, error, duration_ms, response FROM alert_attempts"
                f" WHERE delivery_id = {p} ORDER BY attempt",
                (row[0],),
            )
        ]
        found.append(
            DeliveryRecord(
                row[0],
                row[1],
                int(row[2]),
                int(row[3]),
                None if row[4] is None else int(row[4]),
                row[5],
                None if row[6] is None else int(row[6]),
                tries,
            )
        )
    return found


def purge_deliveries(run: Run, p: str, finished_before_ms: int) -> int:
    """Drop deliveries (and their attempts) that ended before ``finished_before_ms``."""
    run(
        f"DELETE FROM alert_attempts WHERE delivery_id IN (SELECT delivery_id FROM"
        f" alert_deliveries WHERE finished_ms < {p}) RETURNING 1",
        (finished_before_ms,),
    )
    return len(
        run(
            f"DELETE FROM alert_deliveries WHERE finished_ms < {p} RETURNING 1",
            (finished_before_ms,),
        )
    )
