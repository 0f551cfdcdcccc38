"""Building replies: JSON bodies, problem documents, and this server's origin as clients see it."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

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
