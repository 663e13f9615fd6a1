-- Each audit entry carries the SHA-256 of the previous entry's hash and its
-- own content, so changing or removing an entry breaks the chain from there
-- on (mta audit verify). Inserts take a transaction-level advisory lock, so
-- entries are chained in id order even when several nodes write at once.
--
-- The content hashed is, for each of id, the time in UTC as
-- YYYY-MM-DDTHH:MM:SS.ffffff, actor, action, and detail as PostgreSQL's
-- text form of the jsonb value: its length in UTF-8 octets, ":", the text
-- itself. The lengths keep a "|" or ":" inside a field from moving the
-- boundary between fields. The first entry's previous hash is 32 zero octets.
ALTER TABLE audit_log ADD COLUMN prev_hash bytea, ADD COLUMN hash bytea;

CREATE FUNCTION audit_log_content(entry audit_log) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT string_agg(convert_to(octet_length(convert_to(field, 'UTF8'))::text || ':' || field, 'UTF8'), ''::bytea
                      ORDER BY position)
    FROM unnest(ARRAY[entry.id::text, to_char(entry.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'),
                      entry.actor, entry.action, entry.detail::text]) WITH ORDINALITY AS fields (field, position)
$$;

CREATE FUNCTION audit_log_chain() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Any constant works: it only has to be the same for every writer.
    PERFORM pg_advisory_xact_lock(7236537);
    -- The id is taken under the lock, so id order is chain order.
    NEW.id := nextval(pg_get_serial_sequence('audit_log', 'id'));
    SELECT hash INTO NEW.prev_hash FROM audit_log ORDER BY id DESC LIMIT 1;
    NEW.prev_hash := coalesce(NEW.prev_hash, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    NEW.hash := sha256(NEW.prev_hash || audit_log_content(NEW));
    RETURN NEW;
END;
$$;

-- Chain the entries written before this migration, in id order.
ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change;
DO $$
DECLARE
    entry audit_log;
    previous bytea := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
BEGIN
    FOR entry IN SELECT * FROM audit_log ORDER BY id LOOP
        UPDATE audit_log SET prev_hash = previous, hash = sha256(previous || audit_log_content(entry))
        WHERE id = entry.id RETURNING hash INTO previous;
    END LOOP;
END;
$$;
ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_change;

ALTER TABLE audit_log ALTER COLUMN prev_hash SET NOT NULL, ALTER COLUMN hash SET NOT NULL;
CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_log_chain();
