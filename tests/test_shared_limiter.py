"""The limits the workers of one server share (``csatdist.shared.SharedLimiter``) against a
naive model: a dict of every account's slots per worker, whatever the order of takes, give-backs
and dead workers. Small tables and many accounts, so that rows collide, chains wrap around the
table's end and rows are moved back when one before them empties."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csatdist.errors import TooManyRequests
from csatdist.http.runtime import build_runtime
from csatdist.limits import AnswerRate, ClientRate, RedisLimiter, Reservation
from csatdist.shared import (
    RATE_PROBES,
    STATE_VARIABLE,
    SharedAnswerRate,
    SharedClientRate,
    SharedLimiter,
    SharedLoginThrottle,
    SharedState,
    _hash64,
)
from csatdist.store.sqlite import SQLiteStore
from csatdist.users import LoginThrottle
from tests.conftest import make_settings
from tests.helpers import FakeClock

MIB = 1024 * 1024

_names = itertools.count()

ACCOUNTS = [f"account-{i}" for i in range(24)]

#: (what, worker, account): take, give back, or the worker dies and a new one takes its column.
steps = st.lists(
    st.tuples(
        st.sampled_from(["take", "take", "give", "die"]),
        st.integers(0, 2),
        st.sampled_from(ACCOUNTS),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(
    per_account=st.integers(1, 3),
    global_limit=st.integers(1, 8),
    script=steps,
)
def test_limits_match_a_model(
    tmp_path_factory: pytest.TempPathFactory, per_account: int, global_limit: int, script: list
) -> None:
    tmp = tmp_path_factory.mktemp("limiter")
    name = f"csatdist-test-{os.getpid()}-{next(_names)}"
    owner = SharedLimiter(name, per_account, global_limit, tmp / "l.lock", create=True)
    workers: list[SharedLimiter] = []
    try:
        for _ in range(3):
            workers.append(SharedLimiter(name, per_account, global_limit, tmp / "l.lock"))
        model: dict[int, dict[str, int]] = {w.column: {} for w in workers}

        def held(account: str) -> int:
            return sum(column.get(account, 0) for column in model.values())

        for what, index, account in script:
            worker = workers[index]
            slots = model[worker.column]
            if what == "take":
                in_all = sum(sum(column.values()) for column in model.values())
                refused = held(account) >= per_account or in_all >= global_limit
                if refused:
                    with pytest.raises(TooManyRequests):
                        worker.take(account)
                else:
                    worker.take(account)
                    slots[account] = slots.get(account, 0) + 1
            elif what == "give":
                worker.give_back(account)  # one it does not hold is ignored
                if slots.get(account):
                    slots[account] -= 1
            else:  # killed with slots held: a new worker in its place gives them back
                column = worker.column
                worker._pids[column] = 2**31 - 7  # a pid no process has
                worker._close()
                workers[index] = SharedLimiter(name, per_account, global_limit, tmp / "l.lock")
                assert workers[index].column == column
                model[column] = {}
            for other in ACCOUNTS:
                assert workers[0].in_flight_for(other) == held(other), other
    finally:
        for worker in workers:
            worker._close()
        owner.unlink()


def test_a_table_full_of_collisions_keeps_every_account(tmp_path: Path) -> None:
    """Eight accounts held at once in the smallest table (16 rows): every one found again,
    whichever empties first."""
    name = f"csatdist-test-{os.getpid()}-{next(_names)}"
    owner = SharedLimiter(name, 2, 8, tmp_path / "l.lock", create=True)
    worker = SharedLimiter(name, 2, 8, tmp_path / "l.lock")
    try:
        accounts = [f"a{i}" for i in range(8)]
        for account in accounts:
            worker.take(account)
        with pytest.raises(TooManyRequests, match="the service has 8"):
            worker.take("another")
        for gone in accounts[::2]:
            worker.give_back(gone)
        assert [worker.in_flight_for(a) for a in accounts] == [0, 1] * 4
        worker.take("a0")
        worker.take("a0")
        assert [worker.in_flight_for(a) for a in accounts] == [2, 1, 0, 1, 0, 1, 0, 1]
        worker.give_back("a1")  # a row emptied in the middle of a chain
        assert [worker.in_flight_for(a) for a in accounts] == [2, 0, 0, 1, 0, 1, 0, 1]
    finally:
        worker._close()
        owner.unlink()


def named_for_homes(homes: list[int], rows: int = 16) -> list[str]:
    """An account name for each home row (in a table of ``rows``), each name used once."""
    found: list[str] = []
    for home in homes:
        found.append(
            next(
                name
                for i in itertools.count()
                if ((_hash64(name := f"h{home}-{i}") >> 1) % rows == home) and name not in found
            )
        )
    return found


@pytest.mark.parametrize(
    ("homes", "emptied"),
    [
        ([3, 4, 3], 0),  # the next row stays (its home), the one after moves back past it
        ([14, 15, 14], 0),  # the chain wraps round the table's end; the last moves back
        ([14, 15, 0], 0),  # wrapped, each at its home: none moves
        ([5, 5, 5, 6], 1),  # the middle of a chain empties
    ],
)
def test_rows_after_an_emptied_one_are_found_again(
    tmp_path: Path, homes: list[int], emptied: int
) -> None:
    name = f"csatdist-test-{os.getpid()}-{next(_names)}"
    owner = SharedLimiter(name, 1, 8, tmp_path / "l.lock", create=True)  # 16 rows
    worker = SharedLimiter(name, 1, 8, tmp_path / "l.lock")
    try:
        accounts = named_for_homes(homes)
        for account in accounts:
            worker.take(account)
        worker.give_back(accounts[emptied])
        assert [worker.in_flight_for(a) for a in accounts] == [
            0 if i == emptied else 1 for i in range(len(accounts))
        ]
        for i, account in enumerate(accounts):
            if i != emptied:
                with pytest.raises(TooManyRequests, match="this account already has 1"):
                    worker.take(account)
    finally:
        worker._close()
        owner.unlink()


def test_a_worker_killed_midway_leaves_nothing_wrong_once_its_column_is_claimed(
    tmp_path: Path,
) -> None:
    """Killed between two updates: the total of all one too high, and a row moved back whose
    source was not emptied yet (the key twice). The worker that claims the dead one's column
    rebuilds the table from the counts, each account once."""
    name = f"csatdist-test-{os.getpid()}-{next(_names)}"
    owner = SharedLimiter(name, 3, 8, tmp_path / "l.lock", create=True)
    alive = SharedLimiter(name, 3, 8, tmp_path / "l.lock")
    alive._pids[alive.column] = 1  # another process, alive (init): its column stays its own
    dying = SharedLimiter(name, 3, 8, tmp_path / "l.lock")
    try:
        a, b = named_for_homes([3, 4])
        alive.take(a)
        alive.take(a)
        dying.take(b)
        row = alive._find(alive._key(a))
        width = 64  # MAX_WORKERS: a row's counts
        alive._hashes[row + 2] = alive._hashes[row]  # moved back, the source not yet emptied
        alive._counts[(row + 2) * width : (row + 3) * width] = alive._counts[
            row * width : (row + 1) * width
        ]
        dying._in_all[0] += 1  # its count of all raised, the row's not yet
        dying._pids[dying.column] = 2**31 - 7  # a pid no process has: dead
        dying._close()
        again = SharedLimiter(name, 3, 8, tmp_path / "l.lock")
        assert again.column == 1
        assert [again.in_flight_for(a), again.in_flight_for(b)] == [2, 0]
        assert again._in_all[0] == 2
        assert sum(1 for row in range(16) if again._hashes[row]) == 1
        again._close()
    finally:
        alive._close()
        owner.unlink()


@settings(max_examples=200, deadline=None)
@given(
    per_account=st.integers(1, 40),
    global_limit=st.integers(1, 100),
    script=st.lists(
        st.tuples(
            st.sampled_from(["take", "give"]), st.sampled_from(ACCOUNTS[:6]), st.integers(1, 30)
        ),
        max_size=120,
    ),
)
def test_amounts_match_a_model(
    tmp_path_factory: pytest.TempPathFactory, per_account: int, global_limit: int, script: list
) -> None:
    """Amounts (the memory budget's KiB): an account may take what keeps it within its limit
    and the total within the global one, or anything when it (or everyone) holds none; a
    give-back returns at most what was taken."""
    tmp = tmp_path_factory.mktemp("amounts")
    name = f"csatdist-test-{os.getpid()}-{next(_names)}"
    lock = tmp / "l.lock"
    owner = SharedLimiter(name, per_account, global_limit, lock, create=True, holders=6)
    worker = SharedLimiter(name, per_account, global_limit, lock, holders=6)
    model: dict[str, int] = {}
    try:
        for what, account, amount in script:
            held, in_all = model.get(account, 0), sum(model.values())
            if what == "take":
                refused = (held and held + amount > per_account) or (
                    in_all and in_all + amount > global_limit
                )
                if refused:
                    with pytest.raises(TooManyRequests):
                        worker.take(account, amount)
                else:
                    worker.take(account, amount)
                    model[account] = held + amount
            else:
                worker.give_back(account, amount)
                model[account] = max(0, held - amount)
            assert [worker.in_flight_for(a) for a in ACCOUNTS[:6]] == [
                model.get(a, 0) for a in ACCOUNTS[:6]
            ]
            assert worker.in_flight() == sum(model.values())
    finally:
        worker._close()
        owner.unlink()


@pytest.mark.parametrize("redis_url", [None, "redis://127.0.0.1:1/0"], ids=["alone", "redis"])
def test_a_workers_runtime_shares_this_machines_memory_password_checks_and_login_rates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str | None
) -> None:
    """Under ``serve --workers N`` the large replies' memory and the password checks are the
    machine's, shared by its workers, also when Redis holds the limits across machines (each
    worker had its own: two workers held twice the memory allowed, checked two passwords at
    once, each 64 MiB and a core, allowed a client and the server twice their rates, and a
    user name twice the failed logins before its lockout)."""
    settings = make_settings(
        redis_url=redis_url,
        login_max_failures=5,
        response_memory_mb=16,
        max_concurrent_logins=1,
        login_attempts_per_client_minute=3,
        password_checks_per_minute=5,
    )
    state = SharedState.create(settings, tmp_path)
    monkeypatch.setenv(STATE_VARIABLE, state.variable())
    stores = [SQLiteStore(tmp_path / "db.sqlite") for _ in range(2)]
    first, second = (build_runtime(settings, store, FakeClock()) for store in stores)
    try:
        assert isinstance(first.limiter, RedisLimiter if redis_url else SharedLimiter)
        Reservation(first.response_budget, "acme", threshold=1).hold(3 * MIB)
        with pytest.raises(TooManyRequests, match="already hold 3 MiB \\(limit 4 MiB\\)"):
            Reservation(second.response_budget, "acme", threshold=1).hold(2 * MIB)
        first.login_limiter.take("acme")
        with pytest.raises(TooManyRequests, match="1 password checks"):
            second.login_limiter.take("beta")
        first.login_limiter.give_back("acme")
        second.login_limiter.take("beta")
        for runtime in (first, second, first):
            runtime.login_rate.take("192.0.2.7")
        with pytest.raises(TooManyRequests, match="login attempts from this client"):
            second.login_rate.take("192.0.2.7")
        second.login_rate.take("192.0.2.8")  # another client's own
        for runtime in (first, second, first, second, first):
            runtime.password_rate.take("*")
        with pytest.raises(TooManyRequests, match="password checks on this server"):
            second.password_rate.take("*")
        for runtime in (first, second) * 2 + (first,):
            runtime.login_throttle.check("acme", "ana")
            runtime.login_throttle.failed("acme", "ana")
        with pytest.raises(TooManyRequests, match="too many failed logins for this user"):
            second.login_throttle.check("acme", "ana")
    finally:
        for runtime in (first, second):
            asyncio.run(runtime.close())
        for store in stores:
            store.close()
        state.unlink()
    for runtime in (first, second):  # a stopping worker detaches from every segment
        shared = runtime.shared
        assert shared is not None
        tables = [shared.login_rate, shared.password_rate, shared.login_failures, shared.nonces]
        tables += [shared.response_memory.slots, shared.answer_rate, *shared.limiters.values()]
        assert all(table is not None and table._region.closed for table in tables)


CLIENTS = [f"198.51.100.{i}" for i in range(12)]


@settings(max_examples=200, deadline=None)
@given(
    per_minute=st.integers(1, 5),
    script=st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from(CLIENTS), st.floats(0, 40)), max_size=80
    ),
)
def test_shared_client_rates_match_one_process_rate(
    tmp_path_factory: pytest.TempPathFactory, per_minute: int, script: list
) -> None:
    """Three workers taking a client's attempts in any order, over time, allow and refuse
    exactly what one process's rate would for all of them (with the same wait)."""
    tmp = tmp_path_factory.mktemp("rate")
    name = f"csatdist-test-{os.getpid()}-{next(_names)}"
    now = [1000.0]

    def clock() -> float:
        return now[0]

    owner = SharedClientRate(name, per_minute, tmp / "r.lock", create=True, monotonic=clock)
    workers = [
        SharedClientRate(name, per_minute, tmp / "r.lock", monotonic=clock) for _ in range(3)
    ]
    model = ClientRate(per_minute, monotonic=clock)
    try:
        for worker, client, later in script:
            now[0] += later
            expected = outcome(model, client)
            assert outcome(workers[worker], client) == expected
    finally:
        for worker in workers:
            worker.close()
        owner.close(unlink=True)


def outcome(rate: ClientRate | SharedClientRate, client: str) -> int | None:
    """None when the attempt is allowed, else the seconds ``Retry-After`` gives."""
    try:
        rate.take(client)
    except TooManyRequests as refused:
        return refused.retry_after
    return None


def test_a_shared_rate_table_stays_its_size_and_forgets_the_idlest(tmp_path: Path) -> None:
    """100,000 clients fill a table of 32 rows (16 clients at most, the setting): it holds 32
    and no more, and a client whose row went to another starts again with a full bucket."""
    now = [0.0]
    name = f"csatdist-test-{os.getpid()}-{next(_names)}"
    rate = SharedClientRate(
        name, 1, tmp_path / "r.lock", create=True, max_clients=16, monotonic=lambda: now[0]
    )
    try:
        rate.take("first")
        with pytest.raises(TooManyRequests, match="retry in 60 s"):
            rate.take("first")
        assert len(rate._hashes) == RATE_PROBES  # every row within reach of every client
        for i in range(100_000):
            now[0] += 0.0001  # 10 s in all: not long enough to refill "first"
            rate.take(f"client-{i}")  # each new, so each allowed
        assert len(rate) == 32
        rate.take("first")  # forgotten: its row went to another client, idle less long
    finally:
        rate.close(unlink=True)


USERS = [("acme", "ana"), ("acme", "bo"), ("beta", "ana"), ("beta", "cy")]


@settings(max_examples=200, deadline=None)
@given(
    max_failures=st.integers(1, 4),
    script=st.lists(
        st.tuples(
            st.sampled_from(["check", "failed", "failed", "succeeded"]),
            st.integers(0, 2),
            st.sampled_from(USERS),
            st.floats(0, 400),
        ),
        max_size=80,
    ),
)
def test_shared_failed_logins_match_one_process_throttle(
    tmp_path_factory: pytest.TempPathFactory, max_failures: int, script: list
) -> None:
    """Three workers seeing a user's failed and good logins in any order, over time, lock it
    out exactly when one process's throttle would for all of them (with the same wait)."""
    tmp = tmp_path_factory.mktemp("throttle")
    name = f"csatdist-test-{os.getpid()}-{next(_names)}"
    now = [5000.0]

    def clock() -> float:
        return now[0]

    def attach(create: bool = False) -> SharedLoginThrottle:
        return SharedLoginThrottle(
            name, max_failures, 900, tmp / "t.lock", create=create, monotonic=clock
        )

    owner = attach(create=True)
    workers = [attach() for _ in range(3)]
    model = LoginThrottle(max_failures, 900, monotonic=clock)
    try:
        for what, worker, (account, user), later in script:
            now[0] += later
            if what == "check":
                expected = locked_out(model, account, user)
                assert locked_out(workers[worker], account, user) == expected
            else:
                getattr(model, what)(account, user)
                getattr(workers[worker], what)(account, user)
    finally:
        for worker in workers:
            worker.close()
        owner.close(unlink=True)


def locked_out(
    throttle: LoginThrottle | SharedLoginThrottle, account: str, user: str
) -> int | None:
    try:
        throttle.check(account, user)
    except TooManyRequests as refused:
        return refused.retry_after
    return None


def test_a_flood_of_other_names_never_clears_a_lockout(tmp_path: Path) -> None:
    """In a table of 32 rows (16 names, the setting), every row is within reach of every name,
    as if an attacker had chosen names that meet: the locked name keeps its lockout through
    1,000 failed logins with other names, which are refused (429) once the rows are full
    of failures still in the window, rather than take hers."""
    now = [1000.0]
    name = f"csatdist-test-{os.getpid()}-{next(_names)}"
    throttle = SharedLoginThrottle(
        name, 2, 900, tmp_path / "t.lock", create=True, max_entries=16, monotonic=lambda: now[0]
    )
    try:
        throttle.failed("acme", "ana")
        throttle.failed("acme", "ana")
        refusals = []
        for i in range(1000):
            now[0] += 1 if i < 31 else 0.001  # 31 names fill the rows; then 969 more come
            try:
                throttle.check("acme", f"guess-{i}")
                throttle.failed("acme", f"guess-{i}")
            except TooManyRequests as refused:
                refusals.append(str(refused))
        assert len(throttle) == 32
        assert refusals == ["too many user names failed to log in lately; retry in 869 s"] * 969
        with pytest.raises(TooManyRequests, match="too many failed logins for this user"):
            throttle.check("acme", "ana")
        now[0] = 1900.5  # ana's failures have left the window: her row is the one free
        throttle.failed("acme", "newcomer")
        with pytest.raises(TooManyRequests, match="retry in 1 s"):
            throttle.check("acme", "ana")  # no failures now, but no row to count one in
        now[0] += 1
        throttle.check("acme", "ana")
        for i in range(10_000):  # one new name every 30 s: at most 30 in the window
            now[0] += 30
            throttle.failed("acme", f"later-{i}")
        assert len(throttle) == 32
        throttle.succeeded("acme", "later-9999")
        assert len(throttle) == 31
    finally:
        throttle.close(unlink=True)


def test_the_tables_clients_fill_are_hashed_with_the_servers_own_key(tmp_path: Path) -> None:
    """Each server's segments get a random key, which its workers read: names that meet in
    one server's table cannot be worked out offline, and the workers agree on every row."""
    first, second = (
        SharedState(
            f"csatdist-test-{os.getpid()}-{next(_names)}", tmp_path, make_settings(), create=True
        )
        for _ in range(2)
    )
    worker = SharedState(first.prefix, tmp_path, make_settings(), create=False)
    try:
        keys = {first.login_failures._secret, second.login_failures._secret}
        keys |= {first.login_rate._secret, first.password_rate._secret}
        assert len(keys) == 4
        assert {len(key) for key in keys} == {32}
        assert worker.login_failures._secret == first.login_failures._secret
        assert worker.login_rate._secret == first.login_rate._secret
        assert first.login_failures._key("acme", "ana") != second.login_failures._key("acme", "ana")
    finally:
        worker.close()
        worker.close()  # detaching twice is harmless
        first.unlink()
        second.unlink()


def test_threads_of_one_worker_take_turns_in_the_shared_table(tmp_path: Path) -> None:
    """The file lock belongs to the open file, so a worker's threads (the memory budget is
    reserved from pool threads) need a lock of their own besides: without it, six threads
    taking and giving back left the total at -6."""
    import threading

    name = f"csatdist-test-{os.getpid()}-{next(_names)}"
    owner = SharedLimiter(name, 1000, 1000, tmp_path / "l.lock", create=True)
    worker = SharedLimiter(name, 1000, 1000, tmp_path / "l.lock")

    def churn() -> None:
        for _ in range(3000):
            worker.take("acme", 3)
            worker.give_back("acme", 3)

    try:
        threads = [threading.Thread(target=churn) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert worker.in_flight() == 0
        assert worker.in_flight_for("acme") == 0
    finally:
        worker._close()
        owner.unlink()


@settings(max_examples=200, deadline=None)
@given(
    per_second=st.integers(1, 50),
    burst=st.integers(1, 40),
    script=st.lists(
        st.tuples(
            st.integers(0, 2),
            st.sampled_from(["acme", "beta", "gamma"]),
            st.integers(0, 60),  # 0: admit; else charge that many
            st.floats(0, 3),
        ),
        max_size=80,
    ),
)
def test_shared_answer_rates_match_one_process_rate(
    tmp_path_factory: pytest.TempPathFactory, per_second: int, burst: int, script: list
) -> None:
    """Three workers admitting and charging accounts' answers in any order, over time, refuse
    exactly when one process's rate would (with the same wait), debts included."""
    tmp = tmp_path_factory.mktemp("answers")
    name = f"csatdist-test-{os.getpid()}-{next(_names)}"
    now = [1000.0]

    def clock() -> float:
        return now[0]

    owner = SharedAnswerRate(name, per_second, burst, tmp / "a.lock", create=True, monotonic=clock)
    workers = [
        SharedAnswerRate(name, per_second, burst, tmp / "a.lock", monotonic=clock) for _ in range(3)
    ]
    model = AnswerRate(per_second, burst, monotonic=clock)
    try:
        for worker, account, amount, later in script:
            now[0] += later
            if amount:
                model.charge(account, amount)
                workers[worker].charge(account, amount)
            else:
                assert admitted(workers[worker], account) == admitted(model, account)
    finally:
        for worker in workers:
            worker.close()
        owner.close(unlink=True)


def admitted(rate: AnswerRate | SharedAnswerRate, account: str) -> int | None:
    """None when the account may write, else the seconds ``Retry-After`` gives."""
    try:
        rate.admit(account)
    except TooManyRequests as refused:
        return refused.retry_after
    return None


def test_an_answer_rate_refuses_past_its_debt_with_the_wait() -> None:
    """A batch is counted whole even past what the bucket holds; the account then waits until
    the debt is paid and one answer is there."""
    now = [0.0]
    rate = AnswerRate(100, 1000, monotonic=lambda: now[0])
    rate.admit("acme")
    rate.charge("acme", 1000)
    rate.charge("acme", 500)  # a second request admitted at once: 500 owed
    with pytest.raises(TooManyRequests, match="retry in 6 s") as refused:
        rate.admit("acme")  # (500 + 1) / 100 a second
    assert refused.value.retry_after == 6
    rate.admit("beta")
    now[0] = 5.0
    with pytest.raises(TooManyRequests):
        rate.admit("acme")
    now[0] = 5.02
    rate.admit("acme")
