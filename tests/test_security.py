"""Browser-facing security defaults: CORS off unless configured; no CDN-loaded pages."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from csatdist.http import create_app
from csatdist.keys import parse_bearer
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


def test_a_revoked_key_is_refused_within_the_auth_cache_time(store: Store) -> None:
    token = add_key(store, "acme", "read")
    settings = make_settings(auth_cache_seconds=0.3)
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(settings, store=store)) as client:
        assert client.get(QUERY, headers=headers).status_code == 200  # now cached
        parsed = parse_bearer(token)
        assert parsed is not None
        store.revoke_key(parsed.record_id, 0)
        time.sleep(0.35)
        refused = client.get(QUERY, headers=headers)
        assert refused.status_code == 401
        assert "revoked" in refused.json()["detail"]


def test_without_the_auth_cache_revocation_is_immediate(store: Store) -> None:
    token = add_key(store, "acme", "read")
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(make_settings(auth_cache_seconds=0), store=store)) as client:
        assert client.get(QUERY, headers=headers).status_code == 200
        parsed = parse_bearer(token)
        assert parsed is not None
        store.revoke_key(parsed.record_id, 0)
        assert client.get(QUERY, headers=headers).status_code == 401


def test_the_auth_cache_still_checks_secret_and_scope(store: Store) -> None:
    token = add_key(store, "acme", "read")
    with TestClient(create_app(make_settings(auth_cache_seconds=60), store=store)) as client:
        good = {"Authorization": f"Bearer {token}"}
        assert client.get(QUERY, headers=good).status_code == 200  # cached from here on
        forged = {"Authorization": f"Bearer {token[:-4]}AAAA"}
        assert client.get(QUERY, headers=forged).status_code == 401
        ingest = client.post("/api/account/acme/csat/answers", json={"answers": []}, headers=good)
        assert ingest.status_code == 401  # a read key, cached or not, cannot write
