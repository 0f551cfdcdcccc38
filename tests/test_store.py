"""The store contract: the same assertions for every backend (see the ``store`` fixture)."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from csatdist.answers import Answer
from csatdist.buckets import BUCKET_MS, MINUTE_MS, window_for
from csatdist.distribution import CountRow, Grouping
from csatdist.keys import issue_key, issue_session
from csatdist.query import ALL, Selection
from csatdist.store import BucketRow, CountsRequest, Store, User, open_store
from csatdist.store.migrations import SchemaTooNew
from csatdist.store.sqlite import SQLiteStore
from tests.helpers import LATEST_SCHEMA, T_13_29, execute_sql, postgres_schema

NONE = Grouping(by_skill=False, by_agent=False, by_interval=False)
PAIRS = Grouping(by_skill=True, by_agent=True, by_interval=False)


def ans(
    answer_id: str, time_ms: int = T_13_29, skill: int = 1, agent: int = 10, score: int = 5
) -> Answer:
    return Answer(0, answer_id, time_ms, skill, agent, score)


def totals(
    store: Store, account: str = "acme", timeframe: int = 60, now: int = T_13_29
) -> tuple[int, ...]:
    rows = store.counts(CountsRequest(account, window_for(now, timeframe), None, None, NONE))
    return rows[0].counts if rows else (0, 0, 0, 0, 0)


def test_new_answers_are_counted_and_duplicates_are_not(store: Store) -> None:
    assert store.record_answers("acme", [ans("a", score=5), ans("b", score=1)]).accepted == 2
    assert store.record_answers("acme", [ans("a", score=3), ans("c", score=3)]).accepted == 1
    assert totals(store) == (1, 0, 1, 0, 1)


def test_same_id_in_two_accounts_is_two_answers(store: Store) -> None:
    assert store.record_answers("acme", [ans("a")]).accepted == 1
    assert store.record_answers("other", [ans("a")]).accepted == 1
    assert totals(store, "acme") == (0, 0, 0, 0, 1)
    assert totals(store, "other") == (0, 0, 0, 0, 1)
    assert totals(store, "nobody") == (0, 0, 0, 0, 0)


def test_empty_batch(store: Store) -> None:
    assert store.record_answers("acme", []).accepted == 0


def test_window_takes_whole_buckets_only(store: Store) -> None:
    window = window_for(T_13_29, 7)  # 13:20 .. 13:30
    store.record_answers(
        "acme",
        [
            ans("before", window.start_ms - 1),
            ans("first", window.start_ms),
            ans("last", window.end_ms - 1),
            ans("after", window.end_ms),
        ],
    )
    assert sum(totals(store, timeframe=7)) == 2


def test_grouping_and_filters(store: Store) -> None:
    store.record_answers(
        "acme",
        [
            ans("a", skill=1, agent=10, score=5),
            ans("b", skill=1, agent=11, score=4),
            ans("c", skill=2, agent=10, score=1),
            ans("d", skill=-1, agent=-1, score=2),
        ],
    )
    window = window_for(T_13_29, 60)
    rows = store.counts(CountsRequest("acme", window, ALL, None, PAIRS))
    assert sorted((r.skill_id, r.agent_id, r.counts) for r in rows) == [
        (-1, -1, (0, 1, 0, 0, 0)),
        (1, 10, (0, 0, 0, 0, 1)),
        (1, 11, (0, 0, 0, 1, 0)),
        (2, 10, (1, 0, 0, 0, 0)),
    ]
    only = store.counts(
        CountsRequest(
            "acme", window, Selection(frozenset({1, 99})), Selection(frozenset({10})), PAIRS
        )
    )
    assert only == [CountRow(None, 1, 10, (0, 0, 0, 0, 1))]


def test_interval_grouping(store: Store) -> None:
    window = window_for(T_13_29, 20)  # 13:05 .. 13:30
    store.record_answers(
        "acme",
        [
            ans("a", window.start_ms),  # bucket ending 13:10 → interval ending 13:10
            ans("b", window.start_ms + BUCKET_MS),  # ending 13:15 → interval ending 13:20
            ans("c", window.end_ms - 1),  # ending 13:30 → 13:30
        ],
    )
    grouping = Grouping(by_skill=False, by_agent=False, by_interval=True)
    rows = store.counts(CountsRequest("acme", window, None, None, grouping, interval_minutes=10))
    ends = sorted((r.interval_end, sum(r.counts)) for r in rows)
    assert ends == [
        (window.start_ms + 5 * MINUTE_MS, 1),
        (window.start_ms + 15 * MINUTE_MS, 1),
        (window.end_ms, 1),
    ]


def test_purge_drops_expired_buckets_and_keys(store: Store) -> None:
    old = T_13_29 - 2000 * MINUTE_MS
    store.record_answers("acme", [ans("old", old), ans("new", T_13_29)])
    first = store.purge(T_13_29 - 1445 * MINUTE_MS)
    # The record goes at the retention; the counts only once they are in the history.
    assert (first.buckets, first.records) == (0, 1)
    store.roll_up(T_13_29 - 1445 * MINUTE_MS)
    result = store.purge(T_13_29 - 1445 * MINUTE_MS)
    assert (result.buckets, result.records) == (1, 0)
    # The new answer's key survives: it still counts as a duplicate.
    assert store.record_answers("acme", [ans("new")]).accepted == 0
    assert store.purge(T_13_29 - 1445 * MINUTE_MS).buckets == 0


def test_purge_works_in_chunks(store: Store) -> None:
    old = T_13_29 - 2000 * MINUTE_MS
    store.record_answers("acme", [ans(f"x{i}", old, agent=i) for i in range(12_000)])
    store.roll_up(T_13_29 - 1445 * MINUTE_MS)
    result = store.purge(T_13_29 - 1445 * MINUTE_MS)
    assert (result.buckets, result.records) == (12_000, 12_000)


def test_keys_are_bound_to_their_account(store: Store) -> None:
    issued = issue_key("acme", frozenset({"read"}), "ci", 5)
    store.add_key(issued.key)
    assert store.find_key("acme", issued.key.key_id) == issued.key
    assert store.find_key("other", issued.key.key_id) is None
    assert store.list_keys("acme") == [issued.key]
    assert store.list_keys("other") == []
    revoked = store.revoke_key(issued.key.key_id, 99)
    assert revoked is not None
    assert revoked.revoked_ms == 99
    assert store.revoke_key(issued.key.key_id, 200).revoked_ms == 99  # type: ignore[union-attr]
    assert store.revoke_key("nope", 1) is None


def user(name: str, digest: str = "$argon2id$h1", account: str = "acme") -> User:
    return User(account, name, digest, 5)


def sessions_of(store: Store, name: str, count: int = 2, account: str = "acme") -> list[str]:
    """Log ``name`` in ``count`` times; returns the session ids."""
    ids = []
    for _ in range(count):
        session, _token = issue_session(account, name, T_13_29, 60 * MINUTE_MS)
        store.add_session(session)
        ids.append(session.session_id)
    return ids


def test_users_are_listed_per_account_by_name(store: Store) -> None:
    assert store.add_user(user("zoe")) is True
    assert store.add_user(user("ann")) is True
    assert store.add_user(user("ann", account="other")) is True
    assert [u.username for u in store.list_users("acme")] == ["ann", "zoe"]
    assert store.list_users("other") == [user("ann", account="other")]
    assert store.list_users("nobody") == []


def test_a_password_change_revokes_every_session_of_that_user_only(store: Store) -> None:
    store.add_user(user("ann"))
    store.add_user(user("bob"))
    ann, bob = sessions_of(store, "ann"), sessions_of(store, "bob")
    assert store.add_user(user("ann", "$argon2id$h2")) is False
    assert store.find_user("acme", "ann").password_hash == "$argon2id$h2"  # type: ignore[union-attr]
    for session_id in ann:
        found = store.find_session("acme", session_id)
        assert found is not None
        assert not found.active
    assert all(store.find_session("acme", s).active for s in bob)  # type: ignore[union-attr]
    fresh = sessions_of(store, "ann", 1)  # a login after the change works
    assert store.find_session("acme", fresh[0]).active  # type: ignore[union-attr]


def test_revoke_sessions_counts_the_live_ones_and_keeps_the_user(store: Store) -> None:
    store.add_user(user("ann"))
    ids = sessions_of(store, "ann", 3)
    elsewhere = sessions_of(store, "ann", 1, account="other")  # same name, another account
    assert store.revoke_sessions("acme", "ann", 1234) == 3
    assert {store.find_session("acme", s).revoked_ms for s in ids} == {1234}  # type: ignore[union-attr]
    assert store.revoke_sessions("acme", "ann", 9999) == 0  # already revoked: stamp kept
    assert store.find_session("acme", ids[0]).revoked_ms == 1234  # type: ignore[union-attr]
    assert store.revoke_sessions("acme", "nobody", 1) == 0
    assert store.find_user("acme", "ann") is not None
    assert store.find_session("other", elsewhere[0]).active  # type: ignore[union-attr]


def test_delete_user_deletes_its_sessions(store: Store) -> None:
    store.add_user(user("ann"))
    store.add_user(user("bob"))
    ann, bob = sessions_of(store, "ann"), sessions_of(store, "bob")
    assert store.delete_user("acme", "ann") is True
    assert store.find_user("acme", "ann") is None
    assert [store.find_session("acme", s) for s in ann] == [None, None]
    assert all(store.find_session("acme", s) is not None for s in bob)
    assert store.delete_user("acme", "ann") is False
    assert [u.username for u in store.list_users("acme")] == ["bob"]


def test_latest_answer_time_per_account(store: Store) -> None:
    assert store.latest_answer_ms("acme") is None
    store.record_answers("acme", [ans("a", T_13_29 - 60_000), ans("b", T_13_29 - 5 * MINUTE_MS)])
    store.record_answers("other", [ans("c", T_13_29)])
    assert store.latest_answer_ms("acme") == T_13_29 - 60_000
    store.purge(T_13_29 + 5 * MINUTE_MS)  # records go at the bucket boundary: 13:28 by 13:30
    assert store.latest_answer_ms("acme") is None


def _accounts_of_every_kind(store: Store) -> list[str]:
    """Accounts of 40, 12 and 1 counter rows, one whose counters were all purged (a version,
    no rows) and one never written to, under ids whose order differs by collation."""
    for account, rows in (("big", 40), ("Mid-1", 12), ("small_2", 1)):
        store.record_answers(
            account,
            [ans(f"{account}{i}", T_13_29 - i % 8 * BUCKET_MS, agent=i // 8) for i in range(rows)],
        )
        store.record_answers(account, [ans(f"{account}-again", T_13_29, agent=0)])  # a counter of 2
    old = T_13_29 - 2000 * MINUTE_MS
    store.record_answers("gone", [ans("g", old)])
    store.roll_up(T_13_29 - 1445 * MINUTE_MS)
    store.purge(T_13_29 - 1445 * MINUTE_MS)
    return ["small_2", "big", "never", "gone", "Mid-1"]


def _unordered(snapshot: tuple[int, list[BucketRow]]) -> tuple[int, list[BucketRow]]:
    version, rows = snapshot
    return version, sorted(rows)


def test_several_accounts_snapshots_are_each_accounts_snapshot(store: Store) -> None:
    """One read for many accounts (a start-up warm-up) gives each exactly what its own
    snapshot gives: its version and every counter row."""
    accounts = _accounts_of_every_kind(store)
    together = store.account_snapshots(accounts, max_rows=1000)
    assert sorted(together) == sorted(accounts)
    for account in accounts:
        assert _unordered(together[account]) == _unordered(store.account_snapshot(account))
        assert all(type(value) is int for row in together[account][1] for value in row)
    assert len(together["big"][1]) == 40
    assert together["gone"][0] > 0
    assert together["gone"][1] == []
    assert together["never"] == (0, [])


@pytest.mark.parametrize("max_rows", [0, 1, 12, 13, 52])
def test_several_accounts_snapshots_stay_within_max_rows(store: Store, max_rows: int) -> None:
    """Past ``max_rows`` rows the accounts not read are left out, to be asked for again; the
    first account with rows is read whatever its size, so asking again always ends."""
    accounts = _accounts_of_every_kind(store)
    pending = list(accounts)
    seen: dict[str, tuple[int, list[BucketRow]]] = {}
    while pending:
        part = store.account_snapshots(pending, max_rows)
        if not seen:
            assert {"gone", "never"} <= set(part)  # no rows to read: always complete
        with_rows = [len(rows) for _, rows in part.values() if rows]
        assert with_rows
        assert sum(with_rows) <= max_rows or len(with_rows) == 1
        assert not set(part) & set(seen)
        seen.update(part)
        pending = [account for account in pending if account not in part]
    assert {a: _unordered(s) for a, s in seen.items()} == {
        a: _unordered(store.account_snapshot(a)) for a in accounts
    }


def test_concurrent_writers_count_each_answer_once(store: Store) -> None:
    ids = [f"id{i}" for i in range(2000)]
    new_counts: list[int] = []

    def writer(offset: int) -> None:
        batch = [ans(i) for i in ids[offset:] + ids[:offset]]
        for start in range(0, len(batch), 250):
            new_counts.append(store.record_answers("acme", batch[start : start + 250]).accepted)

    threads = [threading.Thread(target=writer, args=(k * 500,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(new_counts) == 2000
    assert totals(store) == (0, 0, 0, 0, 2000)


def test_data_survives_reopen(database_url: str) -> None:
    first = open_store(database_url)
    first.record_answers("acme", [ans("a")])
    first.close()
    second = open_store(database_url)
    assert second.record_answers("acme", [ans("a"), ans("b")]).accepted == 1
    assert second.schema_version() == LATEST_SCHEMA
    second.close()


def test_opening_twice_applies_migrations_once(database_url: str) -> None:
    stores = [open_store(database_url) for _ in range(3)]
    assert {s.schema_version() for s in stores} == {LATEST_SCHEMA}
    for opened in stores:
        opened.close()


def test_a_newer_schema_is_refused(database_url: str) -> None:
    open_store(database_url).close()
    execute_sql(database_url, "INSERT INTO schema_migrations VALUES (999, 'future', 0)")
    with pytest.raises(SchemaTooNew, match="schema version 999"):
        open_store(database_url)


@pytest.mark.sqlite
def test_sqlite_uses_wal_and_full_sync(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite")
    try:
        with sqlite3.connect(tmp_path / "db.sqlite") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()


@pytest.mark.sqlite
def test_sqlite_writer_cache_and_checkpoint_threshold(tmp_path: Path) -> None:
    """A batch's pages stay in the writer's cache until its commit, and a commit checkpoints
    only past the larger threshold; durability is still the WAL fsynced at each commit."""
    from csatdist.store import sqlite as sqlite_module

    store = SQLiteStore(tmp_path / "db.sqlite")
    try:
        settings = store._writer.run(
            lambda conn: [
                conn.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("cache_size", "wal_autocheckpoint", "synchronous", "journal_mode")
            ]
        )
        assert settings == [
            -sqlite_module.WRITER_CACHE_KIB,
            sqlite_module.WAL_CHECKPOINT_PAGES,
            2,  # FULL
            "wal",
        ]
    finally:
        store.close()


@pytest.mark.sqlite
def test_sqlite_commits_reach_the_database_file_without_a_commit_checkpointing(
    tmp_path: Path,
) -> None:
    """A background thread copies the WAL into the database file soon after a commit, however
    little it wrote (the writer's own commits checkpoint only past 8,000 pages, and then find
    little left to copy)."""
    import shutil
    import sqlite3
    import time

    store = SQLiteStore(tmp_path / "db.sqlite")
    try:
        store.add_key(issue_key("acme", frozenset({"read"}), "ci", 5).key)
        deadline = time.monotonic() + 30
        while True:  # the database file alone (no WAL beside it) holds the key
            shutil.copyfile(tmp_path / "db.sqlite", tmp_path / "copy.sqlite")
            copy = sqlite3.connect(tmp_path / "copy.sqlite")
            try:
                keys = copy.execute("SELECT count(*) FROM api_keys").fetchone()[0]
            except sqlite3.DatabaseError:  # copied mid-checkpoint: look again
                keys = 0
            finally:
                copy.close()
            if keys == 1:
                break
            assert time.monotonic() < deadline, "the WAL was not checkpointed"
            time.sleep(0.05)
        assert store._checkpointer.checkpoints >= 1
    finally:
        store.close()


def undo_ingest_log(database_url: str) -> None:
    """Take a closed store back to schema 8 (before the SQLite answer log: its close folded)."""
    if database_url.startswith("sqlite"):
        for statement in (
            "DROP TABLE answer_log",
            "DROP TABLE fold_state",
            "DROP TABLE change_log",
            "ALTER TABLE account_versions DROP COLUMN folded_version",
            "CREATE TABLE bucket_changes (account_id TEXT NOT NULL, version INTEGER NOT NULL,"
            " bucket_end INTEGER NOT NULL, skill_id INTEGER NOT NULL, agent_id INTEGER NOT NULL,"
            " score1 INTEGER NOT NULL, score2 INTEGER NOT NULL, score3 INTEGER NOT NULL,"
            " score4 INTEGER NOT NULL, score5 INTEGER NOT NULL, created_ms INTEGER NOT NULL,"
            " PRIMARY KEY (account_id, version, bucket_end, skill_id, agent_id)) WITHOUT ROWID",
        ):
            execute_sql(database_url, statement)
    else:
        undo_packed_change_log(database_url)
    execute_sql(database_url, "DELETE FROM schema_migrations WHERE version IN (9, 10, 11)")


#: PostgreSQL's change log before migration 10: one row per counter and version.
_PG_BUCKET_CHANGES = (
    "CREATE TABLE bucket_changes (account_id TEXT NOT NULL, version BIGINT NOT NULL,"
    " bucket_end BIGINT NOT NULL, skill_id BIGINT NOT NULL, agent_id BIGINT NOT NULL,"
    " score1 BIGINT NOT NULL, score2 BIGINT NOT NULL, score3 BIGINT NOT NULL,"
    " score4 BIGINT NOT NULL, score5 BIGINT NOT NULL, created_ms BIGINT NOT NULL,"
    " PRIMARY KEY (account_id, version, bucket_end, skill_id, agent_id))"
)


def undo_answer_log(database_url: str) -> None:
    """Take a closed PostgreSQL store back to schema 10 (before its answer log: its close
    folded)."""
    for statement in (
        "DROP TABLE answer_log",
        "DROP TABLE account_folds",
        "DELETE FROM schema_migrations WHERE version = 11",
    ):
        execute_sql(database_url, statement)


def undo_packed_change_log(database_url: str) -> None:
    """Take a PostgreSQL database back to schema 9: a change-log row per counter and version
    (those of the counters as they stand, as if one version had written them all)."""
    undo_answer_log(database_url)
    for statement in (
        "DROP TABLE change_log",
        _PG_BUCKET_CHANGES,
        "CREATE INDEX bucket_changes_by_time ON bucket_changes (created_ms)",
        "INSERT INTO bucket_changes SELECT b.account_id, v.version, b.bucket_end, b.skill_id,"
        " b.agent_id, b.score1, b.score2, b.score3, b.score4, b.score5, 0 FROM buckets b"
        " JOIN account_versions v ON v.account_id = b.account_id",
        "DELETE FROM schema_migrations WHERE version = 10",
    ):
        execute_sql(database_url, statement)


@pytest.mark.postgresql
def test_a_schema_9_postgres_database_migrates_to_the_packed_change_log() -> None:
    """Migration 10 (PostgreSQL: one packed change-log row per version): counts and records are
    kept, a follower holding an older version is told to reload (its changes are not carried
    over), and later versions are followed from the new log."""
    with postgres_schema() as url:
        store = open_store(url)
        store.record_answers("acme", [ans("a", score=5), ans("b", score=1), ans("c", score=3)])
        store.close()
        undo_packed_change_log(url)

        store = open_store(url)
        try:
            assert store.schema_version() == LATEST_SCHEMA
            assert totals(store) == (1, 0, 1, 0, 1)
            assert store.account_changes("acme", 0).purged_through == 1
            outcome = store.record_answers("acme", [ans("a", score=5), ans("d", score=4)])
            assert (outcome.accepted, outcome.duplicates) == (1, 1)
            changes = store.account_changes("acme", 1)
            assert (changes.version, changes.purged_through) == (2, 1)
            assert [row[3:] for row in changes.rows] == [(0, 0, 0, 1, 0)]
            execute_sql(url, "SELECT 1 FROM change_log")
            with pytest.raises(Exception, match="bucket_changes"):
                execute_sql(url, "SELECT 1 FROM bucket_changes")
        finally:
            store.close()


def test_a_schema_8_database_migrates_to_the_answer_log(database_url: str) -> None:
    """Migration 9 (SQLite: the answer log and the fold): a database made before it keeps every
    count and record, and replays, corrections, erasures and new answers still count."""
    store = open_store(database_url)
    store.record_answers("acme", [ans("a", score=5), ans("b", score=1), ans("c", score=3)])
    store.close()
    undo_ingest_log(database_url)

    store = open_store(database_url)
    try:
        assert store.schema_version() == LATEST_SCHEMA
        assert totals(store) == (1, 0, 1, 0, 1)
        assert store.account_version("acme") == 1
        outcome = store.record_answers("acme", [ans("a", score=5), ans("d", score=4)])
        assert (outcome.accepted, outcome.duplicates) == (1, 1)
        corrected = Answer(0, "b", T_13_29, 1, 10, 5, updated_ms=T_13_29 + 1)
        assert store.record_answers("acme", [corrected]).updated == 1
        assert store.erase_answers("acme", ["c"], T_13_29).erased == ["c"]
        assert totals(store) == (0, 0, 0, 1, 2)
        assert store.account_snapshot("acme")[0] == store.account_version("acme") == 4
    finally:
        store.close()


def test_a_schema_7_database_migrates_keeping_its_counts_and_records(database_url: str) -> None:
    """Migration 8 drops the counters' index on bucket_end: a database made before it keeps
    every count and record, replays stay duplicates, corrections and new answers still count."""
    store = open_store(database_url)
    store.record_answers("acme", [ans("a", score=5), ans("b", score=1), ans("c", score=3)])
    store.record_answers("beta", [ans("a", score=2)])
    store.close()
    # As schema 7 left it: the index present, migration 8 not recorded.
    execute_sql(database_url, "CREATE INDEX buckets_by_end ON buckets (bucket_end)")
    undo_ingest_log(database_url)
    execute_sql(database_url, "DELETE FROM schema_migrations WHERE version = 8")

    store = open_store(database_url)
    try:
        assert store.schema_version() == LATEST_SCHEMA
        assert totals(store) == (1, 0, 1, 0, 1)
        assert totals(store, "beta") == (0, 1, 0, 0, 0)
        outcome = store.record_answers("acme", [ans("a", score=5), ans("d", score=4)])
        assert (outcome.accepted, outcome.duplicates) == (1, 1)
        corrected = Answer(0, "b", T_13_29, 1, 10, 5, updated_ms=T_13_29 + 1)
        assert store.record_answers("acme", [corrected]).updated == 1
        assert totals(store) == (0, 0, 1, 1, 2)
    finally:
        store.close()
    if database_url.startswith("sqlite"):
        path = database_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "buckets_by_end" not in indexes


def test_replicas_starting_at_once_migrate_once(database_url: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: open_store(database_url), range(4)))
    try:
        assert {s.schema_version() for s in stores} == {LATEST_SCHEMA}
        stores[0].record_answers("acme", [ans("a")])
        assert totals(stores[3]) == (0, 0, 0, 0, 1)
    finally:
        for opened in stores:
            opened.close()
