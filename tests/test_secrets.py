"""Secrets stay secret: a full run of a real server and the CLI — keys, OAuth app keys, users,
logins (right and wrong), ingest, queries, refused credentials — and then every log line and
every byte of the database is searched for each secret. None may appear."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest
from oauthlib.oauth1 import Client as OAuthSigner

from tests.helpers import bearer, csatdist_cli, start_server

PASSWORD = "correct horse battery staple"


def secret_parts(token: str) -> list[str]:
    """A token and its secret part (csd_<id>_<secret>): neither may be logged or stored."""
    return [token, token.split("_", 2)[2]]


@pytest.mark.slow
def test_no_secret_is_logged_or_stored_in_clear(tmp_path: Path) -> None:
    database = tmp_path / "secrets.db"
    env = {"CSATDIST_SECRET_KEY_FILE": str(tmp_path / "seal.key")}
    outputs: list[str] = []

    def cli(*args: str, stdin: str | None = None) -> dict[str, str]:
        result = csatdist_cli(*args, "--database", str(database), env=env, stdin=stdin)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stderr)  # stdout shows a new secret once, on purpose
        document: dict[str, str] = orjson.loads(result.stdout) if result.stdout.strip() else {}
        return document

    key = cli("keys", "create", "--account", "acme", "--scopes", "read,write", "--json")["token"]
    app_key = cli("keys", "create", "--account", "acme", "--oauth1", "--json")
    cli(
        "users",
        "create",
        "--account",
        "acme",
        "--username",
        "sup",
        "--json",
        stdin=PASSWORD + "\n",
    )
    listed = csatdist_cli("keys", "list", "--json", "--database", str(database), env=env)
    outputs.append(listed.stdout + listed.stderr)

    log_path = tmp_path / "server.log"
    server = start_server(database, log_path, "--log-level", "debug", env=env)
    try:
        base = server.url
        query = f"{base}/operations/api/account/acme/msgcsatdistribution"
        answers = {"answers": [{"id": "s1", "time": 1, "score": 5}]}
        httpx.post(f"{base}/api/account/acme/csat/answers", json=answers, headers=bearer(key))
        assert (
            httpx.get(query, params={"v": 1, "timeframe": 60}, headers=bearer(key)).status_code
            == 200
        )
        login = httpx.post(
            f"{base}/api/account/acme/login?v=1.3", json={"username": "sup", "password": PASSWORD}
        )
        session = login.json()["bearer"]
        httpx.post(
            f"{base}/api/account/acme/login?v=1.3",
            json={"username": "sup", "password": PASSWORD + "-wrong"},
        )
        assert (
            httpx.get(query, params={"v": 1, "timeframe": 60}, headers=bearer(session)).status_code
            == 200
        )
        signer = OAuthSigner(
            app_key["consumer_key"],
            client_secret=app_key["consumer_secret"],
            resource_owner_key=app_key["token"],
            resource_owner_secret=app_key["token_secret"],
        )
        url = f"{query}?v=1&timeframe=60"
        _, headers, _ = signer.sign(url, "GET")
        assert httpx.get(url, headers=headers).status_code == 200
        assert httpx.get(url, headers=headers).status_code == 401  # replayed: refused, logged
        wrong = key[:-4] + "AAAA"  # a presented (wrong) secret must not be echoed either
        assert (
            httpx.get(query, params={"v": 1, "timeframe": 60}, headers=bearer(wrong)).status_code
            == 401
        )
    finally:
        server.stop()

    secrets = [
        *secret_parts(key),
        *secret_parts(session),
        *secret_parts(wrong),
        PASSWORD,
        app_key["consumer_secret"],
        app_key["token_secret"],
    ]
    log_text = log_path.read_text()
    assert '"status": 200' in log_text or '"status":200' in log_text  # the log has the requests
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("secrets.db*") if path.is_file())
    for secret in secrets:
        assert secret not in log_text, "a secret is in the server log"
        assert all(secret not in output for output in outputs), "a secret is in CLI stderr/list"
        assert secret.encode() not in stored, "a secret is stored in clear"
