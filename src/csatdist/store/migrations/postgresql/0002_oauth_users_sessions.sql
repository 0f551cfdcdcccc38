ALTER TABLE api_keys ADD COLUMN kind TEXT NOT NULL DEFAULT 'bearer';
ALTER TABLE api_keys ADD COLUMN consumer_secret BYTEA;
ALTER TABLE api_keys ADD COLUMN access_token TEXT;
ALTER TABLE api_keys ADD COLUMN token_secret BYTEA;

CREATE TABLE users (
    account_id TEXT NOT NULL,
    username TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (account_id, username)
);

CREATE TABLE sessions (
    account_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    secret_hash BYTEA NOT NULL,
    username TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    PRIMARY KEY (account_id, session_id)
);

CREATE INDEX sessions_by_expiry ON sessions (expires_ms);
