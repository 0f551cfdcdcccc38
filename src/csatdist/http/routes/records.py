"""Answer records: the listing (JSON pages), the export (every matching record as CSV or NDJSON,
streamed) and erasure (EXTENSIONS.md section 6)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from csatdist.answers import MAX_ID_LENGTH, NDJSON_TYPES, media_type
from csatdist.errors import InvalidParam, InvalidRequest, TooManyRequests
from csatdist.http.deps import (
    IngestSlot,
    ReadPrincipal,
    RuntimeDep,
    WritePrincipal,
    json_body,
    runtime,
)
from csatdist.http.openapi import listing_parameters
from csatdist.http.responses import json_response
from csatdist.listing import (
    Listing,
    csv_header,
    csv_lines,
    ndjson_lines,
    page_json,
    parse_listing,
)
from csatdist.observability import RATE_LIMITED
from csatdist.store import AnswerRecord

ANSWERS_PATH = "/api/account/{account_id}/csat/answers"
ERASURES_PATH = "/api/account/{account_id}/csat/erasures"
LISTING_PARAMS = ("timeframe", "from", "to", "skillIds", "agentIds", "scores", "limit", "cursor")
#: Records read per store round trip while an export streams: memory stays bounded by this.
EXPORT_PAGE = 1000
EXPORT_TYPES = {"text/csv": "csv", **dict.fromkeys(NDJSON_TYPES, "ndjson")}

router = APIRouter()


def requested_format(accept: str | None) -> str:
    """``csv`` or ``ndjson`` for an export, ``json`` for a page: the first known type the
    ``Accept`` header names."""
    for part in (accept or "").split(","):
        kind = EXPORT_TYPES.get(media_type(part))
        if kind is not None:
            return kind
    return "json"


async def listing_slot(request: Request, principal: ReadPrincipal) -> AsyncIterator[str]:
    """The negotiated format, holding a slot of its kind of work until the reply has been
    sent: a page counts as a query, an export as an export (which streams for long)."""
    rt = runtime(request)
    head = request.method == "HEAD"  # never an export's work for a reply without a body
    kind = "json" if head else requested_format(request.headers.get("accept"))
    limiter = rt.limiter if kind == "json" else rt.export_limiter
    account_id = principal.account_id
    try:
        lease = await limiter.acquire(account_id)
    except TooManyRequests as exc:
        RATE_LIMITED.labels(("" if kind == "json" else "exports-") + exc.scope).inc()
        raise
    try:
        yield kind
    finally:
        await limiter.release(account_id, lease)


ListingFormat = Annotated[str, Depends(listing_slot)]


@router.get(
    ANSWERS_PATH,
    summary="The answer records behind a distribution (JSON, CSV, NDJSON)",
    response_class=Response,
    openapi_extra={"parameters": listing_parameters()},
)
async def list_answers(
    request: Request, principal: ReadPrincipal, kind: ListingFormat, rt: RuntimeDep
) -> Response:
    values = {n: request.query_params.get(n) for n in LISTING_PARAMS}
    listing = parse_listing(
        values,
        now_ms=rt.clock(),
        retention_minutes=rt.settings.retention_minutes,
        max_ids=rt.settings.max_ids_per_list,
    )
    account_id = principal.account_id
    if kind == "json":
        page = await run_in_threadpool(rt.store.list_answers, listing.page(account_id))
        return json_response(page_json(page, listing.limit))
    render: Callable[[list[AnswerRecord]], bytes] = csv_lines if kind == "csv" else ndjson_lines
    media = "text/csv; charset=utf-8" if kind == "csv" else "application/x-ndjson"
    headers = {"Cache-Control": "no-store"}
    if kind == "csv":
        headers["Content-Disposition"] = f'attachment; filename="csat-answers-{account_id}.csv"'
    return StreamingResponse(
        _export(rt.store.list_answers, account_id, listing, render, kind == "csv"),
        media_type=media,
        headers=headers,
    )


async def _export(
    read: Callable[..., list[AnswerRecord]],
    account_id: str,
    listing: Listing,
    render: Callable[[list[AnswerRecord]], bytes],
    header: bool,
) -> AsyncIterator[bytes]:
    """Every matching record, a page at a time (each page sent before the next is read)."""
    if header:
        yield csv_header()
    after = listing.after
    bounded = Listing(
        listing.start_ms,
        listing.end_ms,
        listing.skills,
        listing.agents,
        listing.scores,
        EXPORT_PAGE,
        None,
    )
    while True:
        page = await run_in_threadpool(read, bounded.page(account_id, after))
        if page:
            yield render(page)
        if len(page) < EXPORT_PAGE:
            return
        after = (page[-1].time_ms, page[-1].answer_id)


@router.post(
    ERASURES_PATH, summary="Erase answer records and their counts", response_class=Response
)
async def erase_answers(
    request: Request, principal: WritePrincipal, slot: IngestSlot, rt: RuntimeDep
) -> Response:
    document = await json_body(request, rt, rt.settings.max_ingest_bytes)
    ids = document.get("ids") if isinstance(document, dict) else None
    limit = rt.settings.max_ingest_answers
    if not isinstance(ids, list):
        raise InvalidRequest.one("ids", 'is required: {"ids": ["answer id", …]}')
    if len(ids) > limit:
        raise InvalidRequest.one("ids", f"too many ids: {len(ids)}, at most {limit}")
    problems = [
        InvalidParam(
            f"ids[{n}]", f"must be an answer id: a string of 1 to {MAX_ID_LENGTH} characters"
        )
        for n, answer_id in enumerate(ids)
        if not isinstance(answer_id, str)
        or not 1 <= len(answer_id) <= MAX_ID_LENGTH
        or "\x00" in answer_id
    ]
    if problems:
        raise InvalidRequest(problems[:20])
    outcome = await run_in_threadpool(rt.store.erase_answers, principal.account_id, ids, rt.clock())
    return json_response({"erased": len(outcome.erased), "unknown": outcome.unknown})
