-- Long-term history (src/csatdist/history.py): the 5-minute counters rolled up per 15 minutes,
-- hour and day of UTC, for the account (kind 0, entity 0), per skill (kind 1) and per agent
-- (kind 2), kept CSATDIST_HISTORY_DAYS. Reports of any range and zone are summed from it.
CREATE TABLE history (
    account_id TEXT NOT NULL,
    tier SMALLINT NOT NULL,
    kind SMALLINT NOT NULL,
    start_ms BIGINT NOT NULL,
    entity_id BIGINT NOT NULL,
    score1 BIGINT NOT NULL,
    score2 BIGINT NOT NULL,
    score3 BIGINT NOT NULL,
    score4 BIGINT NOT NULL,
    score5 BIGINT NOT NULL,
    PRIMARY KEY (account_id, tier, kind, start_ms, entity_id)
);

-- Per (skill, agent) pair and 15 minutes: reports filtered by skills and agents at once.
CREATE TABLE history_pairs (
    account_id TEXT NOT NULL,
    quarter_start BIGINT NOT NULL,
    skill_id BIGINT NOT NULL,
    agent_id BIGINT NOT NULL,
    score1 BIGINT NOT NULL,
    score2 BIGINT NOT NULL,
    score3 BIGINT NOT NULL,
    score4 BIGINT NOT NULL,
    score5 BIGINT NOT NULL,
    PRIMARY KEY (account_id, quarter_start, skill_id, agent_id)
);

-- The history holds exactly the answers before rolled_through (a bucket end): buckets ending by
-- it are in the history, and any later change to such a bucket is applied to both.
ALTER TABLE account_versions ADD COLUMN rolled_through BIGINT NOT NULL DEFAULT 0;
