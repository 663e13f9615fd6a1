-- The last reply for each recipient still outstanding, after a deferral:
-- {"user@example.org": "451 4.7.1 greylisted", ...}. last_reply keeps the
-- first of them, for listings.
ALTER TABLE delivery ADD COLUMN replies jsonb;
