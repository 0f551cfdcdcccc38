"""FastAPI dependencies the routes declare: the runtime, the caller's credentials with the scope a
route needs (``ReadPrincipal``, ``WritePrincipal``), a distribution query admitted under the
concurrency limit (``AdmittedQuery``), and request bodies read within their limits.

A route names what it needs and FastAPI resolves it before the route runs: a request without the
right credentials never reaches a route's own code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated

import orjson
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from csatdist.auth import Principal, SignedRequest
from csatdist.errors import InvalidRequest, PayloadTooLarge, RequestTimeout, TooManyRequests
from csatdist.http.responses import external_origin
from csatdist.http.runtime import Runtime
from csatdist.limits import LARGE_RESPONSE_BYTES, Reservation
from csatdist.observability import RATE_LIMITED
from csatdist.query import DistributionQuery, parse_query
from csatdist.settings import Settings

#: The distribution's parameters, from the query string or (POST) a JSON body.
QUERY_PARAMS = ("v", "timeframe", "skillIds", "agentIds", "interval")


def runtime(request: Request) -> Runtime:
    """The server's runtime. Dependencies call this directly rather than depending on
    :data:`RuntimeDep`: every dependency FastAPI solves costs about 0.01 ms a request."""
    rt: Runtime = request.app.state.runtime
    return rt


async def _runtime_dependency(request: Request) -> Runtime:
    return runtime(request)


#: The runtime, for routes (an async dependency: a plain one would run on a worker thread).
RuntimeDep = Annotated[Runtime, Depends(_runtime_dependency)]


# credentials ---------------------------------------------------------------------------------


def _signed_request(request: Request, settings: Settings) -> SignedRequest:
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    uri = external_origin(request, settings) + raw_path.decode("latin-1")
    if query:
        uri += "?" + query.decode("latin-1")
    return SignedRequest(request.method, uri, dict(request.headers.items()))


async def authenticate(request: Request, rt: Runtime, account_id: str, scope: str) -> Principal:
    """The caller, with ``scope`` for ``account_id``, or :class:`Unauthorized` (401)."""
    authorization = request.headers.get("authorization")
    # A bearer key or session read moments ago, or (SQLite) read now with one point read: no
    # hop to a worker thread.
    decided = rt.authenticator.authenticate_cached(
        account_id, scope, authorization, store_reads=rt.store.point_reads_inline
    )
    if decided is not None:
        return decided
    if rt.point_reads is not None:  # PostgreSQL: the key or session read on the event loop
        decided = await rt.authenticator.authenticate_point_read(
            account_id, scope, authorization, rt.point_reads
        )
        if decided is not None:
            return decided
    return await run_in_threadpool(
        rt.authenticator.authenticate,
        account_id,
        scope,
        authorization,
        lambda: _signed_request(request, rt.settings),
    )


async def read_principal(request: Request, account_id: str) -> Principal:
    return await authenticate(request, runtime(request), account_id, "read")


async def write_principal(request: Request, account_id: str) -> Principal:
    return await authenticate(request, runtime(request), account_id, "write")


ReadPrincipal = Annotated[Principal, Depends(read_principal)]
WritePrincipal = Annotated[Principal, Depends(write_principal)]


# limits --------------------------------------------------------------------------------------


async def ingest_slot(request: Request, principal: WritePrincipal) -> AsyncIterator[None]:
    """One of the account's ingest slots (429 when none is free), taken after the credentials
    and before the body is read, and held until the reply has been sent: the bodies in memory
    and the writer's queue are bounded per account and in all."""
    rt = runtime(request)
    account_id = principal.account_id
    try:
        lease = await rt.ingest_limiter.acquire(account_id)
    except TooManyRequests as exc:
        RATE_LIMITED.labels("ingest-" + exc.scope).inc()
        raise
    try:
        yield
    finally:
        await rt.ingest_limiter.release(account_id, lease)


IngestSlot = Annotated[None, Depends(ingest_slot)]


async def _query_lease(rt: Runtime, account_id: str) -> str:
    """One of the account's query slots, or a 429 after the refusal delay."""
    try:
        return await rt.limiter.acquire(account_id)
    except TooManyRequests as exc:
        RATE_LIMITED.labels(exc.scope).inc()
        # Held back (a socket, no CPU): a refusal costs the event loop every tenant shares
        # about a millisecond, and a hostile client retries at once (bench/abuse.py: some 250
        # to 400 refusals a second, most of the loop's time under attack).
        await asyncio.sleep(min(exc.retry_after, rt.settings.query_refusal_delay_seconds))
        raise


async def query_slot(request: Request, principal: ReadPrincipal) -> AsyncIterator[None]:
    """One of the account's query slots for a read that is not the distribution (a report, a
    page of records), held until the reply has been sent."""
    rt = runtime(request)
    account_id = principal.account_id
    lease = await _query_lease(rt, account_id)
    try:
        yield
    finally:
        await rt.limiter.release(account_id, lease)


QuerySlot = Annotated[None, Depends(query_slot)]


# bodies --------------------------------------------------------------------------------------


async def read_body(
    request: Request,
    limit: int,
    timeout_seconds: float,
    inspect: Callable[[bytes], None] | None = None,
) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes, and
    with 408 when it does not arrive within ``timeout_seconds`` (a slow client holds a worker).
    ``inspect`` sees each part as it arrives, and may refuse the body by raising."""
    declared = request.headers.get("content-length")
    too_large = PayloadTooLarge(f"the request body exceeds {limit} bytes")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(timeout_seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                if inspect is not None:
                    inspect(chunk)
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {timeout_seconds:g} s"
        ) from None
    return b"".join(chunks)


#: What :func:`json_body` gives for an empty (or all-blank) body.
NO_BODY = object()


async def json_body(request: Request, rt: Runtime, limit: int) -> object:
    """A JSON body, decoded (:data:`NO_BODY` when it is empty), read within ``limit`` bytes."""
    body = await read_body(request, limit, rt.settings.request_body_timeout_seconds)
    if not body.strip():
        return NO_BODY
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest.one("body", f"is not valid JSON: {exc}") from None


# the distribution's parameters and slot ------------------------------------------------------


def query_values(request: Request) -> dict[str, object]:
    """Known parameters from the query string; repeated keys are joined as one list."""
    values: dict[str, object] = {}
    for name in QUERY_PARAMS:
        given = request.query_params.getlist(name)
        if given:
            values[name] = ",".join(given)
    return values


async def distribution_query(request: Request, rt: Runtime) -> DistributionQuery:
    """The query of a distribution request: query string, and for POST (old clients) a JSON
    body whose null values mean absent. Parsed by :func:`parse_query` alone: declaring the
    parameters to FastAPI would validate each one a second time on every request."""
    values = query_values(request)
    if request.method == "POST":
        document = await json_body(request, rt, rt.settings.max_ingest_bytes)
        if document is not NO_BODY:
            if not isinstance(document, dict):
                raise InvalidRequest.one("body", "must be a JSON object of query parameters")
            values.update({n: document[n] for n in QUERY_PARAMS if document.get(n) is not None})
    return parse_query(values, rt.settings.max_ids_per_list)


@dataclass(frozen=True, slots=True)
class Admitted:
    """A distribution request let in: its caller (read scope), its parsed query, one of the
    account's concurrent query slots, and the memory its response may hold."""

    principal: Principal
    query: DistributionQuery
    memory: Reservation


async def admit_query(request: Request, account_id: str) -> AsyncIterator[Admitted]:
    """Authenticate (401), parse (400), then take a slot (429, ``Retry-After``), in that order;
    the slot is held until the response has been sent or abandoned, so a client slow to read a
    large body still counts against its account's limit.

    One dependency rather than three chained ones: FastAPI solves each dependency's own
    dependencies again per use, which cost 0.05 ms a request here, a third of the time of a
    small query."""
    rt = runtime(request)
    principal = await authenticate(request, rt, account_id, "read")
    query = await distribution_query(request, rt)
    lease = await _query_lease(rt, account_id)
    memory = Reservation(rt.response_budget, account_id, LARGE_RESPONSE_BYTES)
    try:
        yield Admitted(principal, query, memory)
    finally:
        memory.release()
        await rt.limiter.release(account_id, lease)


AdmittedQuery = Annotated[Admitted, Depends(admit_query)]
