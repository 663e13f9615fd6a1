-- The queue's first schema: users, envelopes, the delivery work table,
-- per-recipient outcomes and the local mailbox store.
-- Message content never lives in a text column: bodies are encrypted objects
-- in the body store, referenced by key.

CREATE TABLE mailbox_user (
    address       text PRIMARY KEY,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- One row per accepted message. sender is '' for the null reverse-path.
CREATE TABLE message (
    id           text PRIMARY KEY,
    sender       text NOT NULL,
    size         integer NOT NULL,
    body_key     text NOT NULL,
    wrapped_key  bytea NOT NULL,
    origin       text NOT NULL,
    session_id   text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);

-- The hot work table: one row per message and destination domain, holding
-- that domain's outstanding recipients. Finished rows are deleted at once.
CREATE TABLE delivery (
    id          bigserial PRIMARY KEY,
    message_id  text NOT NULL REFERENCES message (id) ON DELETE CASCADE,
    domain      text NOT NULL,
    recipients  text[] NOT NULL,
    due_at      timestamptz NOT NULL DEFAULT now(),
    attempts    integer NOT NULL DEFAULT 0,
    lease_owner text,
    lease_until timestamptz,
    last_reply  text
);

CREATE INDEX delivery_ready ON delivery (due_at) WHERE lease_owner IS NULL;
CREATE INDEX delivery_leased ON delivery (lease_until) WHERE lease_owner IS NOT NULL;
CREATE INDEX delivery_message ON delivery (message_id);

-- Outcome of every delivery attempt per recipient, for `mta queue` and audits.
CREATE TABLE delivery_event (
    id         bigserial PRIMARY KEY,
    message_id text NOT NULL,
    recipient  text NOT NULL,
    status     text NOT NULL CHECK (status IN ('delivered', 'deferred', 'bounced')),
    reply      text NOT NULL,
    relay      text NOT NULL DEFAULT '',
    at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX delivery_event_message ON delivery_event (message_id);

-- Mail delivered to local mailboxes: metadata here, the body in the body store.
CREATE TABLE mailbox_message (
    id           bigserial PRIMARY KEY,
    mailbox      text NOT NULL,
    message_id   text NOT NULL REFERENCES message (id),
    delivered_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX mailbox_message_mailbox ON mailbox_message (mailbox);
