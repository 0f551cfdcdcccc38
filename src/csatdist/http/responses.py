"""Building replies: JSON bodies, problem documents, and this server's origin as clients see it."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from csatdist.errors import CsatError
from csatdist.settings import Settings


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def problem_response(error: CsatError) -> Response:
    """An RFC 9457 problem document with the error's status and headers."""
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


class PacedResponse(Response):
    """A response whose body goes out in slices, each sent once the client has taken the one
    before (the server's send waits while the connection's buffer is full).

    A body handed over whole is copied into the connection's buffer at once and the request is
    over, however slowly the client reads: its memory stays behind, outside every limit. Sent
    in slices, a large reply is never buffered more than one slice ahead, and the request —
    with its concurrency slot and memory reservation — lasts until the client has read it (or
    is cut off for not reading: ``CSATDIST_RESPONSE_SEND_TIMEOUT_SECONDS``).
    """

    SLICE = 256 * 1024

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = bytes(self.body)
        if len(body) <= self.SLICE:
            await super().__call__(scope, receive, send)
            return
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        for start in range(0, len(body), self.SLICE):
            end = start + self.SLICE
            await send(
                {
                    "type": "http.response.body",
                    "body": body[start:end],
                    "more_body": end < len(body),
                }
            )
        if self.background is not None:
            await self.background()
