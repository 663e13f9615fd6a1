-- The key hierarchy for bodies at rest: master key, then one data key per
-- owner, then one content key per body (docs/ENCRYPTION.md).
--
-- A data key is 32 random octets wrapped under the master key named by
-- master_key_id (the first 8 hex digits of the SHA-256 of that master key).
-- Owners are 'mailbox:ADDRESS' for mail delivered to a local mailbox,
-- 'sender:ADDRESS' for mail a local user submitted, and 'queue:inbound' for
-- other mail while it is queued. Destroying a key deletes its wrapped octets
-- and keeps the row as a tombstone, so every content key wrapped under it
-- becomes unreadable. Only one live key per owner, so a new key can follow a
-- destroyed one.
CREATE TABLE data_key (
    id            bigserial PRIMARY KEY,
    owner         text NOT NULL,
    wrapped       bytea,
    master_key_id text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    destroyed_at  timestamptz,
    CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL))
);

CREATE UNIQUE INDEX data_key_live_owner ON data_key (owner) WHERE destroyed_at IS NULL;

-- NULL data_key_id: a row written before this migration, whose wrapped_key
-- is the content key wrapped directly under the master key (format MTA1).
-- wrapped_key becomes NULL once a completed message's body is kept only for
-- local mailboxes, each of which has its own wrap.
ALTER TABLE message
    ADD COLUMN data_key_id bigint REFERENCES data_key (id),
    ALTER COLUMN wrapped_key DROP NOT NULL;

-- NULL wrapped_key: a delivery from before this migration, read through the
-- message's own wrap.
ALTER TABLE mailbox_message
    ADD COLUMN wrapped_key bytea,
    ADD COLUMN data_key_id bigint REFERENCES data_key (id);
