-- Schema 9 changes the SQLite write path only (an answer log and a deferred fold, see the
-- SQLite migration of the same number); PostgreSQL writes its records and counters at once, so
-- its tables are unchanged. The version moves so that both stores number their schemas alike.
COMMENT ON TABLE bucket_changes IS 'Counter changes by account version; other replicas follow them.';
