-- Wake the webhook dispatchers when events are inserted, and let each
-- endpoint's sender claim its own due rows.
--
-- A statement-level trigger sends one NOTIFY per inserting statement, and
-- PostgreSQL folds equal notifications of one transaction into one, so a
-- commit batch of any size costs a single NOTIFY. Every writer of events
-- (spool, settle, queue commands, feedback reports) wakes the dispatchers
-- this way without knowing about them. Retries that fall due later are
-- found by the dispatchers' poll.
CREATE FUNCTION webhook_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mta_webhook', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER webhook_outbox_inserted AFTER INSERT ON webhook_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_outbox_notify();

-- Claims and the backlog gauges select by endpoint.
DROP INDEX webhook_outbox_due;
CREATE INDEX webhook_outbox_endpoint_due ON webhook_outbox (endpoint, due_at) WHERE state = 'pending';

-- A feedback loop report (mta.complaints) suppresses the recipient who complained.
ALTER TABLE suppression DROP CONSTRAINT suppression_source_check;
ALTER TABLE suppression ADD CONSTRAINT suppression_source_check
    CHECK (source IN ('bounce', 'operator', 'import', 'complaint'));
