-- The write path of an ingest appends (docs/performance.md, "The SQLite write path"): a new
-- answer goes to this log, a small B-tree by id (it holds the answers acknowledged since
-- the last fold), instead of the records' two large indexes at random places; its counter
-- changes go to the change log only, as one row per version. A fold, run in the background
-- and before any read that needs it, moves the log into `answers` (sorted) and adds the change
-- log's versions after `folded_version` to the counters and the history, many answers per page
-- written.
CREATE TABLE answer_log (
    account_id TEXT NOT NULL,
    answer_id TEXT NOT NULL,
    answer_time INTEGER NOT NULL,
    skill_id INTEGER,
    agent_id INTEGER,
    score INTEGER,
    updated_ms INTEGER NOT NULL,
    conversation_id TEXT,
    comment TEXT,
    channel TEXT,
    skill_name TEXT,
    agent_name TEXT,
    PRIMARY KEY (account_id, answer_id)
) WITHOUT ROWID;

-- The counters (`buckets`, the history) hold every version of the account up to this one.
ALTER TABLE account_versions ADD COLUMN folded_version INTEGER NOT NULL DEFAULT 0;

-- A version's counter changes: (bucket end, skill, agent, s1..s5) rows packed as little-endian
-- int64, eight per row (csatdist.store.packed).
CREATE TABLE change_log (
    account_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    changes BLOB NOT NULL,
    PRIMARY KEY (account_id, version)
) WITHOUT ROWID;

CREATE INDEX change_log_by_time ON change_log (created_ms);

-- The counters hold every change so far; the changes of the old log are not carried over: a
-- server following an account from an older version loads a fresh snapshot instead.
UPDATE account_versions SET folded_version = version, purged_through = version;

DROP TABLE bucket_changes;

-- Counter changes and log rows written since the last fold (0: nothing to fold).
CREATE TABLE fold_state (pending INTEGER NOT NULL);

INSERT INTO fold_state (pending) VALUES (0);
