"""Delivery to local mailboxes: metadata rows in PostgreSQL, the body stays in its store.

Every mailbox row carries its own wrap of the body's content key, under
that mailbox's data key. Destroying one mailbox's data key erases its copy
and leaves the other mailboxes' copies of the same body readable.
"""

from __future__ import annotations

import asyncpg

from mta.auth.users import existing_users
from mta.delivery.outcome import Outcome, Reply
from mta.storage.bodies import BodyCodec
from mta.storage.keyring import mailbox_owner
from mta.storage.store import BodyStore

_STORE = """
INSERT INTO mailbox_message (mailbox, message_id, wrapped_key, data_key_id)
SELECT a, $2, w, k FROM unnest($1::text[], $3::bytea[], $4::bigint[]) AS t (a, w, k)
"""

# A row from before the key hierarchy has no wrap of its own and uses the message's.
_LOAD = """
SELECT b.message_id, m.body_key, coalesce(b.wrapped_key, m.wrapped_key) AS wrapped_key,
       CASE WHEN b.wrapped_key IS NULL THEN m.data_key_id ELSE b.data_key_id END AS data_key_id,
       i.data AS inline_data
FROM mailbox_message b JOIN message m ON m.id = b.message_id LEFT JOIN message_body i ON i.message_id = m.id
WHERE b.id = $1
"""


class MailboxMessageNotFound(LookupError):
    """No mailbox row has the id given."""


async def deliver_local(pool: asyncpg.Pool, bodies: BodyCodec, queue_id: str, recipients: list[str],
                        content_key: bytes) -> Outcome:
    outcome = Outcome(relay="local")
    wanted = [recipient.lower() for recipient in recipients]
    async with pool.acquire(timeout=30) as connection:
        known = await existing_users(connection, wanted)

    # Wrapped with no connection held, because a data key's first use takes one from the pool.
    found = [address for address in wanted if address in known]
    if found:
        wraps = [await bodies.wrap_for(mailbox_owner(address), content_key, queue_id) for address in found]
        await pool.execute(_STORE, found, queue_id, [wrap for wrap, _ in wraps],
                           [data_key_id for _, data_key_id in wraps])

    for recipient, address in zip(recipients, wanted):
        if address in known:
            outcome.add(recipient, Reply(250, "2.0.0 delivered to mailbox"))
        else:
            outcome.add(recipient, Reply(550, "5.1.1 mailbox unknown"))
    return outcome


async def read_mailbox_message(connection, store: BodyStore, bodies: BodyCodec, row_id: int) -> bytes:
    """Return the body of one mailbox row, decrypted with that row's own wrap.

    Raises KeyDestroyedError when the mailbox's data key was destroyed, and
    MailboxMessageNotFound when no row has this id.
    """
    row = await connection.fetchrow(_LOAD, row_id)
    if row is None:
        raise MailboxMessageNotFound(f"mailbox message {row_id} not found")

    data = row["inline_data"]
    if data is None:
        data = await store.get(row["body_key"])
    opened = await bodies.open(row["message_id"], bytes(data), row["wrapped_key"], row["data_key_id"])
    return opened.body
