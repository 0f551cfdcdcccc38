"""The HTTP adapter: FastAPI routes that call the service functions, and error rendering."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from csatdist import __version__
from csatdist.aggregates import AggregateCache
from csatdist.answers import decode_body
from csatdist.auth import Authenticator, Principal, SignedRequest, valid_account_id
from csatdist.clock import Clock, system_clock_ms
from csatdist.conditional import etag_for, none_match
from csatdist.demo import AnswerSimulator, trickle
from csatdist.errors import (
    CsatError,
    InvalidParam,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    TooManyRequests,
    Unauthorized,
)
from csatdist.limits import Limiter, LocalLimiter, RedisLimiter
from csatdist.memo import Rendered, ResponseMemo
from csatdist.oauth1 import MemoryNonceCache, NonceCache, RedisNonceCache
from csatdist.observability import (
    ANSWERS,
    IN_FLIGHT,
    OPEN_STREAMS,
    RATE_LIMITED,
    STREAM_EVENTS,
    RequestContextMiddleware,
)
from csatdist.openapi import install_openapi, query_parameters
from csatdist.push import HEARTBEAT, Snapshots, retry_hint, sse_event
from csatdist.query import DistributionQuery, parse_query
from csatdist.sealing import SecretBox, load_secret_box
from csatdist.service import (
    IngestReport,
    ingest_answers,
    memoised_distribution,
    render_distribution,
)
from csatdist.settings import Settings
from csatdist.store import Store, open_store
from csatdist.users import LoginThrottle, login

#: How long the change log keeps counter changes for other servers' aggregates to catch up.
CHANGE_LOG_MS = 60 * 60_000
QUERY_PATH = "/operations/api/account/{account_id}/msgcsatdistribution"
INGEST_PATH = "/api/account/{account_id}/csat/answers"
STREAM_PATH = "/api/account/{account_id}/csat/stream"
LOGIN_PATH = "/api/account/{account_id}/login"
DOMAIN_PATH = "/api/account/{account_id}/service/{service}/baseURI.json"
DOMAINS_PATH = "/api/account/{account_id}/service/baseURI.json"
QUERY_PARAMS = ("v", "timeframe", "skillIds", "agentIds", "interval")
#: Services clients commonly look up; every one is served by this server.
KNOWN_SERVICES = (
    "leDataReporting",
    "agentVep",
    "msgEwtAPI",
    "accountConfigReadOnly",
    "accountConfigReadWrite",
    "asyncMessagingEnt",
)
_SERVICE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

log = logging.getLogger("csatdist.http")


@dataclass
class Runtime:
    """What the routes share: settings, the store, the clock and the limiter."""

    settings: Settings
    store: Store
    clock: Clock
    limiter: Limiter
    aggregates: AggregateCache
    memo: ResponseMemo
    authenticator: Authenticator
    login_throttle: LoginThrottle
    stream_limiter: Limiter
    snapshots: Snapshots


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def problem_response(error: CsatError) -> Response:
    return Response(
        orjson.dumps(error.problem()),
        status_code=error.status,
        media_type="application/problem+json",
        headers=error.headers(),
    )


def external_origin(request: Request, settings: Settings) -> str:
    """scheme://host[:port] as clients see this server (configured, else from the request)."""
    if settings.external_url:
        return settings.external_url.rstrip("/")
    return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"


def _signed_request(request: Request, settings: Settings) -> SignedRequest:
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    uri = external_origin(request, settings) + raw_path.decode("latin-1")
    if query:
        uri += "?" + query.decode("latin-1")
    return SignedRequest(request.method, uri, dict(request.headers.items()))


async def _authenticate(request: Request, account_id: str, scope: str) -> Principal:
    rt = runtime(request)
    authorization = request.headers.get("authorization")
    # A bearer key or session read moments ago, or (SQLite) read now with one point read: no
    # hop to a worker thread.
    decided = rt.authenticator.authenticate_cached(
        account_id, scope, authorization, store_reads=rt.store.point_reads_inline
    )
    if decided is not None:
        return decided
    return await run_in_threadpool(
        rt.authenticator.authenticate,
        account_id,
        scope,
        request.headers.get("authorization"),
        lambda: _signed_request(request, rt.settings),
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes, and
    with 408 when it does not arrive within the body timeout (a slow client holds a worker)."""
    declared = request.headers.get("content-length")
    too_large = PayloadTooLarge(f"the request body exceeds {limit} bytes")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    seconds = runtime(request).settings.request_body_timeout_seconds
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {seconds:g} s") from None
    return b"".join(chunks)


def _query_values(request: Request) -> dict[str, object]:
    """Known parameters from the query string; repeated keys are joined as one list."""
    values: dict[str, object] = {}
    for name in QUERY_PARAMS:
        given = request.query_params.getlist(name)
        if given:
            values[name] = ",".join(given)
    return values


async def _body_values(request: Request, limit: int) -> dict[str, object]:
    """Parameters from a POST body (old clients); null means absent."""
    body = await _read_body(request, limit)
    if not body.strip():
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest.one("body", f"is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidRequest.one("body", "must be a JSON object of query parameters")
    return {name: document[name] for name in QUERY_PARAMS if document.get(name) is not None}


async def _purge_forever(rt: Runtime) -> None:
    while True:
        await asyncio.sleep(rt.settings.purge_interval_seconds)
        older_than = rt.clock() - rt.settings.retention_minutes * 60_000
        try:
            result = await run_in_threadpool(rt.store.purge, older_than)
            await run_in_threadpool(rt.store.purge_changes, rt.clock() - CHANGE_LOG_MS)
        except Exception:
            log.exception("retention purge failed; will retry")
            continue
        if result.buckets or result.answer_ids:
            log.info(
                "purged expired data",
                extra={"fields": {"buckets": result.buckets, "answer_ids": result.answer_ids}},
            )


async def _feed_demo(rt: Runtime) -> None:
    simulator = AnswerSimulator()
    period_ms = int(rt.settings.demo_interval_seconds * 1000)
    while True:
        await asyncio.sleep(rt.settings.demo_interval_seconds)
        try:
            await run_in_threadpool(
                trickle,
                rt.store,
                rt.settings.demo_account,
                simulator,
                rt.clock(),
                rt.settings.retention_minutes,
                period_ms,
            )
        except Exception:
            log.exception("demo feed failed; will retry")


def make_limiter(settings: Settings) -> Limiter:
    if settings.redis_url:
        return RedisLimiter(
            settings.redis_url,
            settings.max_concurrent_requests,
            settings.max_concurrent_requests_global,
            lease_seconds=settings.redis_lease_seconds,
            fallback=settings.redis_fallback,
        )
    return LocalLimiter(settings.max_concurrent_requests, settings.max_concurrent_requests_global)


def make_stream_limiter(settings: Settings) -> Limiter:
    """The cap on open push streams: per account and in all, across replicas with Redis."""
    per_account, in_all = settings.max_streams_per_account, settings.max_streams_global
    if settings.redis_url:
        return RedisLimiter(
            settings.redis_url,
            per_account,
            in_all,
            lease_seconds=max(4 * settings.stream_heartbeat_seconds, 60.0),
            fallback=settings.redis_fallback,
            prefix="csatdist-streams",
            noun="open streams",
        )
    return LocalLimiter(per_account, in_all, noun="open streams")


def make_nonce_cache(settings: Settings) -> NonceCache:
    window = settings.oauth_timestamp_window_seconds
    if settings.redis_url:
        return RedisNonceCache(settings.redis_url, window)
    return MemoryNonceCache(window)


def secret_box_loader(settings: Settings) -> Callable[[], SecretBox]:
    """Loads the sealing key on first use, so servers without OAuth keys never need one."""
    loaded: list[SecretBox] = []
    lock = threading.Lock()

    def load() -> SecretBox:
        with lock:
            if not loaded:
                loaded.append(load_secret_box(settings.secret_key, Path(settings.secret_key_file)))
            return loaded[0]

    return load


def create_app(
    settings: Settings, *, store: Store | None = None, clock: Clock = system_clock_ms
) -> FastAPI:
    """The ASGI app. A given ``store`` stays open after shutdown; one it opens itself is closed."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = store is None
        active = (
            store
            if store is not None
            else await run_in_threadpool(
                open_store,
                settings.database_url,
                synchronous=settings.sqlite_synchronous,
                pool_size=settings.database_pool_size,
            )
        )
        aggregates = AggregateCache(active)

        memo = ResponseMemo(settings.response_cache_mb * 1024 * 1024)

        async def compute(account_id: str, query: DistributionQuery) -> Rendered:
            return await run_in_threadpool(
                render_distribution, aggregates, memo, account_id, query, clock()
            )

        rt = Runtime(
            settings=settings,
            store=active,
            clock=clock,
            limiter=make_limiter(settings),
            aggregates=aggregates,
            memo=memo,
            authenticator=Authenticator(
                active,
                secret_box_loader(settings),
                clock,
                settings.oauth_timestamp_window_seconds,
                nonces=make_nonce_cache(settings),
                cache_seconds=settings.auth_cache_seconds,
            ),
            login_throttle=LoginThrottle(
                settings.login_max_failures, settings.login_lockout_seconds
            ),
            stream_limiter=make_stream_limiter(settings),
            snapshots=Snapshots(compute, max_age=settings.stream_period_seconds / 2),
        )
        app.state.runtime = rt
        # Everything loaded so far (modules, routes, settings) lives as long as the server. A
        # full collection over those ~90,000 objects took 40-70 ms here, and a large body (7,000
        # dicts) triggers one every few requests; frozen objects are never scanned again. The
        # collection first keeps garbage of the start-up out of the frozen set.
        gc.collect()
        gc.freeze()
        tasks = [asyncio.create_task(_purge_forever(rt))]
        if settings.demo:
            tasks.append(asyncio.create_task(_feed_demo(rt)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await rt.limiter.close()
            await rt.stream_limiter.close()
            if owned:
                await run_in_threadpool(active.close)

    app = FastAPI(
        title="csatdist",
        version=__version__,
        description="Messaging CSAT Distribution API: live distributions of CSAT answers.",
        lifespan=lifespan,
        # Swagger UI and ReDoc load their scripts from a CDN, which the dashboard's CSP (and
        # offline installs) rule out; the document itself is at /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(RequestContextMiddleware)
    _install_error_handlers(app)
    _install_routes(app)
    _install_compat_routes(app)
    _install_operations_routes(app)
    _install_dashboard_routes(app)
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


def _allowed_methods(request: Request) -> str:
    """Every method some route serves on this path (routes are registered one per method)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods - {"HEAD"}))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CsatError)
    async def on_csat_error(request: Request, exc: CsatError) -> Response:
        return problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        params = [
            InvalidParam(".".join(str(p) for p in err.get("loc", ())[1:]) or "request", err["msg"])
            for err in exc.errors()
        ]
        return problem_response(InvalidRequest(params))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            allow = _allowed_methods(request)
            return problem_response(
                MethodNotAllowed(f"{request.method} is not allowed here", allow=allow)
            )
        if exc.status_code == 404:
            return problem_response(NotFound(f"no such resource: {request.url.path}"))
        error = CsatError(str(exc.detail))
        response = problem_response(error)
        response.status_code = exc.status_code
        return response

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc)
        return problem_response(CsatError("an unexpected error occurred; it has been logged"))


def _install_routes(app: FastAPI) -> None:
    # The query parameters are read by parse_query alone and documented by query_parameters():
    # declaring them to FastAPI would validate each one a second time on every request.
    async def msgcsatdistribution(request: Request, account_id: str) -> Response:
        rt = runtime(request)
        await _authenticate(request, account_id, "read")
        values = _query_values(request)
        if request.method == "POST":
            values.update(await _body_values(request, rt.settings.max_ingest_bytes))
        query = parse_query(values, rt.settings.max_ids_per_list)
        try:
            lease = await rt.limiter.acquire(account_id)
        except TooManyRequests as exc:
            RATE_LIMITED.labels(exc.scope).inc()
            raise
        IN_FLIGHT.inc()
        try:
            now = rt.clock()
            rendered = None
            if rt.store.point_reads_inline:  # an unchanged account: no hop to a worker thread
                rendered = memoised_distribution(rt.aggregates, rt.memo, account_id, query, now)
            if rendered is None:
                rendered = await run_in_threadpool(
                    render_distribution, rt.aggregates, rt.memo, account_id, query, now
                )
        finally:
            IN_FLIGHT.dec()
            await rt.limiter.release(account_id, lease)
        data, etag = rendered.data, rendered.etag
        headers = {
            "X-CSAT-Window-Start": str(rendered.window.start_ms),
            "X-CSAT-Window-End": str(rendered.window.end_ms),
            "ETag": etag,
            # Private (behind credentials) and always revalidated: a 304 costs no body.
            "Cache-Control": "private, no-cache",
        }
        if request.method == "GET" and none_match(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="application/json", headers=headers)

    for method in ("GET", "POST"):
        app.add_api_route(
            QUERY_PATH,
            msgcsatdistribution,
            methods=[method],
            summary="CSAT distribution over the last timeframe minutes"
            + (" (parameters in a JSON body)" if method == "POST" else ""),
            response_class=Response,
            operation_id=f"{method.lower()}_distribution",
            openapi_extra={"parameters": query_parameters(with_version=True)},
        )

    @app.get(
        STREAM_PATH,
        summary="Server-Sent Events: the distribution whenever it changes",
        response_class=StreamingResponse,
        openapi_extra={"parameters": query_parameters(with_version=False)},
    )
    async def distribution_stream(request: Request, account_id: str) -> StreamingResponse:
        rt = runtime(request)
        principal = await _authenticate(request, account_id, "read")
        values = {"v": "1", **_query_values(request)}
        query = parse_query(values, rt.settings.max_ids_per_list)
        try:
            slot = await rt.stream_limiter.acquire(account_id)
        except TooManyRequests as exc:
            RATE_LIMITED.labels("streams-" + exc.scope).inc()
            raise
        events = _stream_events(
            rt, principal, query, slot, request.headers.get("last-event-id", "").strip()
        )
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post(INGEST_PATH, summary="Ingest CSAT answers (JSON or NDJSON)", response_class=Response)
    async def ingest(request: Request, account_id: str) -> Response:
        rt = runtime(request)
        await _authenticate(request, account_id, "write")
        body = await _read_body(request, rt.settings.max_ingest_bytes)
        content_type = request.headers.get("content-type")

        def work() -> IngestReport:
            decoded = decode_body(body, content_type, rt.settings.max_ingest_answers)
            return ingest_answers(
                rt.store, account_id, decoded.items, rt.clock(), rt.settings.retention_minutes
            )

        report = await run_in_threadpool(work)
        ANSWERS.labels("accepted").inc(report.accepted)
        ANSWERS.labels("duplicate").inc(report.duplicates)
        ANSWERS.labels("rejected").inc(len(report.rejected))
        return json_response(report.as_json())


#: How often an open stream re-checks that its credential is still valid (revoked, expired).
STREAM_RECHECK_SECONDS = 5.0


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


def _install_compat_routes(app: FastAPI) -> None:
    """LivePerson compatibility: user login and the domain (service base URI) lookup."""

    @app.post(LOGIN_PATH, summary="Log in a user; returns a bearer token", response_class=Response)
    async def login_route(request: Request, account_id: str) -> Response:
        rt = runtime(request)
        if not valid_account_id(account_id):
            raise Unauthorized("invalid username or password")
        body = await _read_body(request, 64 * 1024)
        try:
            document = orjson.loads(body) if body.strip() else None
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest.one("body", f"is not valid JSON: {exc}") from None
        errors = [
            InvalidParam(name, "is required and must be a string")
            for name in ("username", "password")
            if not isinstance(document, dict) or not isinstance(document.get(name), str)
        ]
        if errors or not isinstance(document, dict):
            raise InvalidRequest(errors)
        result = await run_in_threadpool(
            login,
            rt.store,
            rt.login_throttle,
            account_id,
            document["username"],
            document["password"],
            rt.clock(),
            rt.settings.session_ttl_minutes * 60_000,
        )
        return json_response({"bearer": result.bearer, "csrf": result.csrf})

    def _domain(request: Request, account_id: str, service: str) -> dict[str, str]:
        origin = external_origin(request, runtime(request).settings)
        return {"service": service, "account": account_id, "baseURI": origin.split("://", 1)[1]}

    @app.get(DOMAIN_PATH, summary="Domain lookup: where a service of this account is served")
    async def domain(request: Request, account_id: str, service: str) -> Response:
        if not valid_account_id(account_id):
            raise Unauthorized("malformed account id")
        if not _SERVICE_NAME.fullmatch(service):
            raise NotFound(f"no such service: {service[:64]!r}")
        return json_response(_domain(request, account_id, service))

    @app.get(DOMAINS_PATH, summary="Domain lookup for every known service")
    async def domains(request: Request, account_id: str) -> Response:
        if not valid_account_id(account_id):
            raise Unauthorized("malformed account id")
        return json_response(
            {"baseURIs": [_domain(request, account_id, name) for name in KNOWN_SERVICES]}
        )


#: The dashboard's assets: served from the package, nothing from the internet.
DASHBOARD_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
#: Only same-origin scripts, styles and requests; no inline code, no frames, no plugins.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "Cache-Control": "no-cache",
}


def _dashboard_asset(name: str) -> Response:
    from importlib import resources

    media_type = DASHBOARD_ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no such dashboard file: {name[:64]!r}")
    data = resources.files("csatdist").joinpath("dashboard", name).read_bytes()
    headers = {**SECURITY_HEADERS, "ETag": etag_for(data)}
    return Response(data, media_type=media_type, headers=headers)


def _install_dashboard_routes(app: FastAPI) -> None:
    @app.get("/dashboard", summary="The live CSAT dashboard (HTML)", include_in_schema=False)
    async def dashboard() -> Response:
        return _dashboard_asset("index.html")

    @app.get("/dashboard/{name}", include_in_schema=False)
    async def dashboard_file(name: str) -> Response:
        return _dashboard_asset(name)

    @app.get("/", include_in_schema=False)
    async def home() -> Response:
        return Response(status_code=307, headers={"Location": "/dashboard"})


def _install_operations_routes(app: FastAPI) -> None:
    @app.get("/healthz", summary="Liveness")
    async def healthz() -> Response:
        return json_response({"status": "ok", "version": __version__})

    @app.get("/readyz", summary="Readiness: the store answers")
    async def readyz(request: Request) -> Response:
        rt = runtime(request)
        await run_in_threadpool(rt.store.ping)
        version = await run_in_threadpool(rt.store.schema_version)
        return json_response({"status": "ready", "schema_version": version})

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
