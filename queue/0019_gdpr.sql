-- Legal holds, and the body store objects waiting to be deleted after the
-- transaction that stopped referencing them has committed.

-- While an address has a hold, mta gdpr erase rejects it and retention
-- skips its mailbox. address is in lower case.
CREATE TABLE legal_hold (
    address    text PRIMARY KEY,
    reason     text NOT NULL,
    actor      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Objects are deleted from the body store only after the rows that named
-- them are gone, so a crash in between leaves a row here, never a row that
-- names a missing object. Erasure and retention delete these rows once the
-- store confirms each deletion, and a later run finishes what is left.
CREATE TABLE object_deletion (
    object_key text PRIMARY KEY,
    queued_at  timestamptz NOT NULL DEFAULT now()
);
