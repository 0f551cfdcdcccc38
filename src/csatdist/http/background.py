"""Work a server does on its own while it runs: the retention purge and the demo feed."""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool

from csatdist.demo import AnswerSimulator, trickle
from csatdist.http.runtime import Runtime

#: How long the change log keeps counter changes for other servers' aggregates to catch up.
CHANGE_LOG_MS = 60 * 60_000

log = logging.getLogger("csatdist.http")


async def purge_forever(rt: Runtime) -> None:
    """Drop expired buckets, answer records, tombstones and change-log entries, periodically."""
    while True:
        await asyncio.sleep(rt.settings.purge_interval_seconds)
        older_than = rt.clock() - rt.settings.retention_minutes * 60_000
        try:
            result = await run_in_threadpool(rt.store.purge, older_than)
            await run_in_threadpool(rt.store.purge_changes, rt.clock() - CHANGE_LOG_MS)
        except Exception:
            log.exception("retention purge failed; will retry")
            continue
        if result.buckets or result.records or result.tombstones:
            log.info(
                "purged expired data",
                extra={
                    "fields": {
                        "buckets": result.buckets,
                        "records": result.records,
                        "tombstones": result.tombstones,
                    }
                },
            )


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
