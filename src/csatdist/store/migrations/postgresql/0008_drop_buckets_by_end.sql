-- Every read, upsert and purge of the counters names the account, so the primary key
-- (account_id, bucket_end, skill_id, agent_id) serves them all; the index on bucket_end alone
-- served none and cost each counter upsert a write at a random place.
DROP INDEX IF EXISTS buckets_by_end;
