-- A per-account version, bumped by every ingest that counts something, and the counter changes of
-- each version: servers keep in-memory aggregates current by reading the changes since the
-- version they hold. purged_through says which versions' changes are gone (reload instead).
CREATE TABLE account_versions (
    account_id TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    purged_through BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE bucket_changes (
    account_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    bucket_end BIGINT NOT NULL,
    skill_id BIGINT NOT NULL,
    agent_id BIGINT NOT NULL,
    score1 BIGINT NOT NULL,
    score2 BIGINT NOT NULL,
    score3 BIGINT NOT NULL,
    score4 BIGINT NOT NULL,
    score5 BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (account_id, version, bucket_end, skill_id, agent_id)
);

CREATE INDEX bucket_changes_by_time ON bucket_changes (created_ms);
