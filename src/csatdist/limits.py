"""The concurrency limit: at most N queries in flight per account, and a global cap.

Excess requests are refused at once (429, ``Retry-After: 1``) rather than queued, as the original
API does. Slots are released in ``finally`` so errors and client disconnects never leak one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from csatdist.errors import LimitPolicy, TooManyRequests


class ConcurrencyLimiter:
    def __init__(self, per_account: int, global_limit: int) -> None:
        if per_account < 1 or global_limit < 1:
            raise ValueError("concurrency limits must be at least 1")
        self.per_account = per_account
        self.global_limit = global_limit
        self._in_flight: dict[str, int] = {}
        self._total = 0
        self._lock = threading.Lock()

    @property
    def policies(self) -> list[LimitPolicy]:
        return [LimitPolicy("account", self.per_account), LimitPolicy("global", self.global_limit)]

    @property
    def in_flight(self) -> int:
        return self._total

    def in_flight_for(self, account_id: str) -> int:
        return self._in_flight.get(account_id, 0)

    def acquire(self, account_id: str) -> None:
        with self._lock:
            held = self._in_flight.get(account_id, 0)
            if held >= self.per_account:
                raise TooManyRequests(
                    f"this account already has {held} queries in flight "
                    f"(limit {self.per_account}); retry shortly",
                    self.policies,
                )
            if self._total >= self.global_limit:
                raise TooManyRequests(
                    f"the server has {self._total} queries in flight "
                    f"(limit {self.global_limit}); retry shortly",
                    self.policies,
                    scope="global",
                )
            self._in_flight[account_id] = held + 1
            self._total += 1

    def release(self, account_id: str) -> None:
        with self._lock:
            held = self._in_flight.get(account_id, 0) - 1
            if held > 0:
                self._in_flight[account_id] = held
            else:
                self._in_flight.pop(account_id, None)
            self._total -= 1

    @contextmanager
    def slot(self, account_id: str) -> Iterator[None]:
        self.acquire(account_id)
        try:
            yield
        finally:
            self.release(account_id)
