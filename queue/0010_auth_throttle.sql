-- Failed AUTH attempts per client address (an IPv6 client by its /64) and
-- per login name, shared by all nodes so that spreading guesses over them
-- gains nothing. A key is 'client:<address>' or 'account:<login>'.
CREATE TABLE auth_failure (
    key text PRIMARY KEY,
    failures integer NOT NULL,
    window_started timestamptz NOT NULL DEFAULT now(),
    blocked_until timestamptz
);
