-- Addresses a sender domain no longer sends to: added after a hard bounce
-- for an unknown user, by an operator, or by import. expires_at NULL: kept
-- until removed. Addresses and domains are stored in lower case.
CREATE TABLE suppression (
    sender_domain text NOT NULL,
    address       text NOT NULL,
    reason        text NOT NULL,
    source        text NOT NULL CHECK (source IN ('bounce', 'operator', 'import')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    PRIMARY KEY (sender_domain, address)
);
CREATE INDEX suppression_expiry ON suppression (expires_at) WHERE expires_at IS NOT NULL;

-- Why a site is suspended: failed connections, or a receiver's throttling reply.
ALTER TABLE site ADD COLUMN suspend_reason text;
