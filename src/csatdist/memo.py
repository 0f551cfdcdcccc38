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
from csatdist.incremental import BodyParts
from csatdist.query import DistributionQuery


@dataclass(frozen=True, slots=True)
class Rendered:
    """A serialised response body, its strong ETag and the window it covers; for a large body,
    the parts its next version is rebuilt from (see :mod:`csatdist.incremental`)."""

    data: bytes
    etag: str
    window: Window
    parts: BodyParts | None = None

    def nbytes(self) -> int:
        """The memory it holds: its body, and its parts."""
        return len(self.data) + (self.parts.nbytes() if self.parts is not None else 0)


#: (account, version of its counters, window, query)
MemoKey = tuple[str, int, Window, DistributionQuery]


#: The part of the memo one account's responses may fill: the others' stay (one account's many
#: large bodies cannot evict everyone else's wallboards).
ACCOUNT_SHARE = 4

_Slot = tuple[str, Window, DistributionQuery]


class ResponseMemo:
    """Least recently used responses, at most ``max_bytes`` of bodies and their parts in all
    (0 = none kept) and a quarter of that per account; a larger response is not kept."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.account_bytes = max_bytes // ACCOUNT_SHARE
        self._entries: OrderedDict[_Slot, tuple[int, Rendered, int]] = OrderedDict()  # + bytes
        # Per account: its slots from least to most recently used, and their bytes.
        self._accounts: dict[str, tuple[OrderedDict[_Slot, None], list[int]]] = {}
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
            self._accounts[account_id][0].move_to_end(slot)
            return found[1]

    def would_keep(self, size: int) -> bool:
        """Whether a response of ``size`` bytes would be kept (not larger than an account's
        share)."""
        return 0 < size <= self.account_bytes

    def latest(self, account_id: str, window: Window, query: DistributionQuery) -> Rendered | None:
        """The response kept for this query and window at whatever version: what a render of
        a newer version starts from."""
        with self._lock:
            found = self._entries.get((account_id, window, query))
            return None if found is None else found[1]

    def put(self, key: MemoKey, rendered: Rendered) -> None:
        account_id, version, window, query = key
        slot = (account_id, window, query)
        size = rendered.nbytes()
        with self._lock:
            self._remove(slot)
            if size > self.account_bytes:
                return
            self._entries[slot] = (version, rendered, size)
            slots, used = self._accounts.setdefault(account_id, (OrderedDict(), [0]))
            slots[slot] = None
            used[0] += size
            self._bytes += size
            while used[0] > self.account_bytes:
                self._remove(next(iter(slots)))
            while self._bytes > self.max_bytes:
                self._remove(next(iter(self._entries)))

    def _remove(self, slot: _Slot) -> None:
        found = self._entries.pop(slot, None)
        if found is None:
            return
        size = found[2]
        self._bytes -= size
        slots, used = self._accounts[slot[0]]
        del slots[slot]
        used[0] -= size
        if not slots:
            del self._accounts[slot[0]]

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
