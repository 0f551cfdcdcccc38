"""Failed logins counted in Redis (``csatdist.redis_logins.RedisLoginThrottle``): replicas
sharing one Redis lock a user name out together, exactly when one process's throttle would, and
fall back to the machine's own throttle while Redis cannot be reached."""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csatdist.errors import TooManyRequests
from csatdist.http.app import create_app
from csatdist.redis_logins import WARNING_INTERVAL_SECONDS, RedisLoginThrottle
from csatdist.store.sqlite import SQLiteStore
from csatdist.users import LoginThrottle, Throttle
from tests.conftest import make_settings
from tests.helpers import FakeClock, free_port
from tests.services import private_redis

pytestmark = pytest.mark.redis

USERS = [("acme", "ana"), ("acme", "bo"), ("beta", "ana"), ("beta", "cy")]

_prefixes = itertools.count()


def locked_out(throttle: Throttle, account: str, user: str) -> tuple[str, int | None] | None:
    """The 429 a check raises (its message and Retry-After), or None when the login may go on."""
    try:
        throttle.check(account, user)
    except TooManyRequests as refused:
        return str(refused), refused.retry_after
    return None


def dead_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    max_failures=st.integers(1, 4),
    window=st.sampled_from([10.0, 900.0]),
    script=st.lists(
        st.tuples(
            st.sampled_from(["check", "failed", "failed", "succeeded"]),
            st.integers(0, 2),
            st.sampled_from(USERS),
            # Whole 64ths of a second: exact in binary and in microseconds alike, so the
            # model's float times and Redis's integer ones give the same Retry-After; 0 puts
            # two failures in the same microsecond, and the round steps reach the window's
            # very end (a failure leaves it a whole window later, not a microsecond after).
            st.one_of(
                st.sampled_from([0.0, 5.0, 10.0, 450.0, 900.0]),
                st.integers(0, 400 * 64).map(lambda k: k / 64),
            ),
        ),
        max_size=80,
    ),
)
def test_replicas_sharing_redis_match_one_process_throttle(
    redis_url: str,
    max_failures: int,
    window: float,
    script: list[tuple[str, int, tuple[str, str], float]],
) -> None:
    """Three replicas seeing a user's failed and good logins in any order, over time, lock it
    out exactly when one process's throttle fed every event would (with the same message and
    Retry-After). Time is the scripts' test hook, moved as the model's clock is."""
    now = [5000.0]

    def clock() -> float:
        return now[0]

    prefix = f"model-{next(_prefixes)}"  # each example its own keys; the test's Redis is empty
    replicas = [
        RedisLoginThrottle(
            redis_url,
            max_failures,
            window,
            fallback=LoginThrottle(max_failures, window, monotonic=clock),
            prefix=prefix,
            script_time=clock,
        )
        for _ in range(3)
    ]
    model = LoginThrottle(max_failures, window, monotonic=clock)
    try:
        for what, replica, (account, user), later in script:
            now[0] += later
            if what == "check":
                assert locked_out(replicas[replica], account, user) == locked_out(
                    model, account, user
                )
            else:
                getattr(model, what)(account, user)
                getattr(replicas[replica], what)(account, user)
    finally:
        for replica in replicas:
            replica.close()


def test_a_failure_leaves_the_window_a_whole_window_later(redis_url: str) -> None:
    """As in one process's throttle, a failure counts until a whole window has passed, to the
    microsecond, and two in the same microsecond count twice."""
    now = [2000.0]
    throttle = RedisLoginThrottle(
        redis_url, 2, 10, fallback=LoginThrottle(2, 10), script_time=lambda: now[0]
    )
    try:
        throttle.failed("acme", "ana")
        throttle.failed("acme", "ana")  # the same microsecond
        now[0] += 10 - 1e-6
        with pytest.raises(TooManyRequests, match="retry in 1 s"):
            throttle.check("acme", "ana")
        now[0] = 2010.0
        throttle.check("acme", "ana")
    finally:
        throttle.close()


def test_two_replicas_failures_add_up_to_one_lockout(redis_url: str) -> None:
    """Failures on two replicas count together (Redis's own clock, no hook): the third locks the
    name out on both, where each machine's own throttle, having seen one or two, would not."""
    machines = [LoginThrottle(3, 900), LoginThrottle(3, 900)]
    first, second = (RedisLoginThrottle(redis_url, 3, 900, fallback=m) for m in machines)
    try:
        first.failed("acme", "ana")
        second.failed("acme", "ana")
        first.failed("acme", "ana")
        for replica in (first, second):
            with pytest.raises(TooManyRequests, match="too many failed logins") as refused:
                replica.check("acme", "ana")
            assert refused.value.retry_after in {899, 900, 901}  # from Redis's clock
        for machine in machines:
            machine.check("acme", "ana")  # the bug this fixes: per machine, no lockout
        first.check("acme", "bo")  # other names, other accounts: untouched
        first.check("beta", "ana")
        second.succeeded("acme", "ana")  # a good login on either clears it for both
        first.check("acme", "ana")
        second.check("acme", "ana")
    finally:
        first.close()
        second.close()


def test_a_key_per_name_expires_within_the_window(redis_url: str) -> None:
    """One bounded key per name, named by a digest (not the name, whatever it holds), with at
    most max_failures members and an expiry of at most the window; a success deletes it."""
    throttle = RedisLoginThrottle(redis_url, 2, 900, fallback=LoginThrottle(2, 900))
    client = redis.Redis.from_url(redis_url)
    odd = ["ana", "x" * 10_000, "nul\x00byte", "lone\ud800surrogate", "{brace}", "ümlaut"]
    try:
        for name in odd:
            for _ in range(5):
                throttle.failed("acme", name)
        keys = sorted(k.decode() for k in client.scan_iter("*"))
        assert keys == sorted(throttle.key("acme", name) for name in odd)
        for key in keys:
            assert key.startswith("{csatdist}:logins:")
            assert len(key) == len("{csatdist}:logins:") + 32
            assert client.zcard(key) == 2
            assert 0 < client.pttl(key) <= 900_000
        with pytest.raises(TooManyRequests):
            throttle.check("acme", "lone\ud800surrogate")
        throttle.succeeded("acme", "lone\ud800surrogate")
        assert not client.exists(throttle.key("acme", "lone\ud800surrogate"))
        throttle.check("acme", "lone\ud800surrogate")
    finally:
        throttle.close()
        client.close()


def test_redis_forgets_an_idle_name_by_itself(redis_url: str) -> None:
    """A name's key expires a window after its last failure, with no one asking about it."""
    throttle = RedisLoginThrottle(redis_url, 1, 0.3, fallback=LoginThrottle(1, 0.3))
    client = redis.Redis.from_url(redis_url)
    try:
        throttle.failed("acme", "ana")
        with pytest.raises(TooManyRequests, match="retry in 1 s"):
            throttle.check("acme", "ana")
        assert client.dbsize() == 1
        time.sleep(0.4)
        assert client.dbsize() == 0
        throttle.check("acme", "ana")
    finally:
        throttle.close()
        client.close()


def test_unreachable_redis_falls_back_to_the_machines_throttle(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With no Redis, every call uses the machine's own throttle, which still locks the name
    out after max_failures; the outage is logged once a minute, not once a login."""
    now = [1000.0]
    machine = LoginThrottle(3, 900, monotonic=lambda: now[0])
    throttle = RedisLoginThrottle(
        dead_redis_url(), 3, 900, fallback=machine, monotonic=lambda: now[0]
    )
    try:
        with caplog.at_level(logging.WARNING, logger="csatdist.logins"):
            for _ in range(3):
                throttle.check("acme", "ana")
                throttle.failed("acme", "ana")
            with pytest.raises(TooManyRequests, match="retry in 901 s"):  # no time passed
                throttle.check("acme", "ana")
            warnings = [r.getMessage() for r in caplog.records]
            assert len(warnings) == 1
            assert warnings[0].startswith("Redis unreachable")
            now[0] += WARNING_INTERVAL_SECONDS
            throttle.succeeded("acme", "ana")
            throttle.check("acme", "ana")
            warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 2
        assert "(7 call(s) fell back since the last warning)" in warnings[1]
    finally:
        throttle.close()


@pytest.mark.slow
def test_redis_killed_mid_sequence_keeps_what_the_machine_saw() -> None:
    """Redis dies after two failures: the third, counted by the machine's throttle alone, locks
    the name out, since that throttle had recorded the first two as well. Once Redis is back
    (empty: the private server keeps nothing), the replicas count in it again."""
    with private_redis() as server:
        machine = LoginThrottle(3, 900)
        throttle = RedisLoginThrottle(server.url, 3, 900, fallback=machine)
        other = RedisLoginThrottle(server.url, 3, 900, fallback=LoginThrottle(3, 900))
        try:
            throttle.failed("acme", "ana")
            throttle.failed("acme", "ana")
            throttle.check("acme", "ana")
            server.stop()
            throttle.failed("acme", "ana")
            with pytest.raises(TooManyRequests, match="too many failed logins"):
                throttle.check("acme", "ana")
            server.start()
            throttle.check("acme", "ana")  # Redis answers again, and it lost the failures
            for _ in range(3):
                other.failed("acme", "bo")
            with pytest.raises(TooManyRequests, match="too many failed logins"):
                throttle.check("acme", "bo")
        finally:
            throttle.close()
            other.close()


def test_a_full_machine_table_does_not_stop_redis_counting(redis_url: str) -> None:
    """While Redis answers, a failure the machine's table has no room for is still counted (in
    Redis), and no check is refused for the table being full."""
    machine = LoginThrottle(2, 900, max_entries=1)
    throttle = RedisLoginThrottle(redis_url, 2, 900, fallback=machine)
    try:
        throttle.failed("acme", "ana")  # fills the machine's table
        throttle.failed("acme", "bo")
        throttle.failed("acme", "bo")
        with pytest.raises(TooManyRequests, match="too many failed logins for this user"):
            throttle.check("acme", "bo")
        throttle.check("acme", "cy")
        assert len(machine) == 1
    finally:
        throttle.close()


def test_replicas_configured_with_redis_lock_a_name_out_together(
    redis_url: str, tmp_path: Path
) -> None:
    """Two servers (each its own store and no shared memory: two machines) configured with one
    Redis: failed logins through either add up to the lockout, through the HTTP login route."""
    settings = make_settings(redis_url=redis_url, login_max_failures=3)
    stores = [SQLiteStore(tmp_path / f"{n}.sqlite") for n in range(2)]
    apps = [create_app(settings, store=store, clock=FakeClock()) for store in stores]
    with TestClient(apps[0]) as first, TestClient(apps[1]) as second:
        route = "/api/account/acme/login"
        replies = [
            client.post(route, json={"username": "ana", "password": "wrong password"})
            for client in (first, second, first, second)
        ]
        assert [reply.status_code for reply in replies] == [401, 401, 401, 429]
        assert "too many failed logins for this user" in replies[-1].text
    for store in stores:
        store.close()
