-- Every read, upsert and purge of the counters names the account, so the primary key
-- (account_id, bucket_end, skill_id, agent_id) serves them all; the index on bucket_end alone
-- served none, and each answer's counter upsert wrote a page of it at a random place
-- (docs/performance.md, "Ingest floors on SQLite").
DROP INDEX IF EXISTS buckets_by_end;
