-- Destination sites: a domain's MX set (or its static route), shared by the
-- domains a provider hosts. A site that keeps refusing connections is
-- suspended for all nodes with one update, and claims skip its rows.

CREATE TABLE site (
    key             text PRIMARY KEY,
    suspended_until timestamptz,
    last_reply      text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX site_suspended ON site (suspended_until) WHERE suspended_until IS NOT NULL;

-- The site of the last attempt; NULL until a delivery has been tried once.
ALTER TABLE delivery ADD COLUMN site text;
