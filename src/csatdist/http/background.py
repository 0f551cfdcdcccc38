"""Work a server does on its own while it runs: the retention purge and the demo feed."""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool

from csatdist.buckets import BUCKET_MS, floor_to_bucket
from csatdist.demo import AnswerSimulator, trickle
from csatdist.history import DAY_MS
from csatdist.http.runtime import Runtime

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
            await run_in_threadpool(rt.store.roll_up, roll_up_point(now))
            result = await run_in_threadpool(
                rt.store.purge, older_than, history_older_than - history_older_than % DAY_MS
            )
            await run_in_threadpool(rt.store.purge_changes, rt.clock() - CHANGE_LOG_MS)
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
            await run_in_threadpool(
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
