-- Every accepted answer as a record (EXTENSIONS.md section 6), replacing the id-only answer_ids:
-- the id is still the idempotency key (the primary key), and the record keeps what a correction
-- needs to move its counts and what a listing shows.
CREATE TABLE answers (
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

-- Listing (newest first; the few equal times are put in id order after the index) and the
-- retention purge, account by account. Without the id, its entries are small: ingest writes
-- one into it per answer (measured: 5,000 answers committed in half the time of the index
-- with the id, on 400,000 records).
CREATE INDEX answers_by_time ON answers (account_id, answer_time);

-- Answers counted before records were kept: only their id and time are known (skill, agent
-- and score stay NULL). They still make a replayed copy a duplicate, are never listed, and
-- expire with the retention like the rest.
INSERT INTO answers (account_id, answer_id, answer_time, updated_ms)
SELECT account_id, answer_id, answer_time, answer_time FROM answer_ids;

-- Every account with counts or ids gets a version row (accounts idle since before migration 3
-- have none): the retention purge goes account by account through it.
INSERT INTO account_versions (account_id, version)
SELECT account_id, 0 FROM answer_ids UNION SELECT account_id, 0 FROM buckets
ON CONFLICT (account_id) DO NOTHING;

DROP TABLE answer_ids;

-- Erased ids, without anything else of the answer, until the retention ends: a replayed or late
-- copy of an erased answer is refused, never counted again.
CREATE TABLE erased_answers (
    account_id TEXT NOT NULL,
    answer_id TEXT NOT NULL,
    erased_ms BIGINT NOT NULL,
    PRIMARY KEY (account_id, answer_id)
);

CREATE INDEX erased_answers_by_time ON erased_answers (erased_ms);
