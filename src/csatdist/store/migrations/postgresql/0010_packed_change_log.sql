-- The change log as one row per account version, its counter changes packed (as SQLite's since
-- schema 9: (bucket end, skill, agent, s1..s5) rows as little-endian int64, eight per row, see
-- csatdist.store.packed): an ingest of 5,000 answers writes one change-log row instead of one
-- per counter (measured: the per-counter rows were a quarter of the ingest statement's time and
-- a third of its WAL).
CREATE TABLE change_log (
    account_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    changes BYTEA NOT NULL,
    PRIMARY KEY (account_id, version)
);

-- Stored out of line uncompressed: pglz took 10 ms of a 5,000-answer ingest to compress its
-- 300 kB row (measured; uncompressed it costs 1 ms and 320 kB of WAL, against 1.45 MB for the
-- rows it replaces). lz4 would be as fast and smaller, but not every server is built with it.
ALTER TABLE change_log ALTER COLUMN changes SET STORAGE EXTERNAL;

CREATE INDEX change_log_by_time ON change_log (created_ms);

-- The counters hold every change so far; the changes of the old log are not carried over: a
-- server following an account from an older version loads a fresh snapshot instead.
UPDATE account_versions SET purged_through = version;

DROP TABLE bucket_changes;
