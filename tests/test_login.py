"""Users, the compat login endpoint and its bearer sessions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

from csatdist.users import make_user
from tests.conftest import Api
from tests.helpers import bearer, csatdist_cli, start_server

LOGIN = "/api/account/acme/login?v=1.3"


@pytest.fixture
def user_api(api: Api) -> Api:
    api.store.add_user(make_user("acme", "supervisor", "correct horse battery", 0))
    return api


def login(
    api: Api,
    username: str = "supervisor",
    password: str = "correct horse battery",  # noqa: S107 - a test user's password
    account: str = "acme",
) -> httpx.Response:
    return api.client.post(
        f"/api/account/{account}/login?v=1.3", json={"username": username, "password": password}
    )


def test_login_returns_a_bearer_that_reads(user_api: Api) -> None:
    response = login(user_api)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"bearer", "csrf"}
    query = user_api.client.get(
        user_api.query_url() + "?v=1&timeframe=60", headers=bearer(body["bearer"])
    )
    assert query.status_code == 200


def test_login_bearer_cannot_ingest_or_cross_accounts(user_api: Api) -> None:
    token = login(user_api).json()["bearer"]
    ingest = user_api.client.post(
        user_api.ingest_url(), json={"answers": []}, headers=bearer(token)
    )
    assert ingest.status_code == 401
    other = user_api.client.get(
        user_api.query_url("beta") + "?v=1&timeframe=60", headers=bearer(token)
    )
    assert other.status_code == 401


def test_bearer_expires(user_api: Api) -> None:
    token = login(user_api).json()["bearer"]
    user_api.clock.advance(8 * 60 - 1)
    url = user_api.query_url() + "?v=1&timeframe=60"
    assert user_api.client.get(url, headers=bearer(token)).status_code == 200
    user_api.clock.advance(2)
    expired = user_api.client.get(url, headers=bearer(token))
    assert expired.status_code == 401
    assert "expired" in expired.json()["detail"]


def test_wrong_password_and_unknown_user_look_the_same(user_api: Api) -> None:
    wrong = login(user_api, password="wrong password!")
    unknown = login(user_api, username="nobody")
    other_account = login(user_api, account="beta")
    for response in (wrong, unknown, other_account):
        assert response.status_code == 401
        assert response.json()["detail"] == "invalid username or password"


def test_failed_logins_are_throttled_per_user(user_api: Api) -> None:
    for _ in range(5):
        assert login(user_api, password="nope nope nope").status_code == 401
    throttled = login(user_api)  # even the right password waits
    assert throttled.status_code == 429
    assert int(throttled.headers["Retry-After"]) > 1
    user_api.store.add_user(make_user("acme", "other", "another password", 0))
    assert login(user_api, username="other", password="another password").status_code == 200


@pytest.mark.parametrize(
    "body", [b"", b"{", b"[]", b'{"username": "x"}', b'{"username": 1, "password": "x"}']
)
def test_bad_login_bodies_are_400(user_api: Api, body: bytes) -> None:
    response = user_api.client.post(
        LOGIN, content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400


def test_users_create_hashes_with_argon2id(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    result = csatdist_cli(
        "users",
        "create",
        "--account",
        "acme",
        "--username",
        "ann",
        "--json",
        "--database",
        str(db),
        stdin="s3cret-passw0rd\n",
    )
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT password_hash FROM users").fetchone()[0]
    assert stored.startswith("$argon2id$")
    assert "s3cret" not in stored
    short = csatdist_cli(
        "users",
        "create",
        "--account",
        "acme",
        "--username",
        "bob",
        "--database",
        str(db),
        stdin="short\n",
    )
    assert short.returncode == 2
    assert "at least 8 characters" in short.stderr


@pytest.mark.slow
def test_login_against_a_real_server(tmp_path: Path) -> None:
    db = tmp_path / "real.db"
    created = csatdist_cli(
        "users",
        "create",
        "--account",
        "56072331",
        "--username",
        "wall",
        "--database",
        str(db),
        stdin="wallboard-pass\n",
    )
    assert created.returncode == 0, created.stderr
    server = start_server(db, tmp_path / "server.log")
    try:
        response = httpx.post(
            f"{server.url}/api/account/56072331/login",
            params={"v": "1.3"},
            json={"username": "wall", "password": "wallboard-pass"},
        )
        assert response.status_code == 200
        token = response.json()["bearer"]
        query = httpx.get(
            f"{server.url}/operations/api/account/56072331/msgcsatdistribution",
            params={"v": 1, "timeframe": 1440},
            headers=bearer(token),
        )
        assert query.status_code == 200
        assert token not in (tmp_path / "server.log").read_text()
    finally:
        server.stop()


def test_a_user_name_with_nul_is_just_a_wrong_login(user_api: Api) -> None:
    """PostgreSQL text cannot hold NUL: the name must never reach the store as a query."""
    reply = login(user_api, username="supervisor\x00", password="correct horse battery")
    assert reply.status_code == 401
    assert reply.json()["detail"] == "invalid username or password"
