-- A per-account version, bumped by every ingest that counts something, and the counter changes of
-- each version: servers keep in-memory aggregates current by reading the changes since the
-- version they hold. purged_through says which versions' changes are gone (reload instead).
CREATE TABLE account_versions (
    account_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    purged_through INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE bucket_changes (
    account_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    bucket_end INTEGER NOT NULL,
    skill_id INTEGER NOT NULL,
    agent_id INTEGER NOT NULL,
    score1 INTEGER NOT NULL,
    score2 INTEGER NOT NULL,
    score3 INTEGER NOT NULL,
    score4 INTEGER NOT NULL,
    score5 INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (account_id, version, bucket_end, skill_id, agent_id)
) WITHOUT ROWID;

CREATE INDEX bucket_changes_by_time ON bucket_changes (created_ms);
