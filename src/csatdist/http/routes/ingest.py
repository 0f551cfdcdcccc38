"""Ingest: answers posted as JSON or NDJSON, counted once each, durable before the reply."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from csatdist.answers import NDJSON_TYPES, NdjsonLines, decode_body, media_type
from csatdist.errors import TooManyRequests
from csatdist.http.deps import IngestSlot, RuntimeDep, WritePrincipal, read_body
from csatdist.http.responses import json_response
from csatdist.observability import ANSWERS, RATE_LIMITED
from csatdist.service import CheckedAnswers, IngestReport, check_answers, record_checked

INGEST_PATH = "/api/account/{account_id}/csat/answers"

#: Bodies from this size on are decoded and checked as heavy work (csatdist.limits.HeavyTurns):
#: about 500 answers, 2-4 ms of the interpreter; a 10,000-answer batch takes 60-80 ms.
HEAVY_FROM_BYTES = 64 * 1024

router = APIRouter()


@router.post(INGEST_PATH, summary="Ingest CSAT answers (JSON or NDJSON)", response_class=Response)
async def ingest(
    request: Request, principal: WritePrincipal, slot: IngestSlot, rt: RuntimeDep
) -> Response:
    settings = rt.settings
    if rt.answer_rate is not None:  # the account's share of the writer: before any reading
        try:
            rt.answer_rate.admit(principal.account_id)
        except TooManyRequests:
            RATE_LIMITED.labels("answers").inc()
            raise
    content_type = request.headers.get("content-type")
    # An NDJSON body of too many lines (garbage lines, 5 M of them in 10 MB) is refused at the
    # part that passes the limit, not after the whole body has been read and counted.
    lines = NdjsonLines(settings.max_ingest_answers)
    ndjson = media_type(content_type) in NDJSON_TYPES
    body = await read_body(
        request,
        settings.max_ingest_bytes,
        settings.request_body_timeout_seconds,
        lines.add if ndjson else None,
    )

    def check() -> CheckedAnswers:
        decoded = decode_body(
            body,
            content_type,
            settings.max_ingest_answers,
            settings.max_json_values_per_answer,
            lines_counted=ndjson,
        )
        return check_answers(decoded.items, rt.clock(), settings.retention_minutes)

    def work() -> IngestReport:
        if len(body) < HEAVY_FROM_BYTES:
            checked = check()
        else:  # in the account's turn: one tenant's batches and garbage, one at a time
            with rt.heavy_work.holding(principal.account_id):
                checked = check()
        if rt.answer_rate is not None:  # counted before the write waits for the writer
            rt.answer_rate.charge(principal.account_id, len(checked.distinct))
        return record_checked(rt.store, principal.account_id, checked)

    report = await run_in_threadpool(work)
    if report.accepted or report.updated:
        rt.alert_nudges.counts_changed(principal.account_id)  # its rules: evaluated at once
    ANSWERS.labels("accepted").inc(report.accepted)
    ANSWERS.labels("updated").inc(report.updated)
    ANSWERS.labels("duplicate").inc(report.duplicates)
    ANSWERS.labels("rejected").inc(len(report.rejected))
    return json_response(report.as_json())
