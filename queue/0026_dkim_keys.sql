-- DKIM signing keys, one row per domain and selector. The private key
-- (PKCS#8 DER) is sealed with AES-256-GCM under the master key named by
-- master_key_id; the associated data binds domain, selector and algorithm,
-- so a sealed key copied to another row fails to open. public_key is the
-- p= value the TXT record publishes.
--
-- A key is pending (created, record not yet seen in DNS), active (signs),
-- retiring (replaced, still published until retire_after) or retired (no
-- longer published; its sealed private key is deleted). At most one key per
-- domain and algorithm is active.
CREATE TABLE dkim_key (
    domain        text NOT NULL,
    selector      text NOT NULL,
    algorithm     text NOT NULL CHECK (algorithm IN ('rsa', 'ed25519')),
    state         text NOT NULL CHECK (state IN ('pending', 'active', 'retiring', 'retired')),
    public_key    text NOT NULL,
    sealed_key    bytea,
    master_key_id text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    activated_at  timestamptz,
    retire_after  timestamptz,
    retired_at    timestamptz,
    PRIMARY KEY (domain, selector),
    CHECK ((state = 'retired') = (sealed_key IS NULL)),
    CHECK (state <> 'retiring' OR retire_after IS NOT NULL)
);
CREATE UNIQUE INDEX dkim_key_one_active ON dkim_key (domain, algorithm) WHERE state = 'active';
