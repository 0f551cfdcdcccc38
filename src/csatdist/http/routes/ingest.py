"""Ingest: answers posted as JSON or NDJSON, counted once each, durable before the reply."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from csatdist.answers import decode_body
from csatdist.http.deps import IngestSlot, RuntimeDep, WritePrincipal, read_body
from csatdist.http.responses import json_response
from csatdist.observability import ANSWERS
from csatdist.service import IngestReport, ingest_answers

INGEST_PATH = "/api/account/{account_id}/csat/answers"

router = APIRouter()


@router.post(INGEST_PATH, summary="Ingest CSAT answers (JSON or NDJSON)", response_class=Response)
async def ingest(
    request: Request, principal: WritePrincipal, slot: IngestSlot, rt: RuntimeDep
) -> Response:
    settings = rt.settings
    body = await read_body(
        request, settings.max_ingest_bytes, settings.request_body_timeout_seconds
    )
    content_type = request.headers.get("content-type")

    def work() -> IngestReport:
        decoded = decode_body(
            body,
            content_type,
            settings.max_ingest_answers,
            settings.max_json_values_per_answer,
        )
        return ingest_answers(
            rt.store, principal.account_id, decoded.items, rt.clock(), settings.retention_minutes
        )

    report = await run_in_threadpool(work)
    if report.accepted or report.updated:
        rt.alert_nudges.counts_changed(principal.account_id)  # its rules: evaluated at once
    ANSWERS.labels("accepted").inc(report.accepted)
    ANSWERS.labels("updated").inc(report.updated)
    ANSWERS.labels("duplicate").inc(report.duplicates)
    ANSWERS.labels("rejected").inc(len(report.rejected))
    return json_response(report.as_json())
