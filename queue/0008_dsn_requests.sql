-- The client's requests for delivery status notifications (RFC 3461): RET,
-- ENVID, and NOTIFY and ORCPT per recipient, as
-- {"ret": "FULL"|"HDRS"|"", "envid": "...", "recipients": {"a@b": {"notify": [...], "orcpt": "..."}}}.
-- NULL when the client gave no DSN parameter.
ALTER TABLE message ADD COLUMN dsn jsonb;
