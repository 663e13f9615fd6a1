-- Rows may only name a data key that has not been destroyed. A worker can
-- still hold a destroyed key in its cache for a while, and without this
-- check it would seal new mail that no one can ever read. The check takes
-- FOR KEY SHARE, the lock the foreign key takes anyway, so it never waits
-- for `mta keys rotate-master` (FOR NO KEY UPDATE); `mta keys destroy`
-- locks the row FOR UPDATE first, so it and an insert wait for each other
-- and one of them always sees the other's result.
CREATE FUNCTION reject_destroyed_data_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.data_key_id IS NOT NULL THEN
        PERFORM 1 FROM data_key WHERE id = NEW.data_key_id AND destroyed_at IS NULL FOR KEY SHARE;
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
