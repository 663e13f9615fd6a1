-- The reason a message was quarantined on arrival (for example a DMARC
-- failure under p=quarantine), or NULL. Quarantined mail is still delivered; the
-- flag is for the mailbox store and for operators.
ALTER TABLE message ADD COLUMN quarantine text;
