"""Reports over any range: calendar periods in any time zone, with the previous period for
comparison (EXTENSIONS.md section 7), as JSON or CSV."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from csatdist.http.deps import QuerySlot, ReadPrincipal, RuntimeDep
from csatdist.http.openapi import report_parameters
from csatdist.http.responses import PacedResponse
from csatdist.report import build_report, parse_report_query, report_body, report_csv

REPORT_PATH = "/api/account/{account_id}/csat/report"
REPORT_PARAMS = ("from", "to", "tz", "granularity", "skillIds", "agentIds", "compare")

router = APIRouter()


def wants_csv(accept: str | None) -> bool:
    return any(part.split(";")[0].strip() == "text/csv" for part in (accept or "").split(","))


@router.get(
    REPORT_PATH,
    summary="CSAT over any range, by calendar period in a time zone (JSON or CSV)",
    response_class=Response,
    openapi_extra={"parameters": report_parameters()},
)
async def report(
    request: Request, principal: ReadPrincipal, slot: QuerySlot, rt: RuntimeDep
) -> Response:
    """A report counts as a query: it holds one of the account's query slots until sent. The
    CSV carries the directory's names beside the ids; the JSON body, ids only (section 7)."""
    values = {n: v for n in REPORT_PARAMS if (v := request.query_params.get(n)) is not None}
    query = parse_report_query(
        values,
        now_ms=rt.clock(),
        history_days=rt.settings.history_days,
        max_ids=rt.settings.max_ids_per_list,
    )
    account_id = principal.account_id
    built = await run_in_threadpool(
        functools.partial(build_report, account_id, query, rt.store.report_sums)
    )
    if wants_csv(request.headers.get("accept")):
        names = await run_in_threadpool(rt.store.directory, account_id)
        rows = report_csv(built, skill_names=names.skills, agent_names=names.agents)
        return StreamingResponse(
            _encoded(rows),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="csat-report-{account_id}.csv"',
                "Cache-Control": "no-store",
            },
        )
    return PacedResponse(
        orjson.dumps(report_body(built)),
        media_type="application/json",
        headers={"Cache-Control": "private, no-cache"},
    )


async def _encoded(chunks: Iterator[str]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk.encode()
