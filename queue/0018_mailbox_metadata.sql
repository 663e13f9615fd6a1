-- Metadata of each mailbox message, filled at local delivery from the header
-- section, so a mail client or API lists a mailbox without decrypting bodies.
--
-- date is the Date: field, or the arrival time when it is missing or
-- invalid. from_header and subject are decoded (RFC 2047) display text.
-- Rows delivered before this migration get the message's size and arrival
-- time, and no sender or subject.
ALTER TABLE mailbox_message
    ADD COLUMN folder      text NOT NULL DEFAULT 'INBOX',
    ADD COLUMN size        integer,
    ADD COLUMN date        timestamptz,
    ADD COLUMN from_header text NOT NULL DEFAULT '',
    ADD COLUMN subject     text NOT NULL DEFAULT '',
    ADD COLUMN flags       text[] NOT NULL DEFAULT '{}';

UPDATE mailbox_message b SET size = m.size, date = m.received_at FROM message m WHERE m.id = b.message_id;

ALTER TABLE mailbox_message ALTER COLUMN size SET NOT NULL, ALTER COLUMN date SET NOT NULL;

-- Listing a folder newest first, a page at a time (before_id), and finding
-- the rows that retention removes.
DROP INDEX mailbox_message_mailbox;
CREATE INDEX mailbox_message_folder ON mailbox_message (mailbox, folder, id);
CREATE INDEX mailbox_message_delivered ON mailbox_message (delivered_at);

-- Attachments over [mailbox] attachment_threshold, also stored as objects of
-- their own so they can be listed and fetched without the whole message.
-- The message body keeps them too, so a large attachment is stored twice.
-- position is the attachment's number within its message, from 1. An object
-- is shared by the mailbox rows of one delivery, each with its own wrap of
-- the object's content key under that mailbox's data key, as for bodies.
CREATE TABLE mailbox_attachment (
    id                 bigserial PRIMARY KEY,
    mailbox_message_id bigint NOT NULL REFERENCES mailbox_message (id) ON DELETE CASCADE,
    position           integer NOT NULL,
    filename           text NOT NULL,
    content_type       text NOT NULL,
    size               bigint NOT NULL,
    object_key         text NOT NULL,
    wrapped_key        bytea NOT NULL,
    data_key_id        bigint NOT NULL REFERENCES data_key (id),
    UNIQUE (mailbox_message_id, position)
);

CREATE INDEX mailbox_attachment_object ON mailbox_attachment (object_key);
CREATE INDEX mailbox_message_message ON mailbox_message (message_id);
