"""The suppression list: recipients a sender domain does not send to any more.

An address is added for its sender's domain when a receiver replies that
the mailbox does not exist (a hard bounce, kept ``bounce_days``), when the
recipient complains in a feedback loop report (mta.complaints, no expiry),
or by an operator with ``mta suppression add`` or ``import``. A delivery attempt
fails the suppressed recipients at once, before any connection, with
550 5.7.1. Messages from the null sender are never suppressed.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from mta.addresses import domain_of
from mta.delivery.outcome import Reply

log = logging.getLogger("mta.delivery")

SOURCES = ("bounce", "operator", "import", "complaint")

def suppressed_column(message: str, recipients: str) -> str:
    """Return an SQL column: the lower-case recipients suppressed for the sender domain of a message row.

    It goes into the query that loads the message, so checking costs no
    round trip of its own.
    """
    return (f"ARRAY(SELECT s.address FROM suppression s"
            f" WHERE s.sender_domain = rtrim(lower(substring({message}.sender from '@([^@]*)$')), '.')"
            f" AND s.address = ANY({recipients}) AND (s.expires_at IS NULL OR s.expires_at > now()))")

# A bounce refreshes an earlier bounce entry but leaves an operator's or an import's alone.
_ADD_BOUNCE = """
INSERT INTO suppression (sender_domain, address, reason, source, expires_at)
VALUES ($1, $2, $3, 'bounce', now() + make_interval(days => $4))
ON CONFLICT (sender_domain, address) DO UPDATE
SET reason = EXCLUDED.reason, created_at = now(), expires_at = EXCLUDED.expires_at
WHERE suppression.source = 'bounce'
"""

_ADD = """
INSERT INTO suppression (sender_domain, address, reason, source, expires_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
ON CONFLICT (sender_domain, address) DO UPDATE
SET reason = EXCLUDED.reason, source = EXCLUDED.source, created_at = now(), expires_at = EXCLUDED.expires_at
"""


# Letters, digits and hyphens in dot-separated labels; an internationalised domain goes in its xn-- form.
_DOMAIN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")
_HEADER = ("sender_domain", "address")


class SuppressionError(ValueError):
    """A bad address, domain or import line, named in the message."""


@dataclass(frozen=True)
class Entry:
    sender_domain: str
    address: str
    reason: str
    source: str
    expires_at: datetime | None = None


def suppressed_reply(sender_domain: str) -> Reply:
    return Reply(550, f"5.7.1 recipient is on the suppression list of {sender_domain}")


async def add_bounce(pool: asyncpg.Pool, sender: str, recipient: str, reply: Reply, days: int) -> None:
    if not sender:
        return
    await pool.execute(_ADD_BOUNCE, domain_of(sender).lower().rstrip("."), recipient.lower(), str(reply)[:500], days)
    log.info("suppressed <%s> for %s for %d days: %s", recipient, domain_of(sender).lower(), days, reply)


def check_entry(entry: Entry) -> Entry:
    """Return the entry in lower case, or raise SuppressionError."""
    domain, address = entry.sender_domain.strip().lower().rstrip("."), entry.address.strip().lower()
    if not _DOMAIN.match(domain):
        raise SuppressionError(f"invalid sender domain: {entry.sender_domain!r}")
    if address.count("@") != 1 or address.startswith("@") or address.endswith("@") or " " in address:
        raise SuppressionError(f"invalid address: {entry.address!r}")
    if entry.source not in SOURCES:
        raise SuppressionError(f"invalid source: {entry.source!r}")
    return Entry(domain, address, entry.reason, entry.source, entry.expires_at)


async def add(connection: asyncpg.Connection, entries: list[Entry]) -> int:
    """Add or replace entries; return how many distinct ones (the last of duplicates wins)."""
    distinct = {}
    for entry in entries:
        checked = check_entry(entry)
        distinct[(checked.sender_domain, checked.address)] = checked
    entries = list(distinct.values())
    await connection.execute(_ADD, [e.sender_domain for e in entries], [e.address for e in entries],
                             [e.reason for e in entries], [e.source for e in entries],
                             [e.expires_at for e in entries])
    return len(entries)


async def remove(connection: asyncpg.Connection, sender_domain: str, address: str) -> bool:
    status = await connection.execute("DELETE FROM suppression WHERE sender_domain = $1 AND address = $2",
                                      sender_domain.strip().lower().rstrip("."), address.strip().lower())
    return status != "DELETE 0"


async def entries(connection: asyncpg.Connection, sender_domain: str | None, address: str | None) -> list:
    return await connection.fetch(
        "SELECT sender_domain, address, reason, source, created_at, expires_at FROM suppression"
        " WHERE ($1::text IS NULL OR sender_domain = $1) AND ($2::text IS NULL OR address = $2)"
        " AND (expires_at IS NULL OR expires_at > now()) ORDER BY sender_domain, address",
        sender_domain.lower() if sender_domain else None, address.lower() if address else None)


def parse_import(text: str, expires_at: datetime | None) -> list[Entry]:
    """Parse CSV lines of sender_domain,address[,reason]; '#' starts a comment line.

    A byte order mark (as spreadsheets write) and a first line naming the
    columns are skipped.
    """
    parsed = []
    for number, row in enumerate(csv.reader(io.StringIO(text.removeprefix("\ufeff"))), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if number == 1 and tuple(field.strip().lower() for field in row[:2]) == _HEADER:
            continue
        if len(row) not in (2, 3):
            raise SuppressionError(f"line {number}: expected sender_domain,address[,reason], got {len(row)} fields")
        reason = row[2].strip() if len(row) == 3 else "imported"
        try:
            parsed.append(check_entry(Entry(row[0], row[1], reason, "import", expires_at)))
        except SuppressionError as error:
            raise SuppressionError(f"line {number}: {error}") from None
    return parsed


async def sweep(pool: asyncpg.Pool) -> int:
    """Delete the suppression entries whose expiry has passed; return how many."""
    status = await pool.execute("DELETE FROM suppression WHERE expires_at <= now()")
    return int(status.split()[-1])
