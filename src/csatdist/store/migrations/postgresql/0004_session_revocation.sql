-- A login session is revoked (password changed, `csatdist users revoke-sessions`) by stamping it;
-- the row stays until it expires, so its holder is told why it was refused.
ALTER TABLE sessions ADD COLUMN revoked_ms BIGINT;

-- Revoking or deleting a user's sessions finds them without scanning the account's sessions.
CREATE INDEX sessions_by_user ON sessions (account_id, username);
