"""The outermost layer of every request: its id (echoed as ``X-Request-ID``), the access log,
request metrics, and the last resort for errors no route handled.

An unexpected exception becomes a 500 problem document sent from here, so it carries the
request id like every other reply and the connection stays usable; a client that went away
before its reply is recorded as 499 (nginx's "client closed request"), not as a server error.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from csatdist.errors import CsatError
from csatdist.observability import LATENCY, REQUESTS, request_id

_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: Recorded for a request whose client disconnected before its reply was sent.
CLIENT_CLOSED = 499

log = logging.getLogger("csatdist")


class _RequestIds:
    """New request ids: 32 hex digits (as a UUID's), a random half drawn once per process and
    a counter, so unique across workers and restarts without a system call per request
    (``uuid4`` reads the kernel's random source each time: 4 µs of a small query's ~250)."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)  # a forked child draws its own half

    def reseed(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count()

    def new(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


new_request_id = _RequestIds().new


class RequestContextMiddleware:
    """Pure ASGI: request id, access log, request metrics, and the last-resort 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _VALID_REQUEST_ID.fullmatch(incoming) else new_request_id()
        token = request_id.set(rid)
        started = time.perf_counter()
        status = CLIENT_CLOSED  # until a reply starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            status = CLIENT_CLOSED
        except Exception as exc:
            if status != CLIENT_CLOSED:  # a reply was under way: only closing can end it
                raise
            log.error("unhandled error", exc_info=exc)
            problem = CsatError("an unexpected error occurred; it has been logged").problem()
            body = orjson.dumps(problem)
            await send_with_id(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/problem+json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            REQUESTS.labels(template, method, str(status)).inc()
            LATENCY.labels(template, method).observe(elapsed)
            log.info(
                "request",
                extra={
                    "fields": {
                        "method": method,
                        "path": scope["path"],
                        "route": template,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                        "account": (scope.get("path_params") or {}).get("account_id"),
                    }
                },
            )
            request_id.reset(token)
