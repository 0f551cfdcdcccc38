-- Pre-aggregated counters: one row per account, 5-minute bucket (labelled by its end), skill and
-- agent. Every table is keyed first by account_id so the schema can be sharded by account.
CREATE TABLE buckets (
    account_id TEXT NOT NULL,
    bucket_end INTEGER NOT NULL,
    skill_id INTEGER NOT NULL,
    agent_id INTEGER NOT NULL,
    score1 INTEGER NOT NULL DEFAULT 0,
    score2 INTEGER NOT NULL DEFAULT 0,
    score3 INTEGER NOT NULL DEFAULT 0,
    score4 INTEGER NOT NULL DEFAULT 0,
    score5 INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, bucket_end, skill_id, agent_id)
) WITHOUT ROWID;

-- For the retention purge, which spans accounts.
CREATE INDEX buckets_by_end ON buckets (bucket_end);

-- Idempotency keys: an answer id is counted once per account. answer_time lets the purge drop
-- keys once an answer that old would be rejected anyway.
CREATE TABLE answer_ids (
    account_id TEXT NOT NULL,
    answer_id TEXT NOT NULL,
    answer_time INTEGER NOT NULL,
    PRIMARY KEY (account_id, answer_id)
) WITHOUT ROWID;

CREATE INDEX answer_ids_by_time ON answer_ids (answer_time);

CREATE TABLE api_keys (
    account_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    scopes TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER,
    PRIMARY KEY (account_id, key_id)
) WITHOUT ROWID;

CREATE UNIQUE INDEX api_keys_by_key_id ON api_keys (key_id);
