"""Every setting in one place, with its help text.

Precedence: command-line flag, then ``CSATDIST_*`` environment variable, then default.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from csatdist.buckets import MIN_RETENTION_MINUTES

STREAM_NAME = r"^[A-Za-z0-9_-]{1,64}$"
SUBJECT_PREFIX = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CSATDIST_", extra="forbid", frozen=True)

    database_url: str = Field(
        "sqlite:///csatdist.db",
        description="Where data lives: a SQLite path or sqlite:///path (relative to the "
        "working directory), or postgresql://user@host/db for several replicas.",
    )
    database_pool_size: int = Field(
        10,
        ge=1,
        le=1000,
        description="PostgreSQL connections per server process (a worker), and as many again "
        "for the reads it makes on its event loop (keys, sessions, account versions).",
    )
    database_connection_keep_kib: int = Field(
        64,
        ge=1,
        le=1024 * 1024,
        description="A PostgreSQL connection that has just read or written a change of the "
        "counters, or sent a batch's ids, larger than this (KiB) is closed after use, not kept "
        "in the pool: libpq keeps its buffers at the size of the largest message a connection "
        "carried, for as long as the connection lives (docs/security.md).",
    )
    host: str = Field("127.0.0.1", description="Address `serve` listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port `serve` listens on.")
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Worker processes `serve` runs (each new connection handed to the one "
        "holding the fewest), sharing through shared memory the limits and OAuth nonces; 0 = "
        "one per CPU core (docs/deployment.md).",
    )
    retention_minutes: int = Field(
        MIN_RETENTION_MINUTES,
        ge=MIN_RETENTION_MINUTES,
        description="How long answers are kept and accepted; never below 1445 (24 h + 5 min).",
    )
    history_days: int = Field(
        400,
        ge=1,
        le=3660,
        description="How long the history behind reports (counts per 15 minutes, hour and day; "
        "no answer records) is kept, in days.",
    )
    max_concurrent_requests: int = Field(
        10, ge=1, description="Queries in flight per account before 429."
    )
    max_concurrent_requests_global: int = Field(
        100,
        ge=1,
        description="Queries in flight, all accounts, before 429: per server, or across all "
        "servers sharing CSATDIST_REDIS_URL.",
    )
    redis_url: str | None = Field(
        None,
        description="Redis holding the concurrency limits and OAuth nonces shared by every "
        "replica (redis://host:6379/0). Unset: each server keeps its own.",
    )
    redis_lease_seconds: float = Field(
        30.0,
        gt=0,
        description="A slot held in Redis expires after this long, so a crashed replica frees "
        "its slots; keep it above the slowest query.",
    )
    redis_fallback: Literal["local", "reject"] = Field(
        "local",
        description="When Redis is unreachable: local = enforce each server's own limits; "
        "reject = answer queries with 503.",
    )
    stream_period_seconds: float = Field(
        1.0,
        ge=0.1,
        le=60,
        description="Push streams check for changes this often and send at most one event per "
        "period (changes in between are coalesced).",
    )
    stream_heartbeat_seconds: float = Field(
        15.0, ge=1, le=300, description="A push stream with no change sends a heartbeat this often."
    )
    max_streams_per_account: int = Field(
        20,
        ge=1,
        description="Open push streams per account before 429 (across replicas with Redis).",
    )
    max_streams_global: int = Field(2000, ge=1, description="Open push streams in all, before 429.")
    cors_origins: str = Field(
        "",
        description="Comma-separated origins allowed to call the API from a browser (CORS); "
        "empty = none (the dashboard is same-origin and needs none).",
    )
    max_ingest_answers: int = Field(
        10_000, ge=1, description="Answers in one ingest request before 413."
    )
    max_ingest_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Bytes in one ingest request body before 413."
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=4096,
        description="Bytes in a request line and headers before 431 (the connection is closed).",
    )
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="A client must send its request headers within this time (408)."
    )
    lingering_threshold_bytes: int = Field(
        256 * 1024,
        ge=0,
        description="A reply sent before the request's body was read (401, 413, 429) keeps the "
        "connection when at most this much of the body is still to come (it is read and "
        "dropped); with more, or a chunked body, the reply says Connection: close and the "
        "server lingers.",
    )
    lingering_max_bytes: int = Field(
        1024 * 1024,
        ge=0,
        description="Bytes of a refused body the server reads and drops, unparsed, after its "
        "reply and before it closes, so that a client still writing does not get a reset "
        "before it reads the reply.",
    )
    lingering_seconds: float = Field(
        5.0,
        gt=0,
        description="The longest the server lingers after such a reply before it closes.",
    )
    request_body_timeout_seconds: float = Field(
        30.0, gt=0, description="A client must send the whole request body within this time (408)."
    )
    heavy_work_at_once: int = Field(
        0,
        ge=0,
        le=64,
        description="Pieces of heavy work (building a large response or the sums behind it, "
        "decoding a large ingest body) running at once on this machine, the server's workers "
        "together; 0 = half the CPU cores, at least one; never more than the workers. Each "
        "worker runs one at a time, accounts in turn; this leaves the other cores to small "
        "requests and the store, which one tenant's large reads on every worker at once would "
        "otherwise take.",
    )
    switch_interval_ms: float = Field(
        1.0,
        gt=0,
        le=100,
        description="How long a Python thread runs before another that waits for the "
        "interpreter gets it (sys.setswitchinterval; Python's default is 5 ms). Every hand-over "
        "between the event loop, the worker threads and the SQLite writer can wait this long "
        "per busy thread, so one tenant's large requests delay everyone's small ones by it.",
    )
    query_refusal_delay_seconds: float = Field(
        1.0,
        ge=0,
        le=10,
        description="A query refused for the concurrency limits gets its 429 after this long "
        "(its Retry-After): a client that retries at once, ignoring Retry-After, makes one "
        "request a second per connection, not hundreds; 0 = at once.",
    )
    max_ids_per_list: int = Field(
        1000, ge=1, description="Ids in one skillIds/agentIds list before 400."
    )
    max_concurrent_ingest: int = Field(
        2,
        ge=1,
        description="Ingest requests in flight per account before 429, counted from before "
        "the body is read until the reply is sent.",
    )
    max_concurrent_ingest_global: int = Field(
        8,
        ge=1,
        description="Ingest requests in flight, all accounts, before 429 (each may hold a body "
        "of up to CSATDIST_MAX_INGEST_BYTES).",
    )
    max_concurrent_exports: int = Field(
        1,
        ge=1,
        description="Exports (CSV/NDJSON of every matching answer record) streaming per account "
        "before 429.",
    )
    max_concurrent_exports_global: int = Field(
        4, ge=1, description="Exports streaming, all accounts, before 429."
    )
    max_json_values_per_answer: int = Field(
        48,
        ge=16,
        le=1000,
        description="JSON values (object keys included) an ingest body may hold per allowed "
        "answer before 413: bounds the memory of decoding (a hostile 10 MiB body decodes to "
        "400 MB without it).",
    )
    max_response_entries: int = Field(
        250_000,
        ge=1000,
        description="Metrics objects one distribution response may hold before 400 (each is "
        "about 200 bytes of JSON): narrow skillIds/agentIds or use a larger interval.",
    )
    response_memory_mb: int = Field(
        256,
        ge=16,
        description="Memory all large responses (1 MiB and over) being built or sent may take "
        "together before 429, in all the workers of a server; one account may take a quarter "
        "of it.",
    )
    response_send_timeout_seconds: float = Field(
        20.0,
        gt=0,
        description="A client that reads nothing of a response for this long is disconnected "
        "(its buffered reply is freed).",
    )
    ingest_answers_per_second: int = Field(
        2_000,
        ge=0,
        description="Answers one account may write per second on average, in all the workers "
        "of a server, with bursts of one full batch (CSATDIST_MAX_INGEST_ANSWERS); past it, "
        "429 with the wait. One account's flood of batches then takes its share of the writer, "
        "not all of it. 0 = no limit.",
    )
    max_concurrent_logins: int = Field(
        1,
        ge=1,
        description="Password checks (Argon2id, 64 MiB and most of a core each) running at once "
        "in all the workers of a server before a login gets 429; raise it on machines with "
        "more cores.",
    )
    login_attempts_per_client_minute: int = Field(
        10,
        ge=1,
        description="Login attempts one client address (an IPv6 client's /64 network) may make "
        "per minute to this server (all its workers) before 429, whatever the user names.",
    )
    password_checks_per_minute: int = Field(
        300,
        ge=1,
        description="Password checks this server (all its workers) makes per minute, from all "
        "clients, before a login gets 429 (bounds the CPU logins from many addresses can take).",
    )
    purge_interval_seconds: float = Field(
        60.0, gt=0, description="How often expired buckets and idempotency keys are purged."
    )
    sqlite_synchronous: Literal["NORMAL", "FULL", "EXTRA"] = Field(
        "FULL",
        description="SQLite commit durability: FULL survives process and power loss; NORMAL "
        "survives a process crash only.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one JSON object per line; text: human-readable."
    )
    external_url: str | None = Field(
        None,
        description="The URL clients use to reach this server (e.g. https://csat.example.com), "
        "behind a proxy: OAuth signatures are checked against it and the domain lookup returns "
        "its host:port. Unset: the request's own scheme and Host.",
    )
    tls_cert_file: str | None = Field(
        None, description="PEM certificate: `serve` speaks HTTPS when given with the key."
    )
    tls_key_file: str | None = Field(None, description="PEM private key for the certificate.")
    secret_key: str | None = Field(
        None,
        description="Fernet key sealing OAuth 1.0a secrets at rest; the same on every replica. "
        "Unset: the key file below.",
    )
    secret_key_file: str = Field(
        "csatdist.key",
        description="Where the sealing key is kept when CSATDIST_SECRET_KEY is unset; created "
        "with mode 0600 on first use.",
    )
    oauth_timestamp_window_seconds: int = Field(
        300,
        ge=30,
        le=3600,
        description="Accepted clock difference for oauth_timestamp; nonces are remembered as long.",
    )
    warm_up_accounts: int = Field(
        10_000,
        ge=0,
        description="At start, the in-memory counters of up to this many accounts (the most "
        "active first) are loaded before /readyz reports ready, so no client waits for a cold "
        "load after a deploy or a crash; 0 = load on first use.",
    )
    warm_up_seconds: float = Field(
        60.0,
        gt=0,
        description="The longest the start-up warm-up may keep /readyz at 503; the rest load on "
        "first use.",
    )
    response_cache_mb: int = Field(
        64,
        ge=0,
        description="Rendered query responses kept for reuse while the account's counters, the "
        "window and the query are unchanged (never stale), with the parts a large one is rebuilt "
        "from after a change; a quarter of it per account; 0 = build every body whole.",
    )
    auth_cache_seconds: float = Field(
        1.0,
        ge=0,
        le=60,
        description="API keys and login sessions read from the store are reused this long by "
        "each server (a revocation takes effect within it); 0 = read on every request.",
    )
    session_ttl_minutes: int = Field(
        480, ge=1, description="How long a bearer token from the login endpoint is valid."
    )
    login_max_failures: int = Field(
        5,
        ge=1,
        le=100,
        description="Failed logins per account and username before 429 (each name that failed "
        "lately keeps this many times in a bounded table).",
    )
    login_lockout_seconds: int = Field(
        900, ge=1, le=86_400, description="The window for counting failed logins."
    )
    nats_url: str = Field(
        "nats://127.0.0.1:4222",
        description="NATS server(s) for `consume` and `publish`; comma-separate several.",
    )
    stream_name: str = Field(
        "CSAT_ANSWERS", pattern=STREAM_NAME, description="The JetStream stream holding answers."
    )
    stream_subject_prefix: str = Field(
        "csat.answers",
        pattern=SUBJECT_PREFIX,
        description="Answers for account A are published on <prefix>.A.",
    )
    dead_letter_stream: str = Field(
        "CSAT_DLQ", pattern=STREAM_NAME, description="The stream keeping dead letters."
    )
    dead_letter_prefix: str = Field(
        "csat.answers.dlq",
        pattern=SUBJECT_PREFIX,
        description="Dead letters for account A go to <prefix>.A, with the reason in a header.",
    )
    consumer_name: str = Field(
        "csatdist",
        pattern=STREAM_NAME,
        description="The durable consumer every `consume` process shares.",
    )
    consume_batch: int = Field(
        500, ge=1, le=10_000, description="Messages fetched and committed together."
    )
    consume_max_deliver: int = Field(
        10,
        ge=2,
        description="Deliveries of a message that keeps failing before it is dead-lettered.",
    )
    consume_ack_wait_seconds: float = Field(
        30.0, ge=1, description="An unacknowledged message is redelivered after this long."
    )
    consume_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port where `consume` serves /metrics for Prometheus; 0 = none.",
    )
    webhook_allow: str = Field(
        "",
        description="Comma-separated URL prefixes alert webhooks may target although they are "
        "not public https hosts (e.g. http://127.0.0.1:9000/); empty = public https only.",
    )
    max_alert_rules: int = Field(100, ge=1, description="Alert rules per account.")
    max_pending_deliveries: int = Field(
        1000,
        ge=1,
        description="Alert deliveries not yet delivered per account; beyond it a transition is "
        "logged as dropped instead of sent.",
    )
    max_pending_deliveries_global: int = Field(
        100_000, ge=1, description="Alert deliveries not yet delivered, all accounts."
    )
    alert_check_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often each server looks for accounts whose counts changed, to evaluate "
        "their alert rules (every rule is evaluated at least once a minute).",
    )
    demo: bool = Field(
        False, description="Create a demo account and keys and feed simulated live answers."
    )
    demo_account: str = Field("demo", description="The account the demo feeds.")
    demo_interval_seconds: float = Field(
        2.0, gt=0, description="How often the demo adds a few simulated answers."
    )

    @model_validator(mode="after")
    def _webhook_allow_parses(self) -> Settings:
        from csatdist.webhooks import parse_allow_list

        parse_allow_list(self.webhook_allow)  # a ValueError names the bad entry
        return self

    @model_validator(mode="after")
    def _dead_letters_apart(self) -> Settings:
        if self.dead_letter_prefix == self.stream_subject_prefix:
            raise ValueError(
                "dead_letter_prefix must differ from stream_subject_prefix, or dead letters "
                "would be consumed again as answers"
            )
        return self


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit (non-None) overrides on top."""
    given = {name: value for name, value in overrides.items() if value is not None}
    return Settings(**given)  # type: ignore[arg-type]


def worker_count(settings: Settings) -> int:
    """The worker processes ``serve`` runs (``workers``, 0 resolved: one per CPU core)."""
    return settings.workers or os.cpu_count() or 1


def heavy_places(settings: Settings) -> int:
    """The server's places for heavy work (``heavy_work_at_once``, 0 resolved): no more than
    its workers, each of which runs one piece at a time."""
    half_the_cores = max(1, (os.cpu_count() or 1) // 2)
    return min(settings.heavy_work_at_once or half_the_cores, worker_count(settings))


def answer_burst(settings: Settings) -> int:
    """The answers an account may write at once under its rate: one full batch, or a second's
    worth when that is more."""
    return max(settings.max_ingest_answers, settings.ingest_answers_per_second)
