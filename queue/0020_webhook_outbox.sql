-- Webhook events waiting to be sent, one row per event and endpoint.
--
-- Rows are inserted in the transaction that makes the change they report
-- (the enqueue batch for accepted, the settle batch for delivered, deferred
-- and bounced), so an event exists exactly when its change was committed.
-- event_id is sent with every attempt, so receivers can drop repeats: the
-- dispatcher delivers each event at least once. A claimed row's due_at is
-- pushed forward by the lease, so a node that dies while sending leaves the
-- row due again once the lease ends.
CREATE TABLE webhook_outbox (
    id          bigserial PRIMARY KEY,
    event_id    uuid NOT NULL,
    endpoint    text NOT NULL,
    event       text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    due_at      timestamptz NOT NULL DEFAULT now(),
    attempts    integer NOT NULL DEFAULT 0,
    state       text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    lease_owner text,
    last_error  text,
    finished_at timestamptz,
    UNIQUE (event_id, endpoint)
);

CREATE INDEX webhook_outbox_due ON webhook_outbox (due_at) WHERE state = 'pending';
CREATE INDEX webhook_outbox_finished ON webhook_outbox (finished_at) WHERE state <> 'pending';
