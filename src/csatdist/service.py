"""The service functions every adapter (HTTP, CLI, stream consumer) calls.

They join the pure core to a store; the clock is always passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from csatdist.aggregates import (
    HEAVY_FROM_ROWS,
    AccountAggregate,
    AggregateCache,
    CountsSource,
    TooManyRows,
)
from csatdist.answers import AcceptanceWindow, Answer, Rejection, validate_all
from csatdist.buckets import Window, window_for
from csatdist.conditional import etag_for
from csatdist.distribution import (
    CountTable,
    assemble,
    entries_of_rows,
    grouping_for,
    response_entries,
)
from csatdist.errors import InvalidParam, InvalidRequest
from csatdist.incremental import render_body
from csatdist.limits import HeavyTurns
from csatdist.memo import MemoKey, Rendered, ResponseMemo
from csatdist.query import DistributionQuery
from csatdist.records import latest_versions
from csatdist.store import CountsRequest, FetchedChanges, Store


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


#: Bytes a metrics object of a response takes at the peak of building its body: its dict, its
#: JSON in the pieces and in the body joined from them (measured with tracemalloc: 840 for a
#: 47,528-entry interval body of ``skillIds=all&agentIds=all``, 3.4 times its 250 bytes of
#: JSON; it was 600 when orjson's buffers were right-sized, see csatdist.slicedjson).
BYTES_PER_ENTRY = 900
#: The same when the body's parts are built too (measured: 1,039 at the peak of 240,000).
BYTES_PER_ENTRY_WITH_PARTS = 1_100
#: Bodies of this many metrics objects or more (about 1 MB of JSON) are heavy work, one piece
#: at a time in the process, accounts in turn (:class:`~csatdist.limits.HeavyTurns`): the time
#: they hold the GIL is shared with every other account's requests, so one account's many
#: large queries at once would slow every tenant's small ones. They are encoded in slices too,
#: so that no single call holds the GIL for long.
ONE_AT_A_TIME_FROM_ENTRIES = 5_000
#: Bytes a metrics object takes in the response memory with its parts: its JSON (~200 bytes)
#: in the body, in its skill's or the agents' text, and once a change cut that text, in a piece.
KEPT_BYTES_PER_ENTRY = 800


def render_distribution(
    cache: AggregateCache,
    memo: ResponseMemo,
    account_id: str,
    query: DistributionQuery,
    now_ms: int,
    *,
    max_entries: int | None = None,
    admit: Callable[[int], None] | None = None,
    heavy_work: HeavyTurns | None = None,
    fetched: FetchedChanges | None = None,
) -> Rendered:
    """The serialised response body and its ETag, reused from ``memo`` while the account's
    counters, the window and the query are all unchanged; after a change, a large body is
    rebuilt from the entries the change touched (:mod:`csatdist.incremental`).

    Before a body is built, its size is known from the sums: over ``max_entries`` metrics
    objects it is refused (400), and ``admit`` is given the bytes building it will take (it
    raises to refuse, e.g. 429 when the memory budget is spent). With ``heavy_work``, a
    body of :data:`ONE_AT_A_TIME_FROM_ENTRIES` or more is built in the account's turn of the
    process's heavy work (after the account's other large body being built, which is reused
    if it was the same), and so are sums per interval and group of
    :data:`~csatdist.aggregates.HEAVY_FROM_ROWS` counter rows or more: the turn is waited
    for without the account's lock, which the account's small queries need meanwhile, and
    the sums are made from the counters as they are then. ``fetched``: the account's
    changes read after the request arrived (:meth:`AggregateCache.current`)."""
    window = window_for(now_ms, query.timeframe)
    request = _counts_request(account_id, query, window)
    rows_allowed = _rows_allowed(query, window, max_entries)
    with cache.current(account_id, window.end_ms, fetched) as aggregate:
        key = (account_id, aggregate.version, window, query)
        found = memo.get(key)
        if found is not None:
            return found
        turn = None  # the heavy work to take a turn of for the sums, if they are heavy
        if heavy_work is not None and aggregate.grouped_rows(request) >= HEAVY_FROM_ROWS:
            turn = heavy_work
        else:
            table = _table(aggregate, query, request, rows_allowed, max_entries)
    if turn is not None:  # the turn waited for without the account's lock, then the sums
        with turn.holding(account_id), cache.current(account_id, window.end_ms) as again:
            key = (account_id, again.version, window, query)
            found = memo.get(key)
            if found is not None:
                return found
            table = _table(again, query, request, rows_allowed, max_entries)
    entries = response_entries(query, window, table)
    if max_entries is not None and entries > max_entries:
        raise _too_many_entries(query, entries, max_entries)
    # Parts cost memory and time: built only for a body the memory will keep to start from.
    with_parts = memo.would_keep(entries * KEPT_BYTES_PER_ENTRY)
    if admit is not None:
        admit(entries * (BYTES_PER_ENTRY_WITH_PARTS if with_parts else BYTES_PER_ENTRY))
    large = entries >= ONE_AT_A_TIME_FROM_ENTRIES
    if heavy_work is None or not large:
        return _rendered(memo, key, table, with_parts, large)
    with heavy_work.holding(account_id):
        return memo.get(key) or _rendered(memo, key, table, with_parts, large)


def _table(
    aggregate: AccountAggregate,
    query: DistributionQuery,
    request: CountsRequest,
    rows_allowed: int | None,
    max_entries: int | None,
) -> CountTable:
    """The sums behind ``query``; a 400 when they would make a body over ``max_entries``."""
    try:
        return aggregate.table(request, max_rows=rows_allowed)
    except TooManyRows as too_many:
        entries = entries_of_rows(query, request.window, too_many.rows)
        raise _too_many_entries(query, entries, max_entries or 0) from None


def _rendered(
    memo: ResponseMemo, key: MemoKey, table: CountTable, with_parts: bool, large: bool
) -> Rendered:
    """The body for ``key`` built (from the last parts of its query, if kept) and kept; a
    ``large`` one encoded in slices (:mod:`csatdist.slicedjson`)."""
    account_id, _, window, query = key
    before = memo.latest(account_id, window, query) if with_parts else None
    data, parts = render_body(
        query, window, table, before.parts if before else None, with_parts=with_parts, sliced=large
    )
    rendered = Rendered(data, etag_for(data), window, parts)
    memo.put(key, rendered)
    return rendered


def _rows_allowed(query: DistributionQuery, window: Window, max_entries: int | None) -> int | None:
    """The most sums' rows a body within ``max_entries`` metrics objects can come from."""
    if max_entries is None:
        return None
    both = query.skills is not None and query.agents is not None
    return max(0, max_entries - entries_of_rows(query, window, 0)) // (2 if both else 1)


def _too_many_entries(query: DistributionQuery, entries: int, limit: int) -> InvalidRequest:
    """A 400 naming the parameters that make the body this large."""
    reason = (
        f"the response would hold about {entries:,} metrics objects, more than the limit of "
        f"{limit:,}"
    )
    names = [
        name
        for name, given in (
            ("interval", query.interval),
            ("skillIds", query.skills),
            ("agentIds", query.agents),
        )
        if given is not None
    ]
    advice = {
        "interval": "use a larger interval or none",
        "skillIds": "list fewer skills than all",
        "agentIds": "list fewer agents than all",
    }
    return InvalidRequest([InvalidParam(name, f"{reason}: {advice[name]}") for name in names])


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
    if known is None:
        return None
    return memoised_at(
        memo, account_id, known, cache.store.account_version(account_id), query, now_ms
    )


def memoised_at(
    memo: ResponseMemo,
    account_id: str,
    known: int,
    version: int,
    query: DistributionQuery,
    now_ms: int,
) -> Rendered | None:
    """The memoised response for ``query`` when the version the account's aggregate holds
    (``known``, read first) is the store's current ``version`` (read after the request
    arrived): then a response rendered at that version holds every write acknowledged before
    the request. None otherwise, or when no such response is kept."""
    if version != known:
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
    #: Corrections: answers that replaced an earlier version of their id.
    updated: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "updated": self.updated,
            "duplicates": self.duplicates,
            "rejected": [r.as_json() for r in self.rejected],
        }

    def merge(self, other: IngestReport) -> None:
        self.accepted += other.accepted
        self.updated += other.updated
        self.duplicates += other.duplicates
        self.rejected.extend(other.rejected)


def ingest_answers(
    store: Store,
    account_id: str,
    items: Iterable[tuple[int, object]],
    now_ms: int,
    retention_minutes: int,
) -> IngestReport:
    """Validate decoded answers, then record and count them in one durable transaction.

    Of one id repeated inside the request, the latest ``updatedAt`` counts (the first of equal
    ones) and the others are duplicates; an id the account already has is a correction when
    this version is later, a duplicate otherwise; an erased id is rejected as ``erased``.
    """
    return record_checked(store, account_id, check_answers(items, now_ms, retention_minutes))


@dataclass(slots=True)
class CheckedAnswers:
    """Decoded answers validated: the distinct ones to record, how many repeated an id of the
    same request (duplicates), the rejected ones."""

    distinct: list[Answer]
    repeated: int
    rejected: list[Rejection]


def check_answers(
    items: Iterable[tuple[int, object]], now_ms: int, retention_minutes: int
) -> CheckedAnswers:
    """The first half of :func:`ingest_answers`: no I/O, all CPU (the HTTP route runs it in
    the account's turn of heavy work)."""
    valid, rejected = validate_all(items, AcceptanceWindow(now_ms, retention_minutes))
    distinct, repeated = latest_versions(valid)
    return CheckedAnswers(distinct, repeated, rejected)


def record_checked(store: Store, account_id: str, checked: CheckedAnswers) -> IngestReport:
    """The second half of :func:`ingest_answers`: the write, and the report."""
    outcome = store.record_answers(account_id, checked.distinct)
    rejected = sorted([*checked.rejected, *outcome.refused], key=lambda r: r.index)
    return IngestReport(
        accepted=outcome.accepted,
        duplicates=outcome.duplicates + checked.repeated,
        rejected=rejected,
        updated=outcome.updated,
    )
