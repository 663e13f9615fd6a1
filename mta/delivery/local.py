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
from datetime import datetime

import asyncpg

from mta.auth.users import existing_users
from mta.delivery.body import BodyReadError, MessageBody
from mta.delivery.local_attachments import (AttachmentParseError, SealedAttachment, Sealing, delete_quietly,
                                            seal_streamed_attachments)
from mta.delivery.outcome import Outcome, Reply
from mta.mailbox.attachments import Attachment, large_attachments
from mta.mailbox.metadata import Metadata, read_header_metadata, read_metadata
from mta.mailbox.store import MessageNotFound, read_body
from mta.storage.bodies import BodyCodec
from mta.storage.keyring import DESTROYED_KEY_SQLSTATE, mailbox_owner
from mta.storage.store import BodyStore

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


async def deliver_local(pool: asyncpg.Pool, bodies: BodyCodec, store: BodyStore, queue_id: str,
                        recipients: list[str], body: MessageBody, content_key: bytes, received_at: datetime,
                        attachment_threshold: int = 0) -> Outcome:
    outcome = Outcome(relay="local")
    wanted = [recipient.lower() for recipient in recipients]
    async with pool.acquire(timeout=30) as connection:
        known = await existing_users(connection, wanted)

    # dict.fromkeys keeps the order and drops a mailbox named twice.
    found = list(dict.fromkeys(address for address in wanted if address in known))
    if found:
        try:
            sealing = Sealing(bodies, store, queue_id, found, attachment_threshold)
            await _store(pool, sealing, body, content_key, received_at)
        except BodyReadError as error:
            # Nothing names the objects sealed so far, and they were deleted, so the next attempt starts afresh.
            outcome.add_all(recipients, Reply(451, f"4.3.0 reading the queued message failed: {error}"))
            return outcome
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


async def _store(pool: asyncpg.Pool, sealing: Sealing, body: MessageBody, content_key: bytes,
                 received_at: datetime) -> None:
    if body.streamed:
        metadata = read_header_metadata(body.header, body.size, received_at)
        sealed = await _seal_streamed(sealing, body)
    else:
        whole = await body.read()
        metadata = read_metadata(whole, received_at)
        attachments = await _large_attachments(sealing, whole)
        sealed = [await _seal_attachment(sealing, attachment) for attachment in attachments]

    # Wrapped with no connection held, because a data key's first use takes one from the pool.
    # NOTE: the body keeps each large attachment too, so it is stored twice.
    mailboxes = sealing.mailboxes
    wraps = [await sealing.bodies.wrap_for(mailbox_owner(address), content_key, sealing.queue_id)
             for address in mailboxes]
    try:
        async with pool.acquire(timeout=30) as connection:
            async with connection.transaction():
                rows = await connection.fetch(_STORE, mailboxes, sealing.queue_id, [wrap for wrap, _ in wraps],
                                              [data_key_id for _, data_key_id in wraps], *_columns(metadata))
                if sealed:
                    await _insert_attachments(connection, {row["mailbox"]: row["id"] for row in rows}, sealed)
    except asyncpg.PostgresError:
        # The server rolled back, so no row names these objects, and a retry seals new ones. After
        # other errors, such as a connection lost during COMMIT, the rows may exist and the objects stay.
        for item in sealed:
            await delete_quietly(sealing.store, item.object_key)
        raise


async def _large_attachments(sealing: Sealing, whole: bytes) -> list[Attachment]:
    """Return the large attachments of a whole body, or none when the email package fails on it."""
    try:
        # Parsed in a thread: a MIME tree near WHOLE_MAX takes long enough to stall other sessions.
        return await asyncio.to_thread(large_attachments, whole, sealing.threshold)
    except Exception as error:
        # Such as RecursionError on deeply nested parts: a retry would fail the same way.
        _log_unparsed(sealing, f"reading the attachments failed with {type(error).__name__}")
        return []


async def _seal_streamed(sealing: Sealing, body: MessageBody) -> list[SealedAttachment]:
    """Read a large body once more from the store, sealing its large attachments as they pass."""
    if sealing.threshold <= 0 or body.size <= sealing.threshold:
        return []
    try:
        return await seal_streamed_attachments(body.chunks(), sealing)
    except AttachmentParseError as error:
        _log_unparsed(sealing, str(error))
        return []


def _log_unparsed(sealing: Sealing, reason: str) -> None:
    # The body itself is stored whole, so the message is delivered with no attachment objects of its own.
    log.warning("%s: %s, so it is delivered without separately stored attachments", sealing.queue_id, reason)


def _columns(metadata: Metadata) -> tuple:
    return metadata.size, metadata.date, metadata.from_header, metadata.subject


async def _seal_attachment(sealing: Sealing, attachment: Attachment) -> SealedAttachment:
    object_key = sealing.object_key(attachment.position)
    first = await sealing.bodies.seal(object_key, attachment.data, mailbox_owner(sealing.mailboxes[0]))
    wraps = {sealing.mailboxes[0]: (first.wrapped_key, first.data_key_id)}
    wraps |= await sealing.other_wraps(first.content_key, object_key)
    await sealing.store.put(object_key, first.data)
    return SealedAttachment(attachment.position, attachment.filename, attachment.content_type, len(attachment.data),
                            object_key, wraps)


async def _insert_attachments(connection, row_ids: dict[str, int], sealed: list[SealedAttachment]) -> None:
    columns: tuple[list, ...] = ([], [], [], [], [], [], [], [])
    for item in sealed:
        for address, (wrapped, data_key_id) in item.wraps.items():
            values = (row_ids[address], item.position, item.filename, item.content_type,
                      item.size, item.object_key, wrapped, data_key_id)
            for column, value in zip(columns, values):
                column.append(value)
    await connection.execute(_STORE_ATTACHMENTS, *columns)


async def read_mailbox_message(connection, store: BodyStore, bodies: BodyCodec, row_id: int) -> bytes:
    """Return the body of one mailbox row, decrypted with that row's own wrap.

    Raises KeyDestroyedError when the mailbox's data key was destroyed, and
    MailboxMessageNotFound when no row has this id.
    """
    try:
        return await read_body(connection, store, bodies, row_id)
    except MessageNotFound as error:
        raise MailboxMessageNotFound(str(error)) from None
