"""The ASGI app: the runtime's life cycle, middleware, error handlers and one router per concern.

Nothing here handles a request itself; each concern's routes live in ``routes/<concern>.py`` and
what they share (credentials, bodies, limits) in ``deps.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import sys
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from csatdist import __version__
from csatdist.clock import Clock, system_clock_ms
from csatdist.http.background import (
    alerts_forever,
    feed_demo,
    purge_forever,
    release_memory_forever,
    warm_up,
)
from csatdist.http.errors import install_error_handlers
from csatdist.http.middleware import RequestContextMiddleware
from csatdist.http.openapi import install_openapi
from csatdist.http.routes import (
    alerts,
    compat,
    dashboard,
    directory,
    distribution,
    ingest,
    operations,
    records,
    report,
)
from csatdist.http.runtime import build_runtime
from csatdist.settings import Settings
from csatdist.store import Store, open_configured_store

ROUTERS = (
    distribution.router,
    ingest.router,
    records.router,
    report.router,
    directory.router,
    alerts.router,
    compat.router,
    operations.router,
    dashboard.router,
)


def _with_head_routes(router: APIRouter) -> APIRouter:
    """HEAD wherever GET works, as HTTP expects: a hidden twin of each GET route (one route
    serving both would give both operations one OpenAPI operation id)."""
    for route in list(router.routes):
        if isinstance(route, APIRoute) and route.methods == {"GET"}:
            router.add_api_route(
                route.path,
                route.endpoint,
                methods=["HEAD"],
                response_class=route.response_class,
                include_in_schema=False,
                name=route.name,
            )
    return router


for _router in ROUTERS:
    _with_head_routes(_router)


def worker_app() -> FastAPI:
    """The app of one worker of ``csatdist serve --workers N``: settings from the environment
    (the supervisor exports its own), limits and nonces shared through its segments."""
    from csatdist.allocator import fix_mmap_threshold
    from csatdist.observability import configure_logging
    from csatdist.settings import load_settings

    _die_with_the_supervisor()
    fix_mmap_threshold()
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)


def _die_with_the_supervisor() -> None:
    """A worker must not outlive its supervisor (killed -9, it could not stop its workers,
    which would go on serving the port): Linux kills this process when its parent dies."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    # A supervisor killed while this worker was still starting (before the prctl) sent no
    # signal: this worker's parent is then another process already, and it must not serve.
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(1)


def create_app(
    settings: Settings, *, store: Store | None = None, clock: Clock = system_clock_ms
) -> FastAPI:
    """The ASGI app. A given ``store`` stays open after shutdown; one it opens itself is closed."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = store is None
        active = (
            store if store is not None else await run_in_threadpool(open_configured_store, settings)
        )
        rt = build_runtime(settings, active, clock)
        make_point_reads = getattr(active, "point_reads", None)
        if make_point_reads is not None:  # PostgreSQL: version and key reads without a thread
            rt.point_reads = make_point_reads()
            await rt.point_reads.open()
        app.state.runtime = rt
        # Everything loaded so far (modules, routes, settings) lives as long as the server. A
        # full collection over those ~90,000 objects took 40-70 ms here, and a large body (7,000
        # dicts) triggers one every few requests; frozen objects are never scanned again. The
        # collection first keeps garbage of the start-up out of the frozen set.
        gc.collect()
        gc.freeze()
        # Python's 5 ms: each hand-over of the GIL (every SQLite statement, every hop to or
        # from a worker thread) waits up to that per busy thread; see docs/security.md.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(settings.switch_interval_ms / 1000)
        tasks = [asyncio.create_task(release_memory_forever())]
        if rt.primary:  # jobs of the server as a whole: one worker runs them
            tasks += [
                asyncio.create_task(purge_forever(rt)),
                asyncio.create_task(alerts_forever(rt)),
            ]
        accounts = (
            await run_in_threadpool(active.busiest_accounts, settings.warm_up_accounts)
            if settings.warm_up_accounts
            else []
        )
        rt.warm_up.planned = len(accounts)
        rt.warm_up.done = not accounts  # nothing to warm: ready at once
        if accounts:
            tasks.append(asyncio.create_task(warm_up(rt, accounts)))
        if settings.demo and rt.primary:
            tasks.append(asyncio.create_task(feed_demo(rt)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await rt.close()
            if rt.point_reads is not None:
                await rt.point_reads.close()
            if owned:
                await run_in_threadpool(active.close)
            sys.setswitchinterval(switch_interval)

    app = FastAPI(
        title="csatdist",
        version=__version__,
        description="Messaging CSAT Distribution API: live distributions of CSAT answers.",
        lifespan=lifespan,
        # Swagger UI and ReDoc load their scripts from a CDN, which the dashboard's CSP (and
        # offline installs) rule out; the document itself is at /openapi.json.
        docs_url=None,
        redoc_url=None,
        # Starlette's redirects of a trailing slash name the request's Host header in an
        # absolute Location, which a client can set to anything; paths are exact instead.
        redirect_slashes=False,
    )
    app.add_middleware(RequestContextMiddleware)
    install_error_handlers(app, [route for router in ROUTERS for route in router.routes])
    for router in ROUTERS:
        app.include_router(router)
    install_openapi(app)
    origins = [origin.strip() for origin in settings.cors_origins.split(",") if origin.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "If-None-Match", "Last-Event-ID"],
            expose_headers=["ETag", "X-CSAT-Window-Start", "X-CSAT-Window-End", "Retry-After"],
        )
    return app
