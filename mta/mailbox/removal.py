"""Removing mailbox messages and the body store objects that nothing references any more.

Removal runs in two steps. Inside the caller's transaction the rows go,
and every object no remaining row names is queued in ``object_deletion``.
After the commit, ``delete_queued_objects`` deletes those objects from the
store and their queue rows. A crash between the steps leaves queued rows,
which the next erasure or retention run deletes, never a row that names a
missing object.

A message body is released only when no mailbox row and no queued
delivery references it: the same object may still be read for another
mailbox or sent to another recipient.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from mta.storage.store import BodyStore, StoreError

log = logging.getLogger("mta.mailbox")

_DELETE_ATTACHMENTS = "DELETE FROM mailbox_attachment WHERE mailbox_message_id = ANY($1::bigint[]) RETURNING object_key"
_DELETE_ROWS = "DELETE FROM mailbox_message WHERE id = ANY($1::bigint[]) RETURNING message_id"
_STILL_NAMED = "SELECT DISTINCT object_key FROM mailbox_attachment WHERE object_key = ANY($1::text[])"

# Locked in id order, as settling does, so that a delivery finishing the same message waits here.
_LOCK_MESSAGES = "SELECT id FROM message WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE"

_UNUSED_BODIES = """
SELECT m.id, m.body_key FROM message m
WHERE m.id = ANY($1::text[])
  AND NOT EXISTS (SELECT 1 FROM mailbox_message b WHERE b.message_id = m.id)
  AND NOT EXISTS (SELECT 1 FROM delivery d WHERE d.message_id = m.id)
"""

_DROP_INLINE = "DELETE FROM message_body WHERE message_id = ANY($1::text[])"
_DROP_WRAPS = "UPDATE message SET wrapped_key = NULL WHERE id = ANY($1::text[])"

# Once a message has left the queue, only its mailbox rows' own wraps may open
# the body, so that destroying a mailbox's data key erases that copy. Rows
# delivered before the key hierarchy have no wrap of their own and keep the
# message's.
_DROP_QUEUE_WRAPS = """
UPDATE message m SET wrapped_key = NULL
WHERE m.id = ANY($1::text[]) AND m.completed_at IS NOT NULL AND m.wrapped_key IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM mailbox_message b WHERE b.message_id = m.id AND b.wrapped_key IS NULL)
"""
_QUEUE = "INSERT INTO object_deletion (object_key) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING"
_PENDING = "SELECT object_key FROM object_deletion ORDER BY queued_at, object_key LIMIT $1"
_DONE = "DELETE FROM object_deletion WHERE object_key = $1"


@dataclass(frozen=True)
class Removed:
    """Counts of one removal: mailbox rows and message bodies, and the objects queued for deletion."""

    rows: int
    bodies: int
    objects: list[str]


async def remove_mailbox_rows(connection: asyncpg.Connection, row_ids: list[int]) -> Removed:
    """Delete mailbox rows with their attachments, inside the caller's transaction.

    Returns the object keys queued for deletion, for delete_queued_objects after the commit.
    """
    attachment_keys = {row["object_key"] for row in await connection.fetch(_DELETE_ATTACHMENTS, row_ids)}
    message_ids = sorted({row["message_id"] for row in await connection.fetch(_DELETE_ROWS, row_ids)})
    still_named = {row["object_key"] for row in await connection.fetch(_STILL_NAMED, list(attachment_keys))}
    objects = sorted(attachment_keys - still_named)

    bodies = await release_bodies(connection, message_ids)
    # A removed row may have been the last one from before the key hierarchy that needed the message's wrap.
    await drop_queue_wraps(connection, message_ids)
    objects += bodies.objects
    await connection.execute(_QUEUE, objects)
    return Removed(len(row_ids), bodies.bodies, objects)


async def release_bodies(connection: asyncpg.Connection, message_ids: list[str]) -> Removed:
    """Drop the bodies of these messages that no mailbox row and no queued delivery uses any more.

    Inline bodies are deleted here, and objects in the store are queued.
    The message rows stay, because the delivery history names them.
    """
    if not message_ids:
        return Removed(0, 0, [])
    await connection.execute(_LOCK_MESSAGES, message_ids)
    unused = await connection.fetch(_UNUSED_BODIES, message_ids)
    ids = [row["id"] for row in unused]
    await connection.execute(_DROP_INLINE, ids)
    await connection.execute(_DROP_WRAPS, ids)

    # An inline body has no object: its body_key is NULL.
    objects = [row["body_key"] for row in unused if row["body_key"] is not None]
    await connection.execute(_QUEUE, objects)
    return Removed(0, len(ids), objects)


async def drop_queue_wraps(connection: asyncpg.Connection, message_ids: list[str]) -> None:
    """Drop the queue's wrap of completed messages whose mailbox rows all have wraps of their own."""
    await connection.execute(_DROP_QUEUE_WRAPS, message_ids)


async def delete_queued_objects(database, store: BodyStore, limit: int = 10_000) -> tuple[int, int]:
    """Delete up to limit queued objects from the store; return how many went and how many failed.

    Failures are logged and stay queued for the next run.
    """
    deleted = failed = 0
    for row in await database.fetch(_PENDING, limit):
        key = row["object_key"]
        try:
            await store.delete(key)
        except StoreError as error:
            failed += 1
            log.warning("deleting object %s from the body store failed, kept for the next run: %s", key, error)
            continue
        await database.execute(_DONE, key)
        deleted += 1
    return deleted, failed
