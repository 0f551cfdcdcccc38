-- Pre-aggregated counters: one row per account, 5-minute bucket (labelled by its end), skill and
-- agent. Every table is keyed first by account_id, so it can be distributed by account (Citus).
CREATE TABLE buckets (
    account_id TEXT NOT NULL,
    bucket_end BIGINT NOT NULL,
    skill_id BIGINT NOT NULL,
    agent_id BIGINT NOT NULL,
    score1 BIGINT NOT NULL DEFAULT 0,
    score2 BIGINT NOT NULL DEFAULT 0,
    score3 BIGINT NOT NULL DEFAULT 0,
    score4 BIGINT NOT NULL DEFAULT 0,
    score5 BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, bucket_end, skill_id, agent_id)
);

CREATE INDEX buckets_by_end ON buckets (bucket_end);

CREATE TABLE answer_ids (
    account_id TEXT NOT NULL,
    answer_id TEXT NOT NULL,
    answer_time BIGINT NOT NULL,
    PRIMARY KEY (account_id, answer_id)
);

CREATE INDEX answer_ids_by_time ON answer_ids (answer_time);

CREATE TABLE api_keys (
    account_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    secret_hash BYTEA NOT NULL,
    scopes TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT,
    PRIMARY KEY (account_id, key_id)
);

-- Key ids are random and unique; revoking by key id alone (CLI) looks them up here.
CREATE INDEX api_keys_by_key_id ON api_keys (key_id);
