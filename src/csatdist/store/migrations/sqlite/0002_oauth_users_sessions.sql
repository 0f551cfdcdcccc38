-- OAuth 1.0a app keys live beside bearer keys: the consumer key is the key id, and the consumer
-- and token secrets are stored encrypted (HMAC-SHA1 verification needs them in clear).
ALTER TABLE api_keys ADD COLUMN kind TEXT NOT NULL DEFAULT 'bearer';
ALTER TABLE api_keys ADD COLUMN consumer_secret BLOB;
ALTER TABLE api_keys ADD COLUMN access_token TEXT;
ALTER TABLE api_keys ADD COLUMN token_secret BLOB;

-- Users of the compat login endpoint; passwords hashed with Argon2id.
CREATE TABLE users (
    account_id TEXT NOT NULL,
    username TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (account_id, username)
) WITHOUT ROWID;

-- Bearer sessions from a login; only the SHA-256 of the secret is stored.
CREATE TABLE sessions (
    account_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    username TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (account_id, session_id)
) WITHOUT ROWID;

CREATE INDEX sessions_by_expiry ON sessions (expires_ms);
