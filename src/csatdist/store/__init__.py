"""The storage interface. One module per backend; the backend is chosen by the database URL."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from csatdist.answers import Answer, Rejection
from csatdist.buckets import Window
from csatdist.directory import Directory, DirectoryUpdate
from csatdist.distribution import CountRow, Grouping
from csatdist.query import Selection
from csatdist.report.assembly import SumRow, SumsRequest

if TYPE_CHECKING:
    from csatdist.settings import Settings


@dataclass(frozen=True, slots=True)
class CountsRequest:
    """Sum the counters of one account over whole buckets of a window."""

    account_id: str
    window: Window
    skills: Selection | None
    agents: Selection | None
    grouping: Grouping
    interval_minutes: int | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    account_id: str
    secret_hash: bytes
    scopes: frozenset[str]
    label: str
    created_ms: int
    revoked_ms: int | None = None
    #: "bearer" (``secret_hash`` set) or "oauth1" (the encrypted fields set; key_id is the
    #: consumer key).
    kind: str = "bearer"
    consumer_secret: bytes | None = None
    access_token: str | None = None
    token_secret: bytes | None = None

    @property
    def active(self) -> bool:
        return self.revoked_ms is None


@dataclass(frozen=True, slots=True)
class User:
    account_id: str
    username: str
    password_hash: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class Session:
    account_id: str
    session_id: str
    secret_hash: bytes
    username: str
    created_ms: int
    expires_ms: int
    #: When the session was revoked (its user's password changed, or its sessions were revoked);
    #: a revoked session is refused even before it expires.
    revoked_ms: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_ms is None


#: (bucket_end, skill_id, agent_id, score1..score5) — one counter row, or one change to it.
BucketRow = tuple[int, int, int, int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class AccountChanges:
    """Counter changes of an account's versions after a given one, up to ``version``.

    When the asked-for version is below ``purged_through`` the changes are gone and the reader
    must load a fresh snapshot instead.
    """

    version: int
    purged_through: int
    rows: list[BucketRow]


@dataclass(frozen=True, slots=True)
class PurgeResult:
    buckets: int
    #: Answer records (and with them the answers' idempotency keys).
    records: int
    #: Erased ids whose tombstone expired.
    tombstones: int = 0
    #: History rows older than the history's retention.
    history: int = 0


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """What one ingest transaction did (EXTENSIONS.md section 6)."""

    accepted: int
    updated: int
    duplicates: int
    #: Answers refused against the records: erased ids, uncorrectable old records.
    refused: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ErasureOutcome:
    erased: list[str]
    unknown: list[str]


@dataclass(frozen=True, slots=True)
class AnswerRecord:
    """One accepted answer as kept: a listing's row. ``score`` (and the ids) are None only for
    records kept from before records existed, which are never listed."""

    answer_id: str
    time_ms: int
    skill_id: int | None
    agent_id: int | None
    score: int | None
    updated_ms: int
    conversation_id: str | None
    comment: str | None
    channel: str | None
    skill_name: str | None
    agent_name: str | None


@dataclass(frozen=True, slots=True)
class AnswersRequest:
    """A page of an account's records with ``start_ms <= time < end_ms`` matching the filters,
    newest ``time`` first, then by id; after the record ``after`` = (time, id) when given."""

    account_id: str
    start_ms: int
    end_ms: int
    skills: Selection | None = None
    agents: Selection | None = None
    scores: frozenset[int] | None = None
    after: tuple[int, str] | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class StoredRule:
    """An alert rule as kept: its document (:func:`csatdist.alerts.rule_document`), its sealed
    secret and its state."""

    account_id: str
    name: str
    document: dict[str, Any]
    secret: bytes
    created_ms: int
    updated_ms: int
    state: str
    state_since_ms: int | None
    evaluated_ms: int | None
    last_value: float | None
    last_total: int | None


@dataclass(frozen=True, slots=True)
class EvaluationOutcome:
    """What an evaluation stores: the rule's state, the compared value and total, and a
    delivery to write to the outbox when the state changed."""

    state: str
    value: float
    total: int
    delivery: NewDelivery | None = None


@dataclass(frozen=True, slots=True)
class NewDelivery:
    delivery_id: str
    transition: str
    url: str
    body: bytes


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    """A delivery claimed for an attempt (its lease held), with its rule's sealed secret."""

    delivery_id: str
    account_id: str
    rule_name: str
    url: str
    body: bytes
    attempts: int
    created_ms: int
    secret: bytes


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    attempt: int
    at_ms: int
    status: int | None
    error: str | None
    duration_ms: int
    response: str


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    delivery_id: str
    transition: str
    created_ms: int
    attempts: int
    next_attempt_ms: int | None
    outcome: str | None
    finished_ms: int | None
    tries: list[AttemptRecord]


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    """Pending deliveries (not yet delivered or given up) allowed per account and in all."""

    per_account: int = 1000
    in_all: int = 100_000


@dataclass(frozen=True, slots=True)
class FetchedChanges:
    """An account's version and its changes after ``since``, read in one statement where a
    query arrived (the event loop) and decoded only where they are applied (a worker thread,
    when the version is not ``since``): :meth:`Store.account_changes` without a second read."""

    since: int
    version: int
    decode: Callable[[], AccountChanges]


class PointReads(Protocol):
    """Point reads awaited on the event loop, for a backend whose every read is a network round
    trip (PostgreSQL): what a query answered from memory still needs, without a worker
    thread. Each reads the store's state as of a moment after the call, like the
    :class:`Store` methods of the same names."""

    async def account_changes(self, account_id: str, since_version: int) -> FetchedChanges: ...

    async def find_key(self, account_id: str, key_id: str) -> ApiKey | None: ...

    async def find_session(self, account_id: str, session_id: str) -> Session | None: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...


class Store(Protocol):
    """What the service needs from a backend. Every method is safe to call from any thread."""

    #: Whether a point read (a key, an account's version) is a local read quick enough to make
    #: on the event loop: true for SQLite (its own file; WAL readers never wait for the writer),
    #: false where every read is a network round trip.
    point_reads_inline: bool

    def schema_version(self) -> int: ...

    def record_answers(self, account_id: str, answers: Sequence[Answer]) -> IngestOutcome:
        """Record and count the answers, durably: new ids are added,
        later versions of recorded ids correct them (their counts move), the rest are
        duplicates, erased ids are refused (:func:`csatdist.records.plan_ingest`).

        ``answers`` hold distinct ids. One transaction, except that SQLite may commit a large
        batch in parts while another account waits to write (each part all or nothing).
        """
        ...

    def erase_answers(self, account_id: str, ids: Sequence[str], now_ms: int) -> ErasureOutcome:
        """Delete the records of ``ids`` and their counts, and keep a tombstone of each id
        (until the retention ends) so a replayed copy is refused; one durable transaction. Ids
        already erased count as erased again; ids never recorded are ``unknown``."""
        ...

    def list_answers(self, request: AnswersRequest) -> list[AnswerRecord]:
        """One page of records, in listing order (see :class:`AnswersRequest`)."""
        ...

    def counts(self, request: CountsRequest) -> list[CountRow]: ...

    def account_snapshot(self, account_id: str) -> tuple[int, list[BucketRow]]:
        """Every counter row of an account and the version they reflect, consistently."""
        ...

    def account_snapshots(
        self, account_ids: Sequence[str], max_rows: int
    ) -> dict[str, tuple[int, list[BucketRow]]]:
        """What :meth:`account_snapshot` gives, for several accounts from one consistent read
        (a start-up warm-up of thousands of small accounts): the accounts in id order for as
        long as their rows together stay within ``max_rows``, always the first with rows
        whatever its size; the others are left out, for the caller to ask again. Every account
        is returned when all of their rows fit."""
        ...

    def account_changes(self, account_id: str, since_version: int) -> AccountChanges: ...

    def account_version(self, account_id: str) -> int:
        """The account's current version (0 before its first answer): one indexed read."""
        ...

    def busiest_accounts(self, limit: int) -> list[str]:
        """Accounts with counts, the most written-to first (by their counters' version)."""
        ...

    def latest_answer_ms(self, account_id: str) -> int | None:
        """The time of the account's latest answer still retained (None when there is none)."""
        ...

    def purge_changes(self, older_than_ms: int) -> int:
        """Drop change-log entries written before ``older_than_ms``; returns how many."""
        ...

    def purge(self, older_than_ms: int, history_older_than_ms: int | None = None) -> PurgeResult:
        """Drop what the retention no longer keeps: buckets ending at or before the bucket
        boundary ``floor5(older_than_ms)`` (and already rolled up into the history), the
        records of the answers before it, tombstones of erasures before ``older_than_ms``,
        sessions expired then, and history rows starting before ``history_older_than_ms``."""
        ...

    def roll_up(self, up_to_ms: int) -> int:
        """Copy every account's counters of the buckets ending after its ``rolled_through`` and
        at or before ``up_to_ms`` into the history (:mod:`csatdist.history`), in short
        transactions; returns how many accounts moved."""
        ...

    def report_sums(self, request: SumsRequest) -> list[SumRow]:
        """The sums of a report (:mod:`csatdist.report.assembly`), from one snapshot."""
        ...

    def directory(self, account_id: str) -> Directory: ...

    def update_directory(self, account_id: str, update: DirectoryUpdate, now_ms: int) -> None:
        """Merge names (a None name removes one), dated ``now_ms``."""
        ...

    def put_alert_rule(
        self,
        account_id: str,
        name: str,
        document: dict[str, Any],
        sealed_secret: bytes,
        now_ms: int,
        max_rules: int,
    ) -> tuple[bool, StoredRule]:
        """Create a rule (with ``sealed_secret``) or replace an existing one's document (its
        secret and state kept, re-evaluated at once); True when created. ``ValueError`` when
        the account already has ``max_rules`` rules."""
        ...

    def alert_rule(self, account_id: str, name: str) -> StoredRule | None: ...

    def alert_rules(self, account_id: str | None = None) -> list[StoredRule]:
        """An account's rules, or every account's (None)."""
        ...

    def delete_alert_rule(self, account_id: str, name: str) -> bool:
        """Delete a rule with its deliveries; False when there was none."""
        ...

    def record_evaluation(
        self,
        account_id: str,
        name: str,
        order: tuple[int, int],
        now_ms: int,
        decide: Callable[[StoredRule], EvaluationOutcome],
        limits: OutboxLimits,
    ) -> EvaluationOutcome | None:
        """Store an evaluation made at ``order`` = (counters' version, window end) when it is
        later than the stored one: ``decide`` is called with the rule as stored (locked), and
        its delivery, if any, is written to the outbox in the same transaction (or recorded as
        given up, over ``limits``). None when the rule is gone or a later evaluation is stored."""
        ...

    def claim_deliveries(self, now_ms: int, lease_ms: int, limit: int) -> list[PendingDelivery]:
        """Due deliveries no other server holds, leased for ``lease_ms``."""
        ...

    def finish_attempt(
        self,
        delivery_id: str,
        attempt: AttemptRecord,
        next_attempt_ms: int | None,
        outcome: str | None,
    ) -> None:
        """Log an attempt; schedule the next (``next_attempt_ms``) or end it (``outcome``:
        ``delivered`` or ``given_up``)."""
        ...

    def deliveries(self, account_id: str, name: str, limit: int) -> list[DeliveryRecord]:
        """A rule's latest deliveries, newest first, with their attempts."""
        ...

    def import_history(self, account_id: str, rows: Sequence[Sequence[int]]) -> int:
        """Counts of answers from before the account's counters, straight into the history
        (see :func:`csatdist.store.history.import_history`)."""
        ...

    def ping(self) -> None:
        """Raise :class:`csatdist.errors.StoreUnavailable` when the store cannot be reached."""
        ...

    def add_key(self, key: ApiKey) -> None: ...

    def find_key(self, account_id: str, key_id: str) -> ApiKey | None: ...

    def list_keys(self, account_id: str | None = None) -> list[ApiKey]: ...

    def revoke_key(self, key_id: str, at_ms: int) -> ApiKey | None: ...

    def add_user(self, user: User) -> bool:
        """Create a login user, or set a new password; True when it is new.

        A password change revokes every session of that user in the same transaction."""
        ...

    def find_user(self, account_id: str, username: str) -> User | None: ...

    def list_users(self, account_id: str) -> list[User]:
        """The account's users, by username."""
        ...

    def delete_user(self, account_id: str, username: str) -> bool:
        """Delete a user and all its sessions in one transaction; False when there was none."""
        ...

    def revoke_sessions(self, account_id: str, username: str, at_ms: int) -> int:
        """Revoke the user's sessions not yet revoked; returns how many."""
        ...

    def add_session(self, session: Session) -> None: ...

    def find_session(self, account_id: str, session_id: str) -> Session | None: ...

    def close(self) -> None: ...


class UnsupportedDatabase(ValueError):
    pass


class DatabaseMisconfigured(ValueError):
    """The database cannot be used as configured and retrying will not help: a bad URL, an
    unknown host, a failed authentication, a database that is missing and may not be created.
    The message says what is wrong and what to do, on one line."""


def sqlite_path(url: str) -> str | None:
    """The file path of a SQLite URL (``sqlite:///rel.db``, ``sqlite:////abs.db``, a bare path)."""
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        return rest[1:] if rest.startswith("/") else rest
    if "://" not in url:
        return url
    return None


def open_store(
    url: str,
    *,
    synchronous: str = "FULL",
    pool_size: int = 10,
    connection_keep_bytes: int = 64 * 1024,
    notice: Callable[[str], None] | None = None,
) -> Store:
    """The backend for a database URL: ``postgresql://…`` or a SQLite path / ``sqlite:///…``.

    ``notice`` receives one-line messages about what opening did on the user's behalf (a
    PostgreSQL database created, a connection being retried); by default they are logged."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        from csatdist.store.postgres import PostgresStore

        return PostgresStore(
            url, pool_size=pool_size, connection_keep_bytes=connection_keep_bytes, notice=notice
        )
    path = sqlite_path(url)
    if path:
        from csatdist.store.sqlite import SQLiteStore

        return SQLiteStore(path, synchronous=synchronous)
    raise UnsupportedDatabase(
        f"unsupported database URL scheme {scheme!r}: use postgresql://…, a SQLite path or "
        "sqlite:///path"
    )


def open_configured_store(settings: Settings, notice: Callable[[str], None] | None = None) -> Store:
    """:func:`open_store` with what ``settings`` say of the database (the server and the CLI
    open it alike)."""
    return open_store(
        settings.database_url,
        synchronous=settings.sqlite_synchronous,
        pool_size=settings.database_pool_size,
        connection_keep_bytes=settings.database_connection_keep_kib * 1024,
        notice=notice,
    )
