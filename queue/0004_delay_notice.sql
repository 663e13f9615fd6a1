-- When the sender got a notice that delivery is delayed: at most one such
-- notice per message, however many of its deliveries are deferred.
ALTER TABLE message ADD COLUMN delay_notified_at timestamptz;
