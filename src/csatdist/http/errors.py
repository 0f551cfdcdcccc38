"""Every failure rendered as an RFC 9457 problem document: where each status reaches the client.

Errors nothing here knows (a bug) are answered with a 500 by
:class:`csatdist.http.middleware.RequestContextMiddleware`, outside the routes."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from csatdist.errors import CsatError, InvalidParam, InvalidRequest, MethodNotAllowed, NotFound
from csatdist.http.responses import problem_response


def _allowed_methods(request: Request, routes: Sequence[BaseRoute]) -> str:
    """Every method some route serves on this path (routes are registered one per method)."""
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods - {"HEAD"}))


def install_error_handlers(app: FastAPI, routes: Sequence[BaseRoute]) -> None:
    """Problem documents for every error; ``routes`` (every route of the app) tell a 405's
    ``Allow`` header which methods the path has."""

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
            allow = _allowed_methods(request, routes)
            return problem_response(
                MethodNotAllowed(f"{request.method} is not allowed here", allow=allow)
            )
        if exc.status_code == 404:
            return problem_response(NotFound(f"no such resource: {request.url.path}"))
        response = problem_response(CsatError(str(exc.detail)))
        response.status_code = exc.status_code
        return response
