-- Delivery history partitioned by day, so old history is dropped a
-- partition at a time, and node heartbeats.
--
-- Daily partitions are created ahead by the nodes' housekeeping
-- (mta.spool.housekeeping). Rows for a day without a partition, such as the
-- history from before this migration, go to the default partition.

-- The old table gives up its names, so the new one gets the usual ones.
ALTER TABLE delivery_event RENAME TO delivery_event_unpartitioned;
ALTER INDEX delivery_event_message RENAME TO delivery_event_unpartitioned_message;
ALTER TABLE delivery_event_unpartitioned RENAME CONSTRAINT delivery_event_pkey TO delivery_event_unpartitioned_pkey;
ALTER TABLE delivery_event_unpartitioned
    RENAME CONSTRAINT delivery_event_status_check TO delivery_event_unpartitioned_status_check;
ALTER SEQUENCE delivery_event_id_seq RENAME TO delivery_event_unpartitioned_id_seq;

CREATE TABLE delivery_event (
    id         bigserial,
    message_id text NOT NULL,
    recipient  text NOT NULL,
    status     text NOT NULL CHECK (status IN ('delivered', 'deferred', 'bounced', 'deleted')),
    reply      text NOT NULL,
    relay      text NOT NULL DEFAULT '',
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);

CREATE INDEX delivery_event_message ON delivery_event (message_id);
CREATE TABLE delivery_event_default PARTITION OF delivery_event DEFAULT;

INSERT INTO delivery_event (id, message_id, recipient, status, reply, relay, at)
SELECT id, message_id, recipient, status, reply, relay, at FROM delivery_event_unpartitioned;
SELECT setval(pg_get_serial_sequence('delivery_event', 'id'), coalesce(max(id), 0) + 1, false)
FROM delivery_event;
DROP TABLE delivery_event_unpartitioned;

-- One row per worker process that has run. seen_at moves on while it lives.
CREATE TABLE node (
    id         text PRIMARY KEY,
    hostname   text NOT NULL,
    pid        integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now()
);
