-- Warm-up of new source addresses: messages sent per address, destination
-- site and day, and the days a ramp was held back after throttling replies.
CREATE TABLE warmup_count (
    address text NOT NULL,
    site    text NOT NULL,
    day     date NOT NULL,
    sent    integer NOT NULL,
    PRIMARY KEY (address, site, day)
);

CREATE TABLE warmup_hold (
    address text NOT NULL,
    site    text NOT NULL,
    day     date NOT NULL,
    PRIMARY KEY (address, site, day)
);
