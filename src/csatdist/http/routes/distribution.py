"""The distribution: the drop-in query (GET, and POST for old clients) and its push stream."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from csatdist.auth import Principal
from csatdist.conditional import none_match
from csatdist.errors import CsatError, TooManyRequests, Unauthorized
from csatdist.http.deps import AdmittedQuery, ReadPrincipal, RuntimeDep, query_values, runtime
from csatdist.http.openapi import query_parameters
from csatdist.http.responses import PacedResponse
from csatdist.http.runtime import Runtime
from csatdist.observability import IN_FLIGHT, OPEN_STREAMS, RATE_LIMITED, STREAM_EVENTS
from csatdist.push import HEARTBEAT, retry_hint, sse_event
from csatdist.query import DistributionQuery, parse_query
from csatdist.service import memoised_at, memoised_distribution, render_distribution

QUERY_PATH = "/operations/api/account/{account_id}/msgcsatdistribution"
STREAM_PATH = "/api/account/{account_id}/csat/stream"
#: How often an open stream re-checks that its credential is still valid (revoked, expired).
STREAM_RECHECK_SECONDS = 5.0

router = APIRouter()


async def msgcsatdistribution(request: Request, admitted: AdmittedQuery) -> Response:
    rt = runtime(request)
    account_id = admitted.principal.account_id
    query = admitted.query
    IN_FLIGHT.inc()
    try:
        now = rt.clock()
        rendered = None
        fetched = None
        if rt.store.point_reads_inline:  # an unchanged account: no hop to a worker thread
            rendered = memoised_distribution(rt.aggregates, rt.memo, account_id, query, now)
        elif rt.point_reads is not None:  # the same, the version read on the event loop
            known = rt.aggregates.loaded_version(account_id)
            if known is not None:  # with the changes since, which a worker thread then applies
                fetched = await rt.point_reads.account_changes(account_id, known)
                rendered = memoised_at(rt.memo, account_id, known, fetched.version, query, now)
        if rendered is None:
            rendered = await run_in_threadpool(
                functools.partial(
                    render_distribution,
                    max_entries=rt.settings.max_response_entries,
                    admit=admitted.memory.hold,
                    heavy_work=rt.heavy_work,
                    fetched=fetched,
                ),
                rt.aggregates,
                rt.memo,
                account_id,
                query,
                now,
            )
    finally:
        IN_FLIGHT.dec()
    headers = {
        "X-CSAT-Window-Start": str(rendered.window.start_ms),
        "X-CSAT-Window-End": str(rendered.window.end_ms),
        "ETag": rendered.etag,
        # Private (behind credentials) and always revalidated: a 304 costs no body.
        "Cache-Control": "private, no-cache",
    }
    conditional = request.method in ("GET", "HEAD")
    if conditional and none_match(request.headers.get("if-none-match"), rendered.etag):
        return Response(status_code=304, headers=headers)
    if request.method != "HEAD":
        admitted.memory.hold(len(rendered.data))  # held until sent: a slow reader's buffer
    return PacedResponse(rendered.data, media_type="application/json", headers=headers)


for _method in ("GET", "POST"):
    router.add_api_route(
        QUERY_PATH,
        msgcsatdistribution,
        methods=[_method],
        summary="CSAT distribution over the last timeframe minutes"
        + (" (parameters in a JSON body)" if _method == "POST" else ""),
        response_class=Response,
        operation_id=f"{_method.lower()}_distribution",
        openapi_extra={"parameters": query_parameters(with_version=True)},
    )


@router.get(
    STREAM_PATH,
    summary="Server-Sent Events: the distribution whenever it changes",
    response_class=StreamingResponse,
    openapi_extra={"parameters": query_parameters(with_version=False)},
)
async def distribution_stream(
    request: Request, principal: ReadPrincipal, rt: RuntimeDep
) -> Response:
    account_id = principal.account_id
    query = parse_query({"v": "1", **query_values(request)}, rt.settings.max_ids_per_list)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if request.method == "HEAD":  # what a GET would start with; no stream, no slot
        return Response(media_type="text/event-stream", headers=headers)
    try:
        slot = await rt.stream_limiter.acquire(account_id)
    except TooManyRequests as exc:
        RATE_LIMITED.labels("streams-" + exc.scope).inc()
        raise
    events = _stream_events(
        rt, principal, query, slot, request.headers.get("last-event-id", "").strip()
    )
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def _stream_events(
    rt: Runtime, principal: Principal, query: DistributionQuery, slot: str, last_event_id: str
) -> AsyncIterator[bytes]:
    """Events until the client leaves or its credential stops being valid."""
    account_id = principal.account_id
    settings = rt.settings
    sent = last_event_id or None
    OPEN_STREAMS.inc()
    loop = asyncio.get_running_loop()
    quiet_since = checked_at = renewed_at = loop.time()
    try:
        yield retry_hint(2000)
        while True:
            now = loop.time()
            try:
                snapshot = await rt.snapshots.get(account_id, query)
            except CsatError as exc:  # the store is down: say so, keep trying
                STREAM_EVENTS.labels("problem").inc()
                yield sse_event("problem", orjson.dumps(exc.problem()))
                quiet_since = now
            else:
                if snapshot.event_id != sent:
                    STREAM_EVENTS.labels("distribution").inc()
                    yield sse_event("distribution", snapshot.data, snapshot.event_id)
                    sent, quiet_since = snapshot.event_id, now
                elif now - quiet_since >= settings.stream_heartbeat_seconds:
                    STREAM_EVENTS.labels("heartbeat").inc()
                    yield HEARTBEAT
                    quiet_since = now
            if now - checked_at >= STREAM_RECHECK_SECONDS:
                checked_at = now
                if not await run_in_threadpool(rt.authenticator.still_valid, principal):
                    STREAM_EVENTS.labels("unauthorized").inc()
                    problem = Unauthorized("the credential is no longer valid; sign in again")
                    yield sse_event("unauthorized", orjson.dumps(problem.problem()))
                    return
            if now - renewed_at >= settings.stream_heartbeat_seconds:
                renewed_at = now
                await rt.stream_limiter.renew(account_id, slot)
            await asyncio.sleep(settings.stream_period_seconds)
    finally:
        OPEN_STREAMS.dec()
        rt.snapshots.forget(account_id, query)
        await rt.stream_limiter.release(account_id, slot)
