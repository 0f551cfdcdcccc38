"""Push updates: the distribution as Server-Sent Events, sent only when it changes.

Every open stream of a server asks :class:`Snapshots` once per period; streams with the same
account and query share one computation per period, so a wall of identical dashboards costs one
query per period, not one per screen. The event id is a hash of the event's data, so a client
resuming with ``Last-Event-ID`` gets nothing until something really changed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from csatdist.conditional import etag_for
from csatdist.memo import Rendered
from csatdist.query import DistributionQuery

HEARTBEAT = b": heartbeat\n\n"


def sse_event(event: str, data: bytes, event_id: str | None = None) -> bytes:
    """One event; ``data`` is compact JSON, so it holds no line breaks."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\n".encode() + b"data: " + data + b"\n\n"


def retry_hint(milliseconds: int) -> bytes:
    return f"retry: {milliseconds}\n\n".encode()


@dataclass(frozen=True, slots=True)
class Snapshot:
    data: bytes  # {"window": {"start": ms, "end": ms}, "body": <the query's body>}
    event_id: str
    taken: float  # monotonic seconds


def snapshot_of(rendered: Rendered, taken: float) -> Snapshot:
    """``{"window": {"start": ms, "end": ms}, "body": <the query's body>}``, around the already
    serialised body (the same bytes a query gets)."""
    window = rendered.window
    head = b'{"window":{"start":%d,"end":%d},"body":' % (window.start_ms, window.end_ms)
    data = b"".join((head, rendered.data, b"}"))  # a join gives the GIL up while it copies MBs
    return Snapshot(data, etag_for(data).strip('"'), taken)


class Snapshots:
    """The latest snapshot per (account, query), recomputed at most once per ``max_age``."""

    def __init__(
        self,
        compute: Callable[[str, DistributionQuery], Awaitable[Rendered]],
        max_age: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._compute = compute
        self._max_age = max_age
        self._monotonic = monotonic
        self._latest: dict[tuple[str, DistributionQuery], Snapshot] = {}

    async def get(self, account_id: str, query: DistributionQuery) -> Snapshot:
        key = (account_id, query)
        now = self._monotonic()
        latest = self._latest.get(key)
        if latest is not None and now - latest.taken < self._max_age:
            return latest
        snapshot = snapshot_of(await self._compute(account_id, query), now)
        self._latest[key] = snapshot
        return snapshot

    def forget(self, account_id: str, query: DistributionQuery) -> None:
        """Drop the snapshot when one of its streams closes, so closed streams leave nothing
        behind; another stream of the same query just computes it again next period."""
        self._latest.pop((account_id, query), None)
