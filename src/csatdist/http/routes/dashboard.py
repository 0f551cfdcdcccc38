"""The live dashboard: static assets served from the package, nothing from the internet, under a
strict Content-Security-Policy."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from csatdist.conditional import etag_for
from csatdist.errors import NotFound

#: The dashboard's assets and their media types.
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

router = APIRouter()


def dashboard_asset(name: str) -> Response:
    media_type = DASHBOARD_ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no such dashboard file: {name[:64]!r}")
    data = resources.files("csatdist").joinpath("dashboard", name).read_bytes()
    headers = {**SECURITY_HEADERS, "ETag": etag_for(data)}
    return Response(data, media_type=media_type, headers=headers)


@router.get("/dashboard", summary="The live CSAT dashboard (HTML)", include_in_schema=False)
async def dashboard() -> Response:
    return dashboard_asset("index.html")


@router.get("/dashboard/{name}", include_in_schema=False)
async def dashboard_file(name: str) -> Response:
    return dashboard_asset(name)


@router.get("/", include_in_schema=False)
@router.get("/dashboard/", include_in_schema=False)
async def home() -> Response:
    # A relative Location: an absolute one would have to name a host, and the request's Host
    # header is whatever the client says (CSATDIST_EXTERNAL_URL is not needed for this).
    return Response(status_code=307, headers={"Location": "/dashboard"})
