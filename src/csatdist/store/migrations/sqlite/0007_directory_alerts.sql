-- Names for skill and agent ids (EXTENSIONS.md section 9): kind 1 a skill, 2 an agent. A name
-- set later (by updated_ms: the directory's PUT, or an answer's updatedAt) replaces an earlier.
CREATE TABLE directory (
    account_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    entity_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (account_id, kind, entity_id)
) WITHOUT ROWID;

-- Alert rules (EXTENSIONS.md section 8) with their state. rule holds the rule's document; secret
-- the HMAC key of its deliveries, sealed with the server key like OAuth secrets. An evaluation
-- is stored only when its (counters' version, window end) is later than the stored one, in the
-- transaction that writes its transition to the outbox: a transition is written once, whichever
-- replica saw it first.
CREATE TABLE alert_rules (
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    rule TEXT NOT NULL,
    secret BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'ok',
    state_since_ms INTEGER,
    evaluated_version INTEGER NOT NULL DEFAULT -1,
    evaluated_window_end INTEGER NOT NULL DEFAULT 0,
    evaluated_ms INTEGER,
    last_value REAL,
    last_total INTEGER,
    PRIMARY KEY (account_id, name)
) WITHOUT ROWID;

-- The durable outbox: a delivery per transition, tried until a 2xx or 24 h have passed; a
-- server claims due ones with a lease, so one server tries a delivery at a time.
CREATE TABLE alert_deliveries (
    delivery_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    rule_name TEXT NOT NULL,
    transition TEXT NOT NULL,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER,
    lease_until_ms INTEGER NOT NULL DEFAULT 0,
    outcome TEXT,
    finished_ms INTEGER
);

CREATE INDEX alert_deliveries_due ON alert_deliveries (next_attempt_ms);
CREATE INDEX alert_deliveries_by_rule ON alert_deliveries (account_id, rule_name, created_ms);

-- Every attempt of a delivery: what GET …/alerts/{name}/deliveries shows.
CREATE TABLE alert_attempts (
    delivery_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    status INTEGER,
    error TEXT,
    duration_ms INTEGER NOT NULL,
    response TEXT,
    PRIMARY KEY (delivery_id, attempt)
) WITHOUT ROWID;
