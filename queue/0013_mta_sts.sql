-- MTA-STS policies (RFC 8461) fetched for destination domains, shared by
-- all nodes. A policy is used until expires_at (fetched_at + max_age),
-- and fetched again when the domain's _mta-sts TXT record names another id.
CREATE TABLE mta_sts_policy (
    domain     text PRIMARY KEY,
    policy_id  text NOT NULL,
    mode       text NOT NULL CHECK (mode IN ('enforce', 'testing', 'none')),
    mx         text[] NOT NULL,
    max_age    integer NOT NULL,
    fetched_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
