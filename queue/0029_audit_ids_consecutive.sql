-- The chain trigger (0015) takes each entry's id from the sequence under its
-- lock, so the column default took a second number per entry and left every
-- other id unused, which looks like removed entries to an auditor. Without
-- the default the trigger's number is the only one taken.
ALTER TABLE audit_log ALTER COLUMN id DROP DEFAULT;
