-- The write path of an ingest appends, as SQLite's has since schema 9 (docs/performance.md,
-- "PostgreSQL ingest before and after"): a new answer goes to this log, a table with only its
-- primary key (it holds the answers acknowledged since the last fold), instead of the records'
-- heap and two large B-trees; its counter changes go to the change log only, one row per
-- version. A fold, in the background and before any read that needs it, moves the log into
-- `answers` (sorted by time) and adds the change log's versions after `account_folds` to the
-- counters and the history.
CREATE TABLE answer_log (
    account_id TEXT NOT NULL,
    answer_id TEXT NOT NULL,
    answer_time BIGINT NOT NULL,
    skill_id BIGINT,
    agent_id BIGINT,
    score SMALLINT,
    updated_ms BIGINT NOT NULL,
    conversation_id TEXT,
    comment TEXT,
    channel TEXT,
    skill_name TEXT,
    agent_name TEXT,
    PRIMARY KEY (account_id, answer_id)
);

-- The counters (`buckets`, the history) hold every version of the account up to
-- `folded_version`. A row of its own, not a column of `account_versions`: a fold locks it, and
-- never the row every write of the account locks, so ingest and fold do not wait for each other.
CREATE TABLE account_folds (
    account_id TEXT PRIMARY KEY,
    folded_version BIGINT NOT NULL
);

INSERT INTO account_folds (account_id, folded_version)
SELECT account_id, version FROM account_versions;
