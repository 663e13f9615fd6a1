-- The id of the master key that every node must have loaded: the first 8
-- hex digits of its SHA-256, as in data_key.master_key_id, never the key.
-- The first node to start records its key here. A node whose loaded
-- master keys do not include the recorded id stops at start-up, so two
-- nodes that start on an empty database cannot each make a key of their
-- own. `mta keys rotate-master` records the new key.
CREATE TABLE master_key (
    only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    key_id      text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- 1: the wrap's associated data binds the owner. 2: it binds the owner and
-- the data key's id, so a wrap copied onto another row of the same owner
-- fails too. Every row names the version of its wrap.
ALTER TABLE data_key ADD COLUMN wrap_version smallint NOT NULL DEFAULT 1 CHECK (wrap_version IN (1, 2));
ALTER TABLE data_key ALTER COLUMN wrap_version DROP DEFAULT;
