"""What the routes share for the life of a server: settings, the store, the clock, the limiters
and caches, built once when the app starts."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from csatdist.aggregates import AggregateCache
from csatdist.alerting import AlertNudges, AlertPolicy
from csatdist.auth import Authenticator
from csatdist.clock import Clock
from csatdist.limits import (
    AnswerRate,
    AnswerRates,
    Budget,
    ClientRate,
    HeavyTurns,
    Limiter,
    LocalLimiter,
    MemoryBudget,
    Rate,
    RedisLimiter,
)
from csatdist.memo import Rendered, ResponseMemo
from csatdist.oauth1 import MemoryNonceCache, NonceCache, RedisNonceCache
from csatdist.push import Snapshots
from csatdist.query import DistributionQuery
from csatdist.redis_logins import RedisLoginThrottle
from csatdist.sealing import SecretBox, load_secret_box
from csatdist.service import render_distribution
from csatdist.settings import Settings, answer_burst
from csatdist.shared import SharedLimiter, SharedState
from csatdist.store import OutboxLimits, PointReads, Store
from csatdist.users import LoginThrottle, Throttle, failed_names_bound
from csatdist.webhooks import parse_allow_list


@dataclass
class Runtime:
    """What the routes share: settings, the store, the clock, limiters and caches."""

    settings: Settings
    store: Store
    clock: Clock
    limiter: Limiter
    aggregates: AggregateCache
    memo: ResponseMemo
    authenticator: Authenticator
    login_throttle: Throttle
    stream_limiter: Limiter
    snapshots: Snapshots
    ingest_limiter: Limiter
    export_limiter: Limiter
    #: Password checks running at once (this machine's CPU and memory: shared by its workers,
    #: never across machines).
    login_limiter: LocalLimiter | SharedLimiter
    login_rate: Rate
    password_rate: Rate
    #: Answers written per account and second (None: no limit).
    answer_rate: AnswerRates | None
    response_budget: Budget
    #: Large bodies, their sums and large ingest bodies: one at a time, accounts in turn, and
    #: in one of the server's places for heavy work.
    heavy_work: HeavyTurns
    alert_policy: AlertPolicy
    secret_box: Callable[[], SecretBox]
    #: Told of writes that change counts and of saved rules: the alert loop looks at once.
    alert_nudges: AlertNudges
    warm_up: WarmUp
    #: Runs the server's single background jobs (the first worker of several; the only one).
    primary: bool = True
    #: Version and credential reads awaited on the event loop (PostgreSQL; None for SQLite,
    #: whose point reads are made inline): open for as long as the server runs.
    point_reads: PointReads | None = None
    #: The segments shared with the other workers of a ``serve --workers N``, if any.
    shared: SharedState | None = None

    async def close(self) -> None:
        limiters = (self.limiter, self.stream_limiter, self.ingest_limiter, self.export_limiter)
        for limiter in limiters:
            await limiter.close()
        if isinstance(self.login_throttle, RedisLoginThrottle):
            self.login_throttle.close()
        if self.shared:
            self.shared.close()


def build_runtime(settings: Settings, store: Store, clock: Clock) -> Runtime:
    # Workers of one `serve --workers N` share their limits and nonces (Redis, when set,
    # shares those across machines instead), and always this machine's memory budget of large
    # replies, its password checks, its login rates and its failed logins.
    shared = SharedState.from_environment(settings)
    cross = None if settings.redis_url else shared
    aggregates = AggregateCache(store)
    box = secret_box_loader(settings)
    memo = ResponseMemo(settings.response_cache_mb * 1024 * 1024)
    # A worker's heavy pieces wait for one of the server's places too (none in one process).
    heavy_work = HeavyTurns(shared.heavy_places if shared else None)

    async def compute(account_id: str, query: DistributionQuery) -> Rendered:
        return await run_in_threadpool(
            functools.partial(render_distribution, heavy_work=heavy_work),
            aggregates,
            memo,
            account_id,
            query,
            clock(),
        )

    return Runtime(
        settings=settings,
        store=store,
        clock=clock,
        limiter=cross.limiters["queries"] if cross else make_limiter(settings),
        aggregates=aggregates,
        memo=memo,
        authenticator=Authenticator(
            store,
            box,
            clock,
            settings.oauth_timestamp_window_seconds,
            nonces=cross.nonces if cross else make_nonce_cache(settings),
            cache_seconds=settings.auth_cache_seconds,
        ),
        login_throttle=make_login_throttle(settings, shared),
        stream_limiter=cross.limiters["streams"] if cross else make_stream_limiter(settings),
        snapshots=Snapshots(compute, max_age=settings.stream_period_seconds / 2),
        ingest_limiter=cross.limiters["ingest"] if cross else make_ingest_limiter(settings),
        export_limiter=cross.limiters["exports"]
        if cross
        else make_work_limiter(
            settings,
            "exports",
            settings.max_concurrent_exports,
            settings.max_concurrent_exports_global,
            lease_seconds=max(settings.redis_lease_seconds, 600.0),
        ),
        login_limiter=shared.limiters["logins"]
        if shared
        else LocalLimiter(
            settings.max_concurrent_logins, settings.max_concurrent_logins, noun="password checks"
        ),
        login_rate=shared.login_rate
        if shared
        else ClientRate(settings.login_attempts_per_client_minute, noun="login attempts"),
        password_rate=shared.password_rate
        if shared
        else ClientRate(
            settings.password_checks_per_minute, noun="password checks", scope="global"
        ),
        answer_rate=(shared.answer_rate if shared else make_answer_rate(settings)),
        response_budget=shared.response_memory
        if shared
        else MemoryBudget(
            settings.response_memory_mb * 1024 * 1024,
            settings.response_memory_mb * 1024 * 1024 // 4,
        ),
        heavy_work=heavy_work,
        alert_policy=alert_policy(settings),
        secret_box=box,
        alert_nudges=AlertNudges(),
        warm_up=WarmUp(),
        primary=shared.primary if shared else True,
        shared=shared,
    )


@dataclass
class WarmUp:
    """Progress of the start-up warm-up of the in-memory counters (:func:`warm_up`)."""

    done: bool = False
    loaded: int = 0
    planned: int = 0


def alert_policy(settings: Settings) -> AlertPolicy:
    return AlertPolicy(
        allow=parse_allow_list(settings.webhook_allow),
        max_rules=settings.max_alert_rules,
        max_ids=settings.max_ids_per_list,
        outbox=OutboxLimits(
            settings.max_pending_deliveries, settings.max_pending_deliveries_global
        ),
    )


def make_answer_rate(settings: Settings) -> AnswerRate | None:
    """One process's answers per account and second (the workers of a server share theirs)."""
    if not settings.ingest_answers_per_second:
        return None
    return AnswerRate(settings.ingest_answers_per_second, answer_burst(settings))


def make_login_throttle(settings: Settings, shared: SharedState | None) -> Throttle:
    """Failed logins per user name: counted in Redis for every replica when it is set (this
    machine's count kept besides, for when Redis cannot be reached), else by this machine's
    workers together, else by this process."""
    machine: Throttle = (
        shared.login_failures
        if shared
        else LoginThrottle(
            settings.login_max_failures,
            settings.login_lockout_seconds,
            max_entries=failed_names_bound(
                settings.password_checks_per_minute, settings.login_lockout_seconds
            ),
        )
    )
    if not settings.redis_url:
        return machine
    return RedisLoginThrottle(
        settings.redis_url,
        settings.login_max_failures,
        settings.login_lockout_seconds,
        fallback=machine,
    )


def make_limiter(settings: Settings) -> Limiter:
    """The cap on queries in flight: per account and in all, across replicas with Redis."""
    if settings.redis_url:
        return RedisLimiter(
            settings.redis_url,
            settings.max_concurrent_requests,
            settings.max_concurrent_requests_global,
            lease_seconds=settings.redis_lease_seconds,
            fallback=settings.redis_fallback,
        )
    return LocalLimiter(settings.max_concurrent_requests, settings.max_concurrent_requests_global)


def make_stream_limiter(settings: Settings) -> Limiter:
    """The cap on open push streams: per account and in all, across replicas with Redis."""
    per_account, in_all = settings.max_streams_per_account, settings.max_streams_global
    if settings.redis_url:
        return RedisLimiter(
            settings.redis_url,
            per_account,
            in_all,
            lease_seconds=max(4 * settings.stream_heartbeat_seconds, 60.0),
            fallback=settings.redis_fallback,
            prefix="csatdist-streams",
            noun="open streams",
        )
    return LocalLimiter(per_account, in_all, noun="open streams")


def make_ingest_limiter(settings: Settings) -> Limiter:
    """The cap on ingest requests in flight: per account and in all, across replicas with Redis
    (each holds a body of up to max_ingest_bytes and a share of the single writer)."""
    return make_work_limiter(
        settings,
        "ingest",
        settings.max_concurrent_ingest,
        settings.max_concurrent_ingest_global,
        lease_seconds=max(settings.redis_lease_seconds, 2 * settings.request_body_timeout_seconds),
        noun="write requests in flight",
    )


def make_work_limiter(
    settings: Settings,
    kind: str,
    per_account: int,
    in_all: int,
    *,
    lease_seconds: float,
    noun: str | None = None,
) -> Limiter:
    """A cap on one kind of work in flight, per account and in all: across replicas when
    they share Redis (leases outlive the longest such request), else this server's own."""
    noun = noun or f"{kind} in flight"
    if settings.redis_url:
        return RedisLimiter(
            settings.redis_url,
            per_account,
            in_all,
            lease_seconds=lease_seconds,
            fallback=settings.redis_fallback,
            prefix=f"csatdist-{kind}",
            noun=noun,
        )
    return LocalLimiter(per_account, in_all, noun=noun)


def make_nonce_cache(settings: Settings) -> NonceCache:
    window = settings.oauth_timestamp_window_seconds
    if settings.redis_url:
        return RedisNonceCache(settings.redis_url, window)
    return MemoryNonceCache(window)


def secret_box_loader(settings: Settings) -> Callable[[], SecretBox]:
    """Loads the sealing key on first use, so servers without OAuth keys never need one."""
    loaded: list[SecretBox] = []
    lock = threading.Lock()

    def load() -> SecretBox:
        with lock:
            if not loaded:
                loaded.append(load_secret_box(settings.secret_key, Path(settings.secret_key_file)))
            return loaded[0]

    return load
