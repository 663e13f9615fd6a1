-- Rows may only name a data key that has not been destroyed. A worker can
-- still hold a destroyed key in its cache for a while, and without this
-- check it would seal new mail that no one can ever read. FOR SHARE makes
-- an insert and `mta keys destroy` (an UPDATE of the key row) wait for each
-- other, so one of them always sees the other's result.
CREATE FUNCTION reject_destroyed_data_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.data_key_id IS NOT NULL THEN
        PERFORM 1 FROM data_key WHERE id = NEW.data_key_id AND destroyed_at IS NULL FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'data key % was destroyed', NEW.data_key_id USING ERRCODE = 'KD001';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER message_live_data_key BEFORE INSERT ON message
    FOR EACH ROW EXECUTE FUNCTION reject_destroyed_data_key();
CREATE TRIGGER mailbox_message_live_data_key BEFORE INSERT ON mailbox_message
    FOR EACH ROW EXECUTE FUNCTION reject_destroyed_data_key();
CREATE TRIGGER mailbox_attachment_live_data_key BEFORE INSERT ON mailbox_attachment
    FOR EACH ROW EXECUTE FUNCTION reject_destroyed_data_key();
