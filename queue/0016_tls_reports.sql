-- TLS reporting (RFC 8460): outbound TLS sessions counted per UTC day and
-- destination policy, added to by every node, and the daily reports sent.
CREATE TABLE tls_report_count (
    day           date NOT NULL,
    policy_domain text NOT NULL,
    -- 'sts', 'tlsa' or 'no-policy-found' (RFC 8460 section 4.3).
    policy_type   text NOT NULL,
    -- The policy's lines joined by newlines; empty for no-policy-found.
    policy_string text NOT NULL,
    mx_host       text NOT NULL,
    -- 'success', or a result type of RFC 8460 section 4.3 for a failed session.
    result_type   text NOT NULL,
    -- Empty for successful sessions, which are reported as totals only.
    sending_ip    text NOT NULL,
    receiving_ip  text NOT NULL,
    sessions      bigint NOT NULL CHECK (sessions > 0),
    PRIMARY KEY (day, policy_domain, policy_type, policy_string, mx_host, result_type, sending_ip, receiving_ip)
);

-- One row per day and policy domain whose report a node has taken on, so
-- that only one node sends it. report_id is NULL when the domain publishes
-- no TLSRPT record.
CREATE TABLE tls_report_sent (
    day           date NOT NULL,
    policy_domain text NOT NULL,
    report_id     text,
    sent_at       timestamptz NOT NULL DEFAULT now(),
    detail        text NOT NULL DEFAULT '',
    PRIMARY KEY (day, policy_domain)
);
