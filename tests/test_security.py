"""Browser-facing security defaults: CORS off unless configured; no CDN-loaded pages."""

from __future__ import annotations

from fastapi.testclient import TestClient

from csatdist.app import create_app
from csatdist.store import Store
from tests.conftest import add_key, make_settings

QUERY = "/operations/api/account/acme/msgcsatdistribution?v=1&timeframe=60"
PREFLIGHT = {
    "Origin": "https://evil.example",
    "Access-Control-Request-Method": "GET",
    "Access-Control-Request-Headers": "authorization",
}


def test_cors_is_off_by_default(store: Store) -> None:
    token = add_key(store, "acme", "read")
    with TestClient(create_app(make_settings(), store=store)) as client:
        preflight = client.options(QUERY, headers=PREFLIGHT)
        assert "access-control-allow-origin" not in preflight.headers
        simple = client.get(
            QUERY, headers={"Origin": "https://evil.example", "Authorization": f"Bearer {token}"}
        )
        assert simple.status_code == 200
        assert "access-control-allow-origin" not in simple.headers


def test_cors_allows_only_the_configured_origins(store: Store) -> None:
    token = add_key(store, "acme", "read")
    settings = make_settings(cors_origins="https://wall.example.com, https://ops.example.com")
    with TestClient(create_app(settings, store=store)) as client:
        allowed = client.options(QUERY, headers={**PREFLIGHT, "Origin": "https://wall.example.com"})
        assert allowed.headers["access-control-allow-origin"] == "https://wall.example.com"
        denied = client.options(QUERY, headers=PREFLIGHT)
        assert "access-control-allow-origin" not in denied.headers
        reply = client.get(
            QUERY,
            headers={"Origin": "https://ops.example.com", "Authorization": f"Bearer {token}"},
        )
        assert reply.headers["access-control-allow-origin"] == "https://ops.example.com"
        assert "etag" in reply.headers["access-control-expose-headers"].lower()


def test_no_page_loads_scripts_from_elsewhere(store: Store) -> None:
    with TestClient(create_app(make_settings(), store=store)) as client:
        assert client.get("/docs").status_code == 404
        assert client.get("/redoc").status_code == 404
        assert client.get("/openapi.json").json()["openapi"].startswith("3.")
        page = client.get("/dashboard").text
        assert "http://" not in page
        assert "https://" not in page
