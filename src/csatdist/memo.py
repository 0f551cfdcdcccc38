"""Rendered query responses, reused while the account's counters have not changed.

A wall of dashboards polls the same few queries; between two changes of an account every one of
them would rebuild the same body (milliseconds for thousands of skill and agent entries). A
response is kept under the account, the window and the query, with the version of the account's
counters it was computed from (see :class:`csatdist.aggregates.AggregateCache`); it is reused
only for that same version, so a reused body is byte for byte the one a fresh computation would
give: never stale, never another account's. Versions only move forward, so a newer response
replaces the older one of the same query instead of sitting beside it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from csatdist.buckets import Window
from csatdist.query import DistributionQuery


@dataclass(frozen=True, slots=True)
class Rendered:
    """A serialised response body, its strong ETag and the window it covers."""

    data: bytes
    etag: str
    window: Window


#: (account, version of its counters, window, query)
MemoKey = tuple[str, int, Window, DistributionQuery]


class ResponseMemo:
    """Least recently used responses, at most ``max_bytes`` of bodies in all (0 = none kept)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, Window, DistributionQuery], tuple[int, Rendered]]
        self._entries = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: MemoKey) -> Rendered | None:
        account_id, version, window, query = key
        slot = (account_id, window, query)
        with self._lock:
            found = self._entries.get(slot)
            if found is None or found[0] != version:
                return None
            self._entries.move_to_end(slot)
            return found[1]

    def put(self, key: MemoKey, rendered: Rendered) -> None:
        account_id, version, window, query = key
        slot = (account_id, window, query)
        size = len(rendered.data)
        with self._lock:
            previous = self._entries.pop(slot, None)
            if previous is not None:
                self._bytes -= len(previous[1].data)
            if size > self.max_bytes:
                return
            self._entries[slot] = (version, rendered)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= len(evicted.data)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
