"""Work a server does on its own while it runs: the retention purge and the demo feed."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from csatdist import allocator
from csatdist.alerting import deliver_due, evaluate_rules
from csatdist.buckets import BUCKET_MS, floor_to_bucket
from csatdist.demo import AnswerSimulator, trickle
from csatdist.history import DAY_MS
from csatdist.http.runtime import Runtime
from csatdist.store import StoredRule
from csatdist.threads import finish_in_thread, wait_event
from csatdist.webhooks import webhook_client

#: How long the change log keeps counter changes for other servers' aggregates to catch up.
CHANGE_LOG_MS = 60 * 60_000

log = logging.getLogger("csatdist.http")


async def purge_forever(rt: Runtime) -> None:
    """Periodically: roll the counters of finished buckets up into the history, then drop what
    the retention no longer keeps (buckets already rolled up, answer records, tombstones, the
    change log, history older than ``history_days``)."""
    while True:
        await asyncio.sleep(rt.settings.purge_interval_seconds)
        now = rt.clock()
        older_than = now - rt.settings.retention_minutes * 60_000
        history_older_than = now - rt.settings.history_days * DAY_MS
        try:
            await finish_in_thread(rt.store.roll_up, roll_up_point(now))
            result = await finish_in_thread(
                rt.store.purge, older_than, history_older_than - history_older_than % DAY_MS
            )
            await finish_in_thread(rt.store.purge_changes, rt.clock() - CHANGE_LOG_MS)
        except Exception:
            log.exception("roll-up or retention purge failed; will retry")
            continue
        if result.buckets or result.records or result.tombstones or result.history:
            log.info(
                "purged expired data",
                extra={
                    "fields": {
                        "buckets": result.buckets,
                        "records": result.records,
                        "tombstones": result.tombstones,
                        "history_rows": result.history,
                    }
                },
            )


async def release_memory_forever(interval_seconds: float = 10.0) -> None:
    """Every few seconds, give the C heaps' free memory back to the system (each worker
    process), so memory a burst of large responses took is returned soon after it ends."""
    while True:
        await asyncio.sleep(interval_seconds)
        await finish_in_thread(allocator.trim)


def roll_up_point(now_ms: int) -> int:
    """Buckets ending by this are rolled up: every one that ended at least 5 minutes ago (a
    late answer to a rolled bucket is applied to the history as well)."""
    return floor_to_bucket(now_ms) - BUCKET_MS


async def feed_demo(rt: Runtime) -> None:
    """Add a few simulated answers to the demo account every few seconds."""
    simulator = AnswerSimulator()
    period_ms = int(rt.settings.demo_interval_seconds * 1000)
    while True:
        await asyncio.sleep(rt.settings.demo_interval_seconds)
        try:
            await finish_in_thread(
                trickle,
                rt.store,
                rt.settings.demo_account,
                simulator,
                rt.clock(),
                rt.settings.retention_minutes,
                period_ms,
            )
        except Exception:
            log.exception("demo feed failed; will retry")


#: Every rule is evaluated at least this often, for its window slides with time.
EVALUATE_ALL_SECONDS = 60.0
#: The list of accounts with rules is read again this often (new rules are also evaluated at
#: once: their route wakes the loop).
RULES_REFRESH_SECONDS = 10.0


async def alerts_forever(rt: Runtime) -> None:
    """Evaluate alert rules — an account's after its counts changed (seen by its version, so
    writes through any server or consumer count; at once for the accounts this server wrote
    to), every rule at least once a minute — and deliver what is due, on every server (the
    store decides each transition once). Work follows what changed: a write to an account
    without rules reads nothing; the rules are read every :data:`RULES_REFRESH_SECONDS` or when
    one is saved here; every account's version and the outbox once per check interval."""
    loop = asyncio.get_running_loop()
    seen: dict[str, int] = {}  # account -> version of its latest evaluation here
    rules: list[StoredRule] = []
    rules_read_at = evaluated_all_at = checked_at = -1e9
    async with webhook_client() as client:
        while True:
            await wait_event(rt.alert_nudges.event, rt.settings.alert_check_seconds)
            nudged = rt.alert_nudges.take()
            now = loop.time()
            try:
                if nudged.rules or now - rules_read_at >= RULES_REFRESH_SECONDS:
                    rules = await finish_in_thread(rt.store.alert_rules, None)
                    rules_read_at = now
                check = nudged.every_account or now - checked_at >= rt.settings.alert_check_seconds
                with_rules = {rule.account_id for rule in rules}
                accounts = with_rules if check else with_rules & nudged.accounts
                everything = now - evaluated_all_at >= EVALUATE_ALL_SECONDS
                due = await _rules_due(rt, rules, seen, accounts, everything)
                if everything:
                    evaluated_all_at = now
                if due:
                    await finish_in_thread(
                        evaluate_rules, rt.store, rt.aggregates, due, rt.clock(), rt.alert_policy
                    )
                    rules = _marked_evaluated(rules, due)
                if check or due:  # an evaluation may have put a delivery in the outbox
                    await deliver_due(rt.store, client, rt.secret_box, rt.alert_policy, rt.clock)
                if check:
                    checked_at = now
                    for gone in seen.keys() - with_rules:
                        del seen[gone]
            except Exception:
                log.exception("alert evaluation or delivery failed; will retry")


async def _rules_due(
    rt: Runtime,
    rules: list[StoredRule],
    seen: dict[str, int],
    accounts: set[str],
    everything: bool,
) -> list[StoredRule]:
    """The rules to evaluate now: all of them, or those of ``accounts`` whose counts changed
    (their versions are read and kept in ``seen``), and new or replaced ones."""
    changed = set()
    for account in sorted(accounts):
        version = await finish_in_thread(rt.store.account_version, account)
        if seen.get(account) != version:
            changed.add(account)
        seen[account] = version
    return [
        rule
        for rule in rules
        if everything
        or rule.account_id in changed
        or rule.evaluated_ms is None  # new
        or rule.updated_ms > rule.evaluated_ms  # replaced since
    ]


def _marked_evaluated(rules: list[StoredRule], evaluated: list[StoredRule]) -> list[StoredRule]:
    """``rules`` with those just evaluated marked so (until the rules are read again), so a
    new or replaced rule is not evaluated again on every nudge."""
    done = {id(rule) for rule in evaluated}
    return [
        dataclasses.replace(rule, evaluated_ms=rule.updated_ms) if id(rule) in done else rule
        for rule in rules
    ]


#: Accounts a warm-up loads per worker-thread call: their snapshots are read together
#: (:meth:`AggregateCache.preload`), and /readyz's progress moves by as many at a time. One
#: thread hop per account, with a store read of its own, was half of a small account's load.
WARM_UP_BATCH = 100


async def warm_up(rt: Runtime, accounts: list[str]) -> None:
    """Load the in-memory counters of ``accounts`` (the busiest first), a batch at a time,
    before /readyz reports ready — within ``warm_up_seconds``; the rest load on first use."""
    progress = rt.warm_up
    deadline = asyncio.get_running_loop().time() + rt.settings.warm_up_seconds
    try:
        for start in range(0, len(accounts), WARM_UP_BATCH):
            if asyncio.get_running_loop().time() > deadline:
                log.warning(
                    "warm-up stopped at its time limit; the rest load on first use",
                    extra={"fields": {"loaded": progress.loaded, "planned": progress.planned}},
                )
                break
            batch = accounts[start : start + WARM_UP_BATCH]
            await finish_in_thread(rt.aggregates.preload, batch, rt.clock())
            progress.loaded += len(batch)
    except Exception:
        log.exception("warm-up failed; accounts load on first use")
    finally:
        progress.done = True
        log.info(
            "warm-up done",
            extra={"fields": {"loaded": progress.loaded, "planned": progress.planned}},
        )
