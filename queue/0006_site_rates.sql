-- Rate limits per site, shared by all nodes (GCRA without burst): the
-- theoretical arrival time of the site's next message, per second and per
-- hour limit. NULL: no message sent under that limit yet.
ALTER TABLE site ADD COLUMN second_tat timestamptz;
ALTER TABLE site ADD COLUMN hour_tat timestamptz;
