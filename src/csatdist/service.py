"""The service functions every adapter (HTTP, CLI, stream consumer) calls.

They join the pure core to a store; the clock is always passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from csatdist.aggregates import AggregateCache, CountsSource
from csatdist.answers import AcceptanceWindow, Answer, Rejection, validate_all
from csatdist.buckets import Window, window_for
from csatdist.conditional import etag_for
from csatdist.distribution import assemble, assemble_table, grouping_for
from csatdist.memo import Rendered, ResponseMemo
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
    rows = source.counts(_counts_request(account_id, query, window))
    return QueryResult(body=assemble(query, window, rows), window=window)


def render_distribution(
    cache: AggregateCache,
    memo: ResponseMemo,
    account_id: str,
    query: DistributionQuery,
    now_ms: int,
) -> Rendered:
    """The serialised response body and its ETag, reused from ``memo`` while the account's
    counters, the window and the query are all unchanged."""
    window = window_for(now_ms, query.timeframe)
    with cache.current(account_id, window.end_ms) as aggregate:
        key = (account_id, aggregate.version, window, query)
        found = memo.get(key)
        if found is not None:
            return found
        table = aggregate.table(_counts_request(account_id, query, window))
    data = orjson.dumps(assemble_table(query, window, table))
    rendered = Rendered(data, etag_for(data), window)
    memo.put(key, rendered)
    return rendered


def memoised_distribution(
    cache: AggregateCache,
    memo: ResponseMemo,
    account_id: str,
    query: DistributionQuery,
    now_ms: int,
) -> Rendered | None:
    """The response :func:`render_distribution` would give, when it is in ``memo`` and the
    account has not changed since (one point read of its version); otherwise None."""
    known = cache.loaded_version(account_id)
    if known is None or cache.store.account_version(account_id) != known:
        return None
    return memo.get((account_id, known, window_for(now_ms, query.timeframe), query))


def _counts_request(account_id: str, query: DistributionQuery, window: Window) -> CountsRequest:
    return CountsRequest(
        account_id=account_id,
        window=window,
        skills=query.skills,
        agents=query.agents,
        grouping=grouping_for(query),
        interval_minutes=query.interval,
    )


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
