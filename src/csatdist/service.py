"""The service functions every adapter (HTTP, CLI, stream consumer) calls.

They join the pure core to a store; the clock is always passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from csatdist.aggregates import CountsSource
from csatdist.answers import AcceptanceWindow, Answer, Rejection, validate_all
from csatdist.buckets import Window, window_for
from csatdist.distribution import assemble, grouping_for
from csatdist.query import DistributionQuery
from csatdist.store import CountsRequest, Store


@dataclass(frozen=True, slots=True)
class QueryResult:
    body: dict[str, Any]
    window: Window


def query_distribution(
    source: CountsSource, account_id: str, query: DistributionQuery, now_ms: int
) -> QueryResult:
    """The response body for a query; ``source`` is a store or an :class:`AggregateCache`."""
    window = window_for(now_ms, query.timeframe)
    rows = source.counts(
        CountsRequest(
            account_id=account_id,
            window=window,
            skills=query.skills,
            agents=query.agents,
            grouping=grouping_for(query),
            interval_minutes=query.interval,
        )
    )
    return QueryResult(body=assemble(query, window, rows), window=window)


@dataclass(slots=True)
class IngestReport:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [r.as_json() for r in self.rejected],
        }

    def merge(self, other: IngestReport) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejected.extend(other.rejected)


def ingest_answers(
    store: Store,
    account_id: str,
    items: Iterable[tuple[int, object]],
    now_ms: int,
    retention_minutes: int,
) -> IngestReport:
    """Validate decoded answers and count the new ones in one durable transaction.

    An id repeated inside the request is counted once (the first occurrence); an id the account
    already has is a duplicate.
    """
    valid, rejected = validate_all(items, AcceptanceWindow(now_ms, retention_minutes))
    distinct: dict[str, Answer] = {}
    for answer in valid:
        distinct.setdefault(answer.id, answer)
    new = store.record_answers(account_id, list(distinct.values()))
    return IngestReport(accepted=new, duplicates=len(valid) - new, rejected=rejected)
