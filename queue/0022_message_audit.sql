-- The message auditor (mta/message_audit.py) appends an audit entry for
-- each accepted message and each delivery outcome, reading the rows the
-- queue already writes, so the SMTP accept path takes no audit lock.
--
-- Sequence ids are handed out before commit, so rows commit out of id
-- order and a cursor on the id alone would skip a row committed late.
-- Each row therefore records its writing transaction (xid8, 64 bits, never
-- wraps). Rows whose transaction id is below the oldest transaction still
-- running, pg_snapshot_xmin(pg_current_snapshot()), can no longer appear or
-- change, so the auditor reads in (xid, id) order up to that bound only.
-- Rows written before this migration have no xid and are not audited.
ALTER TABLE message ADD COLUMN xid xid8;
ALTER TABLE message ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
CREATE INDEX message_audit_order ON message (xid, id);

ALTER TABLE delivery_event ADD COLUMN xid xid8;
ALTER TABLE delivery_event ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
CREATE INDEX delivery_event_audit_order ON delivery_event (xid, id);

-- The last message and delivery event audited, updated in the transaction
-- that appends their entries, so each is audited exactly once.
CREATE TABLE audit_cursor (
    single      boolean PRIMARY KEY DEFAULT true CHECK (single),
    message_xid xid8 NOT NULL DEFAULT '0',
    message_id  text NOT NULL DEFAULT '',
    event_xid   xid8 NOT NULL DEFAULT '0',
    event_id    bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO audit_cursor DEFAULT VALUES;
