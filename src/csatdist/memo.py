"""Rendered query responses, reused while the account's counters have not changed.

A wall of dashboards polls the same few queries; between two changes of an account every one of
them would rebuild the same body (milliseconds for thousands of skill and agent entries). A
response is keyed by the account, the version of its counters the aggregate was caught up to
(see :class:`csatdist.aggregates.AggregateCache`), the window and the query, so a reused body is
byte for byte the one a fresh computation would give: never stale, never another account's.
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


MemoKey = tuple[str, int, Window, DistributionQuery]


class ResponseMemo:
    """Least recently used responses, at most ``max_bytes`` of bodies in all (0 = none kept)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[MemoKey, Rendered] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: MemoKey) -> Rendered | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: MemoKey, rendered: Rendered) -> None:
        size = len(rendered.data)
        if size > self.max_bytes:
            return
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= len(previous.data)
            self._entries[key] = rendered
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted.data)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
