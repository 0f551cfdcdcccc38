"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from csatdist import __version__
from csatdist.http.deps import RuntimeDep
from csatdist.http.responses import json_response
from csatdist.observability import metrics_exposition

router = APIRouter()


@router.get("/healthz", summary="Liveness")
async def healthz() -> Response:
    return json_response({"status": "ok", "version": __version__})


@router.get("/readyz", summary="Readiness: the store answers and the counters are warm")
async def readyz(rt: RuntimeDep) -> Response:
    await run_in_threadpool(rt.store.ping)
    version = await run_in_threadpool(rt.store.schema_version)
    progress = rt.warm_up
    if not progress.done:  # a load balancer keeps sending to the servers that are ready
        return json_response(
            {"status": "warming up", "loaded": progress.loaded, "of": progress.planned},
            status=503,
            headers={"Retry-After": "1"},
        )
    return json_response({"status": "ready", "schema_version": version})


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(metrics_exposition(), media_type=CONTENT_TYPE_LATEST)
