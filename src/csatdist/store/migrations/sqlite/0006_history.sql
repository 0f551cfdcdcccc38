-- Long-term history (src/csatdist/history.py): the 5-minute counters rolled up per 15 minutes,
-- hour and day of UTC, for the account (kind 0, entity 0), per skill (kind 1) and per agent
-- (kind 2), kept CSATDIST_HISTORY_DAYS. Reports of any range and zone are summed from it.
CREATE TABLE history (
    account_id TEXT NOT NULL,
    tier INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    start_ms INTEGER NOT NULL,
    entity_id INTEGER NOT NULL,
    score1 INTEGER NOT NULL,
    score2 INTEGER NOT NULL,
    score3 INTEGER NOT NULL,
    score4 INTEGER NOT NULL,
    score5 INTEGER NOT NULL,
    PRIMARY KEY (account_id, tier, kind, start_ms, entity_id)
) WITHOUT ROWID;

-- Per (skill, agent) pair and 15 minutes: reports filtered by skills and agents at once.
CREATE TABLE history_pairs (
    account_id TEXT NOT NULL,
    quarter_start INTEGER NOT NULL,
    skill_id INTEGER NOT NULL,
    agent_id INTEGER NOT NULL,
    score1 INTEGER NOT NULL,
    score2 INTEGER NOT NULL,
    score3 INTEGER NOT NULL,
    score4 INTEGER NOT NULL,
    score5 INTEGER NOT NULL,
    PRIMARY KEY (account_id, quarter_start, skill_id, agent_id)
) WITHOUT ROWID;

-- The history holds exactly the answers before rolled_through (a bucket end): buckets ending by
-- it are in the history, and any later change to such a bucket is applied to both.
ALTER TABLE account_versions ADD COLUMN rolled_through INTEGER NOT NULL DEFAULT 0;
