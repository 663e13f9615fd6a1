-- Small bodies live in PostgreSQL, encrypted, in the same commit as their
-- envelope: one durable write (the WAL, shared by a group commit) instead of
-- a file, its fsync and its directory's fsync per message. Large bodies stay
-- in the body store; message.body_key is NULL for inline ones.

ALTER TABLE message ALTER COLUMN body_key DROP NOT NULL;

CREATE TABLE message_body (
    message_id text PRIMARY KEY REFERENCES message (id) ON DELETE CASCADE,
    data       bytea NOT NULL
);

-- Ciphertext does not compress: skip the attempt.
ALTER TABLE message_body ALTER COLUMN data SET STORAGE EXTERNAL;
