-- Bearer tokens of the HTTP API. Only the SHA-256 of a token is stored: a
-- token is 32 random octets, so a plain hash is as strong as a slow one.
-- id is the public part written inside the token, to find the row without
-- a scan. A token sends mail either as one account (From must be that
-- address) or for a set of sender domains. Revoked rows are kept for the
-- listing; a name is unique among tokens that are not revoked.
CREATE TABLE api_token (
    id             text PRIMARY KEY,
    name           text NOT NULL,
    token_hash     bytea NOT NULL,
    scopes         text[] NOT NULL,
    account        text,
    sender_domains text[] NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz
);
CREATE UNIQUE INDEX api_token_active_name ON api_token (name) WHERE revoked_at IS NULL;
