"""Limits and nonces shared across replicas through a real Redis, and the fallback without it."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from requests_oauthlib import OAuth1

from csatdist.errors import StoreUnavailable, TooManyRequests
from csatdist.http import create_app
from csatdist.keys import issue_oauth_key
from csatdist.limits import RedisLimiter
from csatdist.oauth1 import RedisNonceCache
from csatdist.sealing import load_secret_box
from csatdist.store import Store
from tests.conftest import add_key, make_settings
from tests.helpers import FakeClock, bearer, free_port, live_server
from tests.test_limits import GatedStore, in_flight, query, wait_for

pytestmark = pytest.mark.redis


def dead_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


def test_limit_holds_across_two_replicas(store: Store, redis_url: str) -> None:
    gated = GatedStore(store)
    settings = make_settings(max_concurrent_requests=2, redis_url=redis_url)
    read = bearer(add_key(store, "acme", "read"))
    first = create_app(settings, store=gated, clock=FakeClock())  # type: ignore[arg-type]
    second = create_app(settings, store=gated, clock=FakeClock())  # type: ignore[arg-type]
    with live_server(first) as url_a, live_server(second) as url_b, ThreadPoolExecutor(4) as pool:
        gated.gate.clear()
        held = [pool.submit(query, url_a, read), pool.submit(query, url_a, read)]
        wait_for(lambda: in_flight() == 2)
        refused = query(url_b, read)  # the other replica sees the account's slots taken
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        gated.gate.set()
        assert [f.result().status_code for f in held] == [200, 200]
        assert query(url_b, read).status_code == 200  # and the slots came back


def test_leases_of_a_dead_replica_expire(redis_url: str) -> None:
    async def scenario() -> None:
        crashed = RedisLimiter(redis_url, 2, 10, lease_seconds=0.3)
        await crashed.acquire("acme")
        await crashed.acquire("acme")  # never released: the replica "dies" holding both
        survivor = RedisLimiter(redis_url, 2, 10, lease_seconds=0.3)
        with pytest.raises(TooManyRequests):
            await survivor.acquire("acme")
        await asyncio.sleep(0.4)
        lease = await survivor.acquire("acme")
        await survivor.release("acme", lease)
        await crashed.close()
        await survivor.close()

    asyncio.run(scenario())


def test_global_limit_across_accounts(redis_url: str) -> None:
    async def scenario() -> None:
        limiter = RedisLimiter(redis_url, 5, 2)
        leases = [await limiter.acquire("a"), await limiter.acquire("b")]
        with pytest.raises(TooManyRequests) as refused:
            await limiter.acquire("c")
        assert refused.value.scope == "global"
        for account, lease in zip("ab", leases, strict=True):
            await limiter.release(account, lease)
        await limiter.release("c", await limiter.acquire("c"))
        await limiter.close()

    asyncio.run(scenario())


def test_redis_down_falls_back_to_local_limits(store: Store) -> None:
    gated = GatedStore(store)
    settings = make_settings(max_concurrent_requests=1, redis_url=dead_redis_url())
    read = bearer(add_key(store, "acme", "read"))
    app = create_app(settings, store=gated, clock=FakeClock())  # type: ignore[arg-type]
    with live_server(app) as url, ThreadPoolExecutor(2) as pool:
        gated.gate.clear()
        held = pool.submit(query, url, read)
        wait_for(lambda: in_flight() == 1)
        assert query(url, read).status_code == 429  # this replica's own limit still holds
        gated.gate.set()
        assert held.result().status_code == 200
        metrics = httpx.get(url + "/metrics").text
        assert 'csatdist_limiter_fallbacks_total{policy="local"}' in metrics


def test_redis_down_with_reject_policy_is_503(store: Store) -> None:
    settings = make_settings(redis_url=dead_redis_url(), redis_fallback="reject")
    read = bearer(add_key(store, "acme", "read"))
    app = create_app(settings, store=store, clock=FakeClock())
    with live_server(app) as url:
        response = query(url, read)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "Redis" in response.json()["detail"]


def test_reject_policy_unit() -> None:
    async def scenario() -> None:
        limiter = RedisLimiter(dead_redis_url(), 1, 1, fallback="reject")
        with pytest.raises(StoreUnavailable):
            await limiter.acquire("a")
        await limiter.close()

    asyncio.run(scenario())


def test_nonce_replayed_on_another_replica_is_refused(
    store: Store, redis_url: str, tmp_path: Path
) -> None:
    key_file = tmp_path / "k.key"
    box = load_secret_box(None, key_file)
    app_key = issue_oauth_key("acme", frozenset({"read"}), "", 0, box)
    store.add_key(app_key.key)
    settings = make_settings(redis_url=redis_url, secret_key_file=str(key_file))
    auth = OAuth1(
        app_key.consumer_key,
        app_key.consumer_secret,
        app_key.token,
        app_key.token_secret,
        nonce="sharednonce123",
        timestamp=str(int(time.time())),
    )
    path = "/operations/api/account/acme/msgcsatdistribution?v=1&timeframe=5"
    with (
        live_server(create_app(settings, store=store)) as url_a,
        live_server(create_app(settings, store=store)) as url_b,
    ):
        # Each replica checks signatures against its own URL; sign for each as a proxy would.
        first = requests.get(url_a + path, auth=auth, timeout=10)
        assert first.status_code == 200, first.text
        prepared: Any = requests.Request("GET", url_b + path, auth=auth).prepare()
        replay = requests.Session().send(prepared, timeout=10)
    assert replay.status_code == 401
    assert replay.json()["oauth_problem"] == "nonce_used"


def test_redis_nonce_cache_falls_back_to_memory() -> None:
    cache = RedisNonceCache(dead_redis_url(), 300)
    assert cache.first_use("k", "t", "1", "n")
    assert not cache.first_use("k", "t", "1", "n")
