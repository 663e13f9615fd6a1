"""Delivery to local mailboxes: metadata rows in PostgreSQL, the body stays in its store."""

from __future__ import annotations

import asyncpg

from mta.auth.users import existing_users
from mta.delivery.outcome import Outcome, Reply

_STORE = """
INSERT INTO mailbox_message (mailbox, message_id)
SELECT a, $2 FROM unnest($1::text[]) AS a
"""


async def deliver_local(pool: asyncpg.Pool, queue_id: str, recipients: list[str]) -> Outcome:
    outcome = Outcome(relay="local")
    wanted = [recipient.lower() for recipient in recipients]
    async with pool.acquire(timeout=30) as connection:
        known = await existing_users(connection, wanted)
        found = [address for address in wanted if address in known]
        if found:
            await connection.execute(_STORE, found, queue_id)

    for recipient, address in zip(recipients, wanted):
        if address in known:
            outcome.add(recipient, Reply(250, "2.0.0 delivered to mailbox"))
        else:
            outcome.add(recipient, Reply(550, "5.1.1 mailbox unknown"))
    return outcome
