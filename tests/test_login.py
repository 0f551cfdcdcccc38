"""Users, the compat login endpoint and its bearer sessions."""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from csatdist import users
from csatdist.errors import Unauthorized
from csatdist.http import create_app
from csatdist.store import Session, Store
from csatdist.users import LoginThrottle, make_user
from tests.conftest import Api, make_settings
from tests.helpers import FakeClock, bearer, csatdist_cli, live_server, start_server

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


# --- managing users and revoking sessions ---------------------------------------------------

PASSWORD = "correct horse battery"
QUERY = "/operations/api/account/acme/msgcsatdistribution?v=1&timeframe=60"
REVOKED = "the login session has been revoked (password changed or sessions revoked); log in again"


def users_cli(database: str, *args: str, stdin: str | None = None) -> Any:
    return csatdist_cli("users", *args, "--account", "acme", "--database", database, stdin=stdin)


def refused_within(client: TestClient, token: str, seconds: float) -> httpx.Response:
    """Poll until the token gets 401; fails if that takes longer than ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        reply = client.get(QUERY, headers=bearer(token))
        if reply.status_code == 401:
            return reply
        assert reply.status_code == 200, reply.text
        assert time.monotonic() < deadline, f"still accepted after {seconds} s"
        time.sleep(0.05)


def test_users_list_delete_and_revoke_sessions_from_the_cli(tmp_path: Path) -> None:
    db = str(tmp_path / "u.db")
    for name in ("zoe", "ann"):
        assert users_cli(db, "create", "--username", name, stdin=PASSWORD + "\n").returncode == 0
    listed = users_cli(db, "list", "--json")
    assert [(u["account"], u["username"]) for u in orjson.loads(listed.stdout)] == [
        ("acme", "ann"),
        ("acme", "zoe"),
    ]
    piped = users_cli(db, "list")
    assert [line.split("\t")[:2] for line in piped.stdout.splitlines()] == [
        ["username", "account"],
        ["ann", "acme"],
        ["zoe", "acme"],
    ]

    revoked = users_cli(db, "revoke-sessions", "--username", "ann")
    assert (revoked.returncode, revoked.stdout) == (
        0,
        "revoked 0 login sessions of user ann in account acme\n",
    )
    deleted = users_cli(db, "delete", "--username", "ann", "--json")
    assert orjson.loads(deleted.stdout) == {"account": "acme", "username": "ann", "deleted": True}
    assert [u["username"] for u in orjson.loads(users_cli(db, "list", "--json").stdout)] == ["zoe"]
    for command in ("delete", "revoke-sessions"):
        missing = users_cli(db, command, "--username", "ann")
        assert (missing.returncode, missing.stderr) == (
            1,
            "error: no user 'ann' in account 'acme'\n",
        )


def test_a_password_change_signs_the_user_out_of_every_server(
    store: Store, database_url: str
) -> None:
    """Two servers on one store, each remembering credentials for auth_cache_seconds (1 s)."""
    store.add_user(make_user("acme", "supervisor", PASSWORD, 0))
    clock = FakeClock()
    servers = [create_app(make_settings(), store=store, clock=clock) for _ in range(2)]
    with TestClient(servers[0]) as first, TestClient(servers[1]) as second:
        token = first.post(LOGIN, json={"username": "supervisor", "password": PASSWORD}).json()[
            "bearer"
        ]
        for client in (first, second):
            assert client.get(QUERY, headers=bearer(token)).status_code == 200  # now cached

        changed = users_cli(
            database_url, "create", "--username", "supervisor", stdin="a new password\n"
        )
        assert changed.returncode == 0, changed.stderr
        assert changed.stdout == (
            "user supervisor of account acme: password changed; its login sessions are revoked\n"
        )
        for client in (first, second):
            refused = refused_within(client, token, 1.5)
            assert refused.json()["detail"] == REVOKED
        old = first.post(LOGIN, json={"username": "supervisor", "password": PASSWORD})
        assert old.status_code == 401
        new = first.post(LOGIN, json={"username": "supervisor", "password": "a new password"})
        assert first.get(QUERY, headers=bearer(new.json()["bearer"])).status_code == 200


def test_revocation_is_seen_within_the_auth_cache_time(store: Store) -> None:
    store.add_user(make_user("acme", "supervisor", PASSWORD, 0))
    settings = make_settings(auth_cache_seconds=1.0)
    with TestClient(create_app(settings, store=store, clock=FakeClock())) as client:
        token = client.post(LOGIN, json={"username": "supervisor", "password": PASSWORD}).json()[
            "bearer"
        ]
        assert client.get(QUERY, headers=bearer(token)).status_code == 200  # cached from now
        assert store.revoke_sessions("acme", "supervisor", 1) == 1
        refused = refused_within(client, token, 1.0 + 0.5)  # the cache time, and some slack
        assert refused.json()["detail"] == REVOKED
        again = client.post(LOGIN, json={"username": "supervisor", "password": PASSWORD})
        assert client.get(QUERY, headers=bearer(again.json()["bearer"])).status_code == 200


def test_deleting_a_user_ends_its_sessions_and_its_logins(store: Store, database_url: str) -> None:
    store.add_user(make_user("acme", "supervisor", PASSWORD, 0))
    with TestClient(create_app(make_settings(), store=store, clock=FakeClock())) as client:
        token = client.post(LOGIN, json={"username": "supervisor", "password": PASSWORD}).json()[
            "bearer"
        ]
        deleted = users_cli(database_url, "delete", "--username", "supervisor")
        assert (
            deleted.stdout == "user supervisor deleted from account acme, with its login sessions\n"
        )
        refused = refused_within(client, token, 1.5)
        assert refused.json()["detail"] == "the credential is not valid for this account"
        login = client.post(LOGIN, json={"username": "supervisor", "password": PASSWORD})
        assert login.status_code == 401


@pytest.mark.slow
def test_a_revoked_session_ends_its_push_stream(store: Store) -> None:
    """Open streams re-check their credential every 5 s (STREAM_RECHECK_SECONDS) and send one
    event per stream period (1 s): the revocation ends the stream within about 6 s."""
    store.add_user(make_user("acme", "supervisor", PASSWORD, 0))
    with live_server(create_app(make_settings(), store=store, clock=FakeClock())) as url:
        token = httpx.post(
            url + LOGIN, json={"username": "supervisor", "password": PASSWORD}
        ).json()["bearer"]
        events: list[tuple[str, str]] = []
        revoked_at = 0.0
        timeout = httpx.Timeout(10, read=15)
        stream_url = f"{url}/api/account/acme/csat/stream?timeframe=60"
        with httpx.stream("GET", stream_url, headers=bearer(token), timeout=timeout) as response:
            assert response.status_code == 200
            name = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((name, line.removeprefix("data: ")))
                    if name == "distribution" and not revoked_at:
                        assert store.revoke_sessions("acme", "supervisor", 1) == 1
                        revoked_at = time.monotonic()
                    if name == "unauthorized":
                        break
        ended_after = time.monotonic() - revoked_at
    assert events[-1][0] == "unauthorized"
    assert orjson.loads(events[-1][1])["status"] == 401
    assert ended_after < 5 + 1 + 2  # recheck interval + one stream period + slack


class PasswordChangedDuringLogin:
    """A store whose user's password changes while a login is between checking the password and
    adding its session (the change commits first)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def add_session(self, session: Session) -> None:
        self.store.add_user(make_user("acme", "supervisor", "a new password", 0))
        self.store.add_session(session)


def test_a_login_racing_a_password_change_gets_no_session(store: Store) -> None:
    store.add_user(make_user("acme", "supervisor", PASSWORD, 0))
    racing = cast(Store, PasswordChangedDuringLogin(store))
    throttle = LoginThrottle(5, 60)
    with pytest.raises(Unauthorized, match="invalid username or password"):
        users.login(racing, throttle, "acme", "supervisor", PASSWORD, 1, 60_000)
    with TestClient(create_app(make_settings(), store=store, clock=FakeClock())) as client:
        fresh = client.post(LOGIN, json={"username": "supervisor", "password": "a new password"})
        assert client.get(QUERY, headers=bearer(fresh.json()["bearer"])).status_code == 200


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread CPU priority is Linux's")
def test_password_checks_run_below_the_priority_of_the_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A password check (Argon2id: ~0.3 s of CPU on every core, asked for by anyone) runs on
    a thread whose nice value is 10 above the caller's, so signed-in tenants' requests come
    first on a busy machine."""
    seen: list[tuple[int, int]] = []

    class Recorder:
        def verify(self, password_hash: str, password: str) -> bool:
            tid = threading.get_native_id()
            seen.append((tid, os.getpriority(os.PRIO_PROCESS, tid)))
            return password == "right"

    monkeypatch.setattr(users, "_hasher", Recorder())
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert users.password_matches("hash", "right")
    assert not users.password_matches("hash", "wrong")
    assert len(seen) == 2
    for tid, nice in seen:
        assert tid != threading.get_native_id()
        assert nice >= min(19, mine + users.PASSWORD_CHECK_NICENESS)
