-- Operator control of the queue: held deliveries, deletions in the history,
-- and an append-only audit log of administrative actions.

-- A held delivery is never claimed, whatever its due time or lease, until released.
ALTER TABLE delivery ADD COLUMN held boolean NOT NULL DEFAULT false;

DROP INDEX delivery_ready;
CREATE INDEX delivery_ready ON delivery (due_at) WHERE lease_owner IS NULL AND NOT held;

ALTER TABLE delivery_event DROP CONSTRAINT delivery_event_status_check;
ALTER TABLE delivery_event ADD CONSTRAINT delivery_event_status_check
    CHECK (status IN ('delivered', 'deferred', 'bounced', 'deleted'));

-- Who did what to the queue. Entries name queue ids and counts, never
-- addresses or content, so they contain no personal data.
CREATE TABLE audit_log (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    action  text NOT NULL,
    detail  jsonb NOT NULL DEFAULT '{}'
);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP;
END;
$$;

CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
