"""Delivery to local mailboxes: metadata rows in PostgreSQL, the body stays in its store.

Every mailbox row carries its own wrap of the body's content key, under
that mailbox's data key. Destroying one mailbox's data key erases its copy
and leaves the other mailboxes' copies of the same body readable. Large
attachments are also sealed as objects of their own (mta.mailbox.attachments),
wrapped the same way, for listing and fetching without the whole message.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import datetime

import asyncpg

from mta.auth.users import existing_users
from mta.delivery.outcome import Outcome, Reply
from mta.mailbox.attachments import Attachment, large_attachments
from mta.mailbox.metadata import Metadata, read_metadata
from mta.mailbox.store import MessageNotFound, read_body
from mta.storage.bodies import BodyCodec, Opened
from mta.storage.keyring import DESTROYED_KEY_SQLSTATE, mailbox_owner
from mta.storage.store import BodyStore, StoreError

log = logging.getLogger("mta.delivery")

_STORE = """
INSERT INTO mailbox_message (mailbox, message_id, wrapped_key, data_key_id, size, date, from_header, subject)
SELECT a, $2, w, k, $5, $6, $7, $8 FROM unnest($1::text[], $3::bytea[], $4::bigint[]) AS t (a, w, k)
RETURNING id, mailbox
"""

_STORE_ATTACHMENTS = """
INSERT INTO mailbox_attachment (mailbox_message_id, position, filename, content_type, size, object_key,
                                wrapped_key, data_key_id)
SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::bytea[],
                     $8::bigint[])
"""

class MailboxMessageNotFound(LookupError):
    """No mailbox row has the id given."""


class _SealedAttachment:
    """One attachment object in the body store, with a wrap of its content key per mailbox."""

    def __init__(self, attachment: Attachment, object_key: str, wraps: dict[str, tuple[bytes, int]]):
        self.attachment = attachment
        self.object_key = object_key
        self.wraps = wraps


async def deliver_local(pool: asyncpg.Pool, bodies: BodyCodec, store: BodyStore, queue_id: str,
                        recipients: list[str], opened: Opened, received_at: datetime,
                        attachment_threshold: int = 0) -> Outcome:
    outcome = Outcome(relay="local")
    wanted = [recipient.lower() for recipient in recipients]
    async with pool.acquire(timeout=30) as connection:
        known = await existing_users(connection, wanted)

    # dict.fromkeys keeps the order and drops a mailbox named twice.
    found = list(dict.fromkeys(address for address in wanted if address in known))
    if found:
        try:
            await _store(pool, bodies, store, queue_id, found, opened, received_at, attachment_threshold)
        except asyncpg.PostgresError as error:
            if error.sqlstate != DESTROYED_KEY_SQLSTATE:
                raise
            # A mailbox key was destroyed after it was cached: the next attempt wraps under a new key.
            bodies.keyring.forget_all()
            outcome.add_all(recipients, Reply(451, "4.3.0 a mailbox data key changed during delivery, "
                                                   "trying again"))
            return outcome

    for recipient, address in zip(recipients, wanted):
        if address in known:
            outcome.add(recipient, Reply(250, "2.0.0 delivered to mailbox"))
        else:
            outcome.add(recipient, Reply(550, "5.1.1 mailbox unknown"))
    return outcome


async def _store(pool: asyncpg.Pool, bodies: BodyCodec, store: BodyStore, queue_id: str, mailboxes: list[str],
                 opened: Opened, received_at: datetime, attachment_threshold: int) -> None:
    metadata = read_metadata(opened.body, received_at)
    # Parsed in a thread: a large message's MIME tree takes long enough to stall other sessions.
    # NOTE: at its peak the parse takes about nine times the message size (a 50 MB message added
    # 450 MB in python -m loadtest.delivery_memory), far more than the plaintext it reads.
    attachments = await asyncio.to_thread(large_attachments, opened.body, attachment_threshold)

    # Wrapped with no connection held, because a data key's first use takes one from the pool.
    # NOTE: the body keeps each large attachment too, so it is stored twice, and a whole message is still one read.
    wraps = [await bodies.wrap_for(mailbox_owner(address), opened.content_key, queue_id) for address in mailboxes]
    sealed = [await _seal_attachment(bodies, store, queue_id, attachment, mailboxes) for attachment in attachments]
    try:
        async with pool.acquire(timeout=30) as connection:
            async with connection.transaction():
                rows = await connection.fetch(_STORE, mailboxes, queue_id, [wrap for wrap, _ in wraps],
                                              [data_key_id for _, data_key_id in wraps], *_columns(metadata))
                if sealed:
                    await _insert_attachments(connection, {row["mailbox"]: row["id"] for row in rows}, sealed)
    except asyncpg.PostgresError:
        # The server rolled back, so no row names these objects, and a retry seals new ones. After
        # other errors, such as a connection lost during COMMIT, the rows may exist and the objects stay.
        for item in sealed:
            await _delete_quietly(store, item.object_key)
        raise


def _columns(metadata: Metadata) -> tuple:
    return metadata.size, metadata.date, metadata.from_header, metadata.subject


async def _seal_attachment(bodies: BodyCodec, store: BodyStore, queue_id: str, attachment: Attachment,
                           mailboxes: list[str]) -> _SealedAttachment:
    # A random part keeps the name unique when a retried attempt or another domain's delivery of the
    # same message seals this attachment again.
    object_key = f"{queue_id}-{secrets.token_hex(4)}-{attachment.position}"
    first = await bodies.seal(object_key, attachment.data, mailbox_owner(mailboxes[0]))
    wraps = {mailboxes[0]: (first.wrapped_key, first.data_key_id)}
    for address in mailboxes[1:]:
        wraps[address] = await bodies.wrap_for(mailbox_owner(address), first.content_key, object_key)
    await store.put(object_key, first.data)
    return _SealedAttachment(attachment, object_key, wraps)


async def _insert_attachments(connection, row_ids: dict[str, int], sealed: list[_SealedAttachment]) -> None:
    columns: tuple[list, ...] = ([], [], [], [], [], [], [], [])
    for item in sealed:
        attachment = item.attachment
        for address, (wrapped, data_key_id) in item.wraps.items():
            values = (row_ids[address], attachment.position, attachment.filename, attachment.content_type,
                      len(attachment.data), item.object_key, wrapped, data_key_id)
            for column, value in zip(columns, values):
                column.append(value)
    await connection.execute(_STORE_ATTACHMENTS, *columns)


async def _delete_quietly(store: BodyStore, object_key: str) -> None:
    try:
        await store.delete(object_key)
    except StoreError as error:
        log.warning("removing unused attachment object %s failed, it stays in the body store: %s", object_key, error)


async def read_mailbox_message(connection, store: BodyStore, bodies: BodyCodec, row_id: int) -> bytes:
    """Return the body of one mailbox row, decrypted with that row's own wrap.

    Raises KeyDestroyedError when the mailbox's data key was destroyed, and
    MailboxMessageNotFound when no row has this id.
    """
    try:
        return await read_body(connection, store, bodies, row_id)
    except MessageNotFound as error:
        raise MailboxMessageNotFound(str(error)) from None
