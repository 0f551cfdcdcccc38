"""Alerts at work (EXTENSIONS.md section 8): saving rules, evaluating them against the live
counts, and delivering their transitions — the service functions the HTTP routes, the CLI and
the server's background loop share. The rules themselves (parsing, the firing/resolving
decision, bodies) are :mod:`csatdist.alerts`; webhook safety and signing :mod:`csatdist.webhooks`.

**Exactly one notification per transition, across replicas.** Every server evaluates every
rule (after each change of its account's counts and at least once a minute). An evaluation is
stored through :meth:`csatdist.store.Store.record_evaluation`, which locks the rule, drops the
evaluation if one of a later (counters' version, window end) is already stored, decides the
transition against the *stored* state, and writes the delivery to the outbox in the same
transaction. A transition is therefore written once, by whichever server saw it first.

**At least once, with the same delivery id.** The outbox is in the store: a delivery survives
restarts; a server claims due ones with a lease (so one server tries a delivery at a time),
signs and POSTs, logs the attempt, and schedules the next (10 s, doubling, at most 10 minutes
apart, for 24 h). A crash between the POST and the log means one more POST, same id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from csatdist.alerts import AlertRule, delivery_body, evaluate, parse_rule, rule_document
from csatdist.buckets import window_for
from csatdist.directory import Directory
from csatdist.distribution import Grouping
from csatdist.errors import InvalidRequest
from csatdist.report.metrics import report_metrics
from csatdist.sealing import SealingError, SecretBox
from csatdist.store import (
    AttemptRecord,
    CountsRequest,
    EvaluationOutcome,
    NewDelivery,
    OutboxLimits,
    Store,
    StoredRule,
)
from csatdist.threads import finish_in_thread
from csatdist.webhooks import (
    AllowedPrefix,
    Attempt,
    Resolver,
    check_target,
    deliver,
    new_delivery_id,
    new_secret,
    next_retry_at,
    system_resolve,
)

log = logging.getLogger("csatdist.alerts")

#: A server holds a claimed delivery this long; past it another may try it.
LEASE_MS = 60_000
_TOTALS_ONLY = Grouping(by_skill=False, by_agent=False, by_interval=False)


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """What the operator allows: webhook targets beyond public https ones, and the bounds."""

    allow: tuple[AllowedPrefix, ...] = ()
    max_rules: int = 100
    max_ids: int = 1000
    outbox: OutboxLimits = field(default_factory=OutboxLimits)
    resolve: Resolver = system_resolve


def save_rule(
    store: Store,
    box: SecretBox,
    account_id: str,
    name: str,
    document: object,
    policy: AlertPolicy,
    now_ms: int,
) -> tuple[bool, dict[str, Any]]:
    """Validate and store a rule (``PUT …/alerts/{name}``); True when it is new. The reply
    carries the secret of a new rule, once. Resolves the webhook's host: call from a thread."""
    rule = parse_rule(name, document, policy.max_ids)
    check_target(rule.webhook, policy.allow, policy.resolve)
    secret = new_secret()
    try:
        created, stored = store.put_alert_rule(
            account_id, rule.name, rule_document(rule), box.seal(secret), now_ms, policy.max_rules
        )
    except ValueError as exc:
        raise InvalidRequest.one("name", str(exc)) from None
    reply = rule_json(stored)
    if created:
        reply["secret"] = secret
    return created, reply


def rule_json(stored: StoredRule, *, full_webhook: bool = True) -> dict[str, Any]:
    """A rule as the API shows it: its document, then its state (never its secret). Without
    ``full_webhook`` (a read-only credential), the webhook shows only its scheme and host: a
    URL such as a Slack webhook's is itself a credential to post."""
    document = {k: v for k, v in stored.document.items() if k != "name"}
    if not full_webhook and isinstance(document.get("webhook"), str):
        document["webhook"] = redacted_url(document["webhook"])
    return {
        "name": stored.name,
        **document,
        "state": stored.state,
        "stateSince": stored.state_since_ms,
        "evaluatedAt": stored.evaluated_ms,
        "value": stored.last_value,
        "totalAnswers": stored.last_total,
    }


def redacted_url(url: str) -> str:
    """``https://host[:port]/…``: where a URL points, without its path, query or user."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def _counts(cache: Any, account_id: str, rule: AlertRule, now_ms: int) -> tuple[int, Any, Any]:
    """The counters' version, the window and the counts of a rule's population."""
    window = window_for(now_ms, rule.timeframe)
    with cache.current(account_id, window.end_ms) as aggregate:
        table = aggregate.table(
            CountsRequest(account_id, window, rule.skills, rule.agents, _TOTALS_ONLY)
        )
        version = aggregate.version
    counts = tuple(int(c) for c in table.counts.sum(axis=0)) if len(table.counts) else (0,) * 5
    return version, window, counts


@dataclass(frozen=True, slots=True)
class Nudged:
    """What happened on this server since its alert loop last looked."""

    #: Accounts whose counts this server changed.
    accounts: frozenset[str]
    #: More accounts changed than are kept by name: look at every account with rules.
    every_account: bool
    #: A rule was saved here: read the rules again.
    rules: bool


class AlertNudges:
    """Tells this server's alert loop to look now rather than at its next check, and at what:
    the accounts whose counts it changed (their rules only: a write to an account without
    rules costs the loop nothing) and whether a rule was saved here. At most ``max_accounts``
    are kept by name; past that, the loop looks at every account with rules."""

    def __init__(self, max_accounts: int = 1_000) -> None:
        self.max_accounts = max_accounts
        self.event = asyncio.Event()
        self._accounts: set[str] = set()
        self._every_account = False
        self._rules = False

    def counts_changed(self, account_id: str) -> None:
        if len(self._accounts) < self.max_accounts:
            self._accounts.add(account_id)
        elif account_id not in self._accounts:
            self._every_account = True
        self.event.set()

    def rule_saved(self) -> None:
        self._rules = True
        self.event.set()

    def take(self) -> Nudged:
        """What happened since the last call, forgotten here."""
        nudged = Nudged(frozenset(self._accounts), self._every_account, self._rules)
        self._accounts.clear()
        self._every_account = self._rules = False
        self.event.clear()
        return nudged


def evaluate_rules(
    store: Store,
    cache: Any,
    rules: Sequence[StoredRule],
    now_ms: int,
    policy: AlertPolicy,
) -> list[tuple[str, str, str]]:
    """Evaluate ``rules`` (of one account or several) at ``now_ms``; the transitions written
    to the outbox, as (account, rule, transition)."""
    transitions = []
    directories: dict[str, Directory] = {}
    for stored in rules:
        try:
            transition = _evaluate(store, cache, stored, now_ms, policy, directories)
        except InvalidRequest as exc:  # e.g. max_ids lowered since the rule was saved
            log.warning(
                "alert rule no longer valid; skipped",
                extra={
                    "fields": {
                        "account": stored.account_id,
                        "rule": stored.name,
                        "reason": exc.detail,
                    }
                },
            )
            continue
        if transition is not None:
            transitions.append((stored.account_id, stored.name, transition))
    return transitions


def _evaluate(
    store: Store,
    cache: Any,
    stored: StoredRule,
    now_ms: int,
    policy: AlertPolicy,
    directories: dict[str, Directory],
) -> str | None:
    """One rule's evaluation, stored; the transition it wrote to the outbox, if any. When the
    rule was replaced since ``stored`` was read (a server's rule list is up to 10 s old), the
    counts it summed are another population's: the evaluation is made again with the rule as
    stored, never decided with one document's counts and another's thresholds."""
    for _ in range(3):
        try:
            return _evaluate_once(store, cache, stored, now_ms, policy, directories)
        except _RuleReplaced as replaced:
            if replaced.current is None:
                return None  # deleted meanwhile
            stored = replaced.current
    return None  # replaced three times during its evaluations: the next round evaluates it


class _RuleReplaced(Exception):
    """The rule's document changed between the caller's read and the locked one."""

    def __init__(self, current: StoredRule | None) -> None:
        super().__init__("rule replaced")
        self.current = current


def _evaluate_once(
    store: Store,
    cache: Any,
    stored: StoredRule,
    now_ms: int,
    policy: AlertPolicy,
    directories: dict[str, Directory],
) -> str | None:
    account_id = stored.account_id
    rule = parse_rule(stored.name, stored.document, policy.max_ids)
    version, window, counts = _counts(cache, account_id, rule, now_ms)
    metrics = report_metrics(counts)

    def decide(locked: StoredRule) -> EvaluationOutcome:
        if locked.document != stored.document:  # rolls the evaluation's transaction back
            raise _RuleReplaced(locked)
        current = parse_rule(locked.name, locked.document, policy.max_ids)
        decision = evaluate(current, metrics, locked.state)  # type: ignore[arg-type]
        delivery = None
        if decision.transition is not None:
            names = directories.get(account_id)
            if names is None:
                names = directories[account_id] = store.directory(account_id)
            body = delivery_body(
                current, account_id, decision.transition, now_ms, window, metrics, names
            )
            delivery = NewDelivery(new_delivery_id(), decision.transition, current.webhook, body)
        return EvaluationOutcome(decision.state, decision.value, decision.total, delivery)

    outcome = store.record_evaluation(
        account_id, stored.name, (version, window.end_ms), now_ms, decide, policy.outbox
    )
    if outcome is None or outcome.delivery is None:
        return None
    return outcome.delivery.transition


async def deliver_due(
    store: Store,
    client: httpx.AsyncClient,
    secret_box: Callable[[], SecretBox],
    policy: AlertPolicy,
    clock: Any,
    *,
    limit: int = 20,
) -> int:
    """Claim the deliveries that are due and try each once (concurrently); how many tried.
    ``secret_box`` gives the server key's box (loaded only when there is something to sign)."""
    pending = await finish_in_thread(store.claim_deliveries, clock(), LEASE_MS, limit)
    if not pending:
        return 0
    box = secret_box()

    async def attempt(delivery: Any) -> None:
        started = clock()
        try:
            secret = box.open(delivery.secret)
        except SealingError:  # a failed attempt like any other: retried, then given up
            tried = Attempt(
                None,
                "cannot sign: the rule's secret was sealed with another server key "
                "(CSATDIST_SECRET_KEY differs between the servers or the CLI)",
                0,
            )
        else:
            tried = await deliver(
                client,
                delivery.url,
                delivery.body,
                secret,
                delivery.delivery_id,
                allow=policy.allow,
                resolve=policy.resolve,
            )
        number = delivery.attempts + 1
        record = AttemptRecord(
            number, started, tried.status, tried.error, tried.duration_ms, tried.response
        )
        if tried.ok:
            await finish_in_thread(
                store.finish_attempt, delivery.delivery_id, record, None, "delivered"
            )
            return
        retry = next_retry_at(delivery.created_ms, number, last_attempt_ms=started)
        await finish_in_thread(
            store.finish_attempt,
            delivery.delivery_id,
            record,
            retry,
            None if retry is not None else "given_up",
        )

    await asyncio.gather(*(attempt(d) for d in pending))
    return len(pending)


async def send_test(
    store: Store,
    client: httpx.AsyncClient,
    box: SecretBox,
    policy: AlertPolicy,
    account_id: str,
    name: str,
    *,
    now_ms: int,
) -> dict[str, Any] | None:
    """Deliver a signed ``{"state": "test"}`` notification of a rule now (``now_ms``), once;
    the attempt (status, error, duration), or None when the rule does not exist."""

    stored = await finish_in_thread(store.alert_rule, account_id, name)
    if stored is None:
        return None
    rule = parse_rule(stored.name, stored.document, policy.max_ids)
    window = window_for(now_ms, rule.timeframe)
    body = delivery_body(rule, account_id, "test", now_ms, window, report_metrics((0,) * 5))  # type: ignore[arg-type]
    delivery_id = new_delivery_id()
    tried = await deliver(
        client,
        rule.webhook,
        body,
        box.open(stored.secret),
        delivery_id,
        allow=policy.allow,
        resolve=policy.resolve,
    )
    return {
        "delivery": delivery_id,
        "status": tried.status,
        "error": tried.error,
        "durationMs": tried.duration_ms,
        "ok": tried.ok,
    }
