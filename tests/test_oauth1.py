"""OAuth 1.0a app keys, signed the way real clients sign (requests-oauthlib), over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from oauthlib.oauth1 import Client
from requests_oauthlib import OAuth1

from csatdist.http import create_app
from csatdist.keys import IssuedOAuthKey, issue_oauth_key
from csatdist.sealing import SecretBox, load_secret_box
from csatdist.store import Store
from tests.conftest import make_settings
from tests.helpers import live_server

QUERY = "/operations/api/account/{}/msgcsatdistribution"


@dataclass
class OAuthEnv:
    url: str
    store: Store
    box: SecretBox
    key: IssuedOAuthKey

    def auth(self, key: IssuedOAuthKey | None = None, **kwargs: object) -> OAuth1:
        k = key or self.key
        return OAuth1(k.consumer_key, k.consumer_secret, k.token, k.token_secret, **kwargs)

    def get(
        self, auth: OAuth1 | None = None, account: str = "acme", **params: object
    ) -> requests.Response:
        return requests.get(
            self.url + QUERY.format(account),
            params={"v": 1, "timeframe": 60, **params},
            auth=auth or self.auth(),
            timeout=10,
        )

    def new_key(self, account: str = "acme", scopes: str = "read") -> IssuedOAuthKey:
        issued = issue_oauth_key(account, frozenset(scopes.split(",")), "t", 0, self.box)
        self.store.add_key(issued.key)
        return issued


def serve(store: Store, tmp_path: Path, **settings: object) -> Iterator[OAuthEnv]:
    key_file = tmp_path / "server.key"
    box = load_secret_box(None, key_file)
    config = make_settings(secret_key_file=str(key_file), **settings)
    env_key = issue_oauth_key("acme", frozenset({"read", "write"}), "t", 0, box)
    store.add_key(env_key.key)
    with live_server(create_app(config, store=store)) as url:
        yield OAuthEnv(url, store, box, env_key)


@pytest.fixture
def oauth(store: Store, tmp_path: Path) -> Iterator[OAuthEnv]:
    yield from serve(store, tmp_path)


def problem(response: requests.Response) -> str:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    name: str = response.json()["oauth_problem"]
    assert f'oauth_problem="{name}"' in response.headers["WWW-Authenticate"]
    assert name in response.json()["detail"]
    return name


def test_three_legged_request_signed_by_requests_oauthlib(oauth: OAuthEnv) -> None:
    response = oauth.get(skillIds="1,2", agentIds=None)  # requests drops None, encodes %2C
    assert response.status_code == 200, response.text
    assert "skillsMetricsPerAgent" in response.json()


def test_two_legged_request_with_consumer_key_only(oauth: OAuthEnv) -> None:
    auth = OAuth1(oauth.key.consumer_key, oauth.key.consumer_secret)
    assert oauth.get(auth).status_code == 200


def test_ingest_signed_with_oauth1(oauth: OAuthEnv) -> None:
    answer = {"id": "o1", "time": int(time.time() * 1000), "score": 5}
    response = requests.post(
        oauth.url + "/api/account/acme/csat/answers",
        json={"answers": [answer]},
        auth=oauth.auth(),
        timeout=10,
    )
    assert response.json()["accepted"] == 1


def test_wrong_secret_is_signature_invalid(oauth: OAuthEnv) -> None:
    k = oauth.key
    assert problem(oauth.get(OAuth1(k.consumer_key, "0" * 32, k.token, k.token_secret))) == (
        "signature_invalid"
    )
    assert problem(oauth.get(OAuth1(k.consumer_key, k.consumer_secret, k.token, "0" * 32))) == (
        "signature_invalid"
    )


def test_unknown_consumer_key(oauth: OAuthEnv) -> None:
    auth = OAuth1("f" * 32, "0" * 32, "e" * 32, "0" * 32)
    assert problem(oauth.get(auth)) == "consumer_key_unknown"


def test_token_of_another_key_is_rejected(oauth: OAuthEnv) -> None:
    other = oauth.new_key()
    k = oauth.key
    auth = OAuth1(k.consumer_key, k.consumer_secret, other.token, other.token_secret)
    assert problem(oauth.get(auth)) == "token_rejected"


def test_stale_timestamp_is_refused(oauth: OAuthEnv) -> None:
    stale = str(int(time.time()) - 3600)
    assert problem(oauth.get(oauth.auth(timestamp=stale))) == "timestamp_refused"
    future = str(int(time.time()) + 3600)
    assert problem(oauth.get(oauth.auth(timestamp=future))) == "timestamp_refused"


def test_replayed_nonce_is_refused(oauth: OAuthEnv) -> None:
    auth = oauth.auth(nonce="replayme12345", timestamp=str(int(time.time())))
    assert oauth.get(auth).status_code == 200
    assert problem(oauth.get(auth)) == "nonce_used"


def test_key_of_another_account_is_refused(oauth: OAuthEnv) -> None:
    other = oauth.new_key(account="beta")
    assert problem(oauth.get(oauth.auth(other))) == "consumer_key_unknown"
    assert oauth.get(oauth.auth(other), account="beta").status_code == 200


def test_revoked_key_is_refused(oauth: OAuthEnv) -> None:
    oauth.store.revoke_key(oauth.key.consumer_key, 1)
    assert problem(oauth.get()) == "consumer_key_rejected"


def test_read_only_app_key_cannot_ingest(oauth: OAuthEnv) -> None:
    reader = oauth.new_key(scopes="read")
    response = requests.post(
        oauth.url + "/api/account/acme/csat/answers",
        json={"answers": []},
        auth=oauth.auth(reader),
        timeout=10,
    )
    assert response.status_code == 401
    assert "'write' scope" in response.json()["detail"]


def test_unsupported_signature_method(oauth: OAuthEnv) -> None:
    auth = oauth.auth(signature_method="PLAINTEXT")
    assert problem(oauth.get(auth)) == "signature_method_rejected"


def test_garbage_oauth_header(oauth: OAuthEnv) -> None:
    response = requests.get(
        oauth.url + QUERY.format("acme") + "?v=1&timeframe=5",
        headers={"Authorization": "OAuth garbage"},
        timeout=10,
    )
    assert response.status_code == 401


def signed_headers(env: OAuthEnv, uri: str) -> dict[str, str]:
    k = env.key
    client = Client(k.consumer_key, k.consumer_secret, k.token, k.token_secret)
    _, headers, _ = client.sign(uri, http_method="GET")
    return dict(headers)


def test_signature_covers_the_external_url_behind_a_proxy(store: Store, tmp_path: Path) -> None:
    public = "https://csat.example.com:8443"
    for env in serve(store, tmp_path, external_url=public):
        path = QUERY.format("acme") + "?v=1&timeframe=60&skillIds=1%2C2"
        # Signed for the URL the client saw (the proxy's), delivered to the server behind it.
        as_seen = requests.get(
            env.url + path, headers=signed_headers(env, public + path), timeout=10
        )
        assert as_seen.status_code == 200, as_seen.text
        local = requests.get(
            env.url + path, headers=signed_headers(env, env.url + path), timeout=10
        )
        assert problem(local) == "signature_invalid"


def test_secrets_are_sealed_at_rest(oauth: OAuthEnv) -> None:
    stored = oauth.store.find_key("acme", oauth.key.consumer_key)
    assert stored is not None
    assert stored.consumer_secret is not None
    assert stored.token_secret is not None
    assert oauth.key.consumer_secret.encode() not in stored.consumer_secret
    assert oauth.key.token_secret.encode() not in stored.token_secret
    assert oauth.box.open(stored.consumer_secret) == oauth.key.consumer_secret
