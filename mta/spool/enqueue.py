"""Enqueue accepted messages: body first, then one commit shared by many sessions.

A message is durable when its envelope, delivery rows and encrypted body are
committed. A small body is committed inline, in the same transaction; a large
one is written to the body store first. Sessions hand their message to one
writer task, which gathers what arrives within a few milliseconds (up to
``MAX_BATCH`` messages) into a single transaction, so the cost of a commit is
shared. Only after that commit returns does the session send ``250``.

Delivery rows are inserted already leased to this node and handed to its
ready queue, so a first attempt never waits for a poll. If the commit fails,
every session in the batch gets ``SpoolError`` (a 451 to the client) and the
bodies written for it are deleted: nothing is half-stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from mta import metrics
from mta.db import TRANSIENT_ERRORS
from mta.addresses import group_by_domain
from mta.ids import new_queue_id
from mta.spool.batch import GroupCommit, StoppingError
from mta.storage.bodies import BodyCodec
from mta.storage.crypto import DecryptionError
from mta.storage.keyring import DESTROYED_KEY_SQLSTATE, QUEUE_INBOUND, sender_owner
from mta.storage.store import BodyStore, StoreError
from mta.webhooks.outbox import Outbox, accepted_event

log = logging.getLogger("mta.spool")

MAX_BATCH = 100
# Origins whose senders are local users who logged in, or the HTTP API's
# tokens. Their mail is sealed under the sender's own data key, and all other
# mail under the inbound queue's.
_SUBMISSION_ORIGINS = ("submission", "submissions", "api")
# Seconds the writer waits for more messages once the first one is in.
BATCH_WINDOW = 0.002


class SpoolError(Exception):
    """The message could not be made durable; the client must retry later."""


@dataclass(frozen=True)
class NewMessage:
    sender: str
    recipients: list[str]
    body: bytes
    origin: str
    session_id: str
    # Chosen by the caller when it must appear in the body (Received field).
    queue_id: str = ""
    # The client's DSN parameters (mta.smtp.session._dsn_request), or None.
    dsn: dict | None = None
    # Why the message is quarantined, or None.
    quarantine: str | None = None


@dataclass(frozen=True)
class Job:
    """A leased delivery row: one message's recipients at one domain."""

    delivery_id: int
    message_id: str
    domain: str
    recipients: list[str]
    attempt: int


@dataclass(frozen=True)
class Prepared:
    """A message with its body encrypted, and already durable if it went to the body store."""

    queue_id: str
    message: NewMessage
    # The content key wrapped under the data key data_key_id.
    wrapped_key: bytes
    data_key_id: int
    # The ciphertext of a small body, committed with the envelope; None when
    # the body is an object in the body store.
    inline_data: bytes | None


_INSERT_BODIES = """
INSERT INTO message_body (message_id, data) SELECT * FROM unnest($1::text[], $2::bytea[])
"""

_INSERT_MESSAGES = """
INSERT INTO message (id, sender, size, body_key, wrapped_key, origin, session_id, dsn, quarantine, data_key_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::bytea[], $6::text[], $7::text[],
                     $8::jsonb[], $9::text[], $10::bigint[])
"""

_INSERT_DELIVERIES = """
INSERT INTO delivery (message_id, domain, recipients, attempts, lease_owner, lease_until)
SELECT m, d, string_to_array(r, chr(10)), 1, $4, now() + make_interval(secs => $5)
FROM unnest($1::text[], $2::text[], $3::text[]) AS t (m, d, r)
RETURNING id, message_id, domain, recipients
"""


class Spool:
    def __init__(self, pool: asyncpg.Pool, store: BodyStore, bodies: BodyCodec, inline_max_size: int,
                 node_id: str, lease_seconds: float, on_ready: Callable[[list[Job]], None],
                 outbox: Outbox | None = None):
        self.pool = pool
        self.outbox = outbox
        self.inline_max_size = inline_max_size
        self.store = store
        self.bodies = bodies
        self.node_id = node_id
        self.lease_seconds = lease_seconds
        self.on_ready = on_ready
        self.writer = GroupCommit("spool-writer", self._commit, MAX_BATCH, BATCH_WINDOW)

    def start(self) -> None:
        self.writer.start()

    @property
    def tasks(self) -> list[asyncio.Task]:
        return self.writer.tasks

    async def stop(self, grace: float = 10.0) -> None:
        """Commit what sessions have handed over, then stop the writer."""
        await self.writer.stop(grace)

    async def prepare(self, message: NewMessage) -> Prepared:
        """Encrypt the body; write it to the body store unless it is small enough to go inline."""
        queue_id = message.queue_id or new_queue_id()
        try:
            sealed = await self.bodies.seal(queue_id, message.body, queue_owner(message))
        # A lost connection raises asyncpg's InterfaceError, which is no PostgresError.
        except (*TRANSIENT_ERRORS, DecryptionError) as error:
            # Only a data key's first use, or a cache miss, reaches the database here.
            log.error("%s: data key lookup failed: %r", message.session_id, error)
            raise SpoolError("data key unavailable") from error
        if len(sealed.data) <= self.inline_max_size:
            return Prepared(queue_id, message, sealed.wrapped_key, sealed.data_key_id, sealed.data)

        try:
            await self.store.put(queue_id, sealed.data)
        except StoreError as error:
            metrics.STORE_ERRORS.labels(operation="write").inc()
            log.error("%s: body store write failed: %s", message.session_id, error)
            raise SpoolError("body store unavailable") from error
        return Prepared(queue_id, message, sealed.wrapped_key, sealed.data_key_id, None)

    async def enqueue(self, message: NewMessage) -> str:
        """Make the message durable and return its queue id, or raise SpoolError."""
        if self.writer.stopping:
            raise SpoolError("shutting down")
        prepared = await self.prepare(message)
        try:
            done = self.writer.submit(prepared)
        except StoppingError:
            await self.discard(prepared)
            raise SpoolError("shutting down") from None

        try:
            # Shielded: once handed to the writer the commit may still happen,
            # so the body stays unless the commit is known to have failed.
            await asyncio.shield(done)
        except asyncio.CancelledError:
            done.add_done_callback(lambda future: self._discard_if_failed(prepared, future))
            raise
        except SpoolError:
            await self.discard(prepared)
            raise
        return prepared.queue_id

    def _discard_if_failed(self, prepared: Prepared, future: asyncio.Future) -> None:
        if future.exception() is not None:
            asyncio.create_task(self.discard(prepared))

    async def discard(self, prepared: Prepared) -> None:
        """Delete the stored body of a message whose envelope was never committed."""
        if prepared.inline_data is not None:
            return
        queue_id = prepared.queue_id
        try:
            await self.store.delete(queue_id)
        except StoreError as error:
            metrics.STORE_ERRORS.labels(operation="delete").inc()
            # NOTE: an orphaned object is unreadable without its wrapped key
            # (never committed), so it leaks space but no data.
            log.warning("%s: failed to delete uncommitted body: %s", queue_id, error)

    async def _commit(self, batch: list[Prepared]) -> list[str]:
        try:
            async with self.pool.acquire(timeout=10) as connection:
                async with connection.transaction():
                    jobs = await self.insert(connection, batch)
        except Exception as error:
            # Any failure here, expected (database down) or not, must reach
            # every waiting session as a 451.
            log.error("queue commit of %d messages failed: %r", len(batch), error)
            if getattr(error, "sqlstate", None) == DESTROYED_KEY_SQLSTATE:
                # A key was destroyed after it was cached: the clients' retries seal under a new one.
                self.bodies.keyring.forget_all()
            raise SpoolError("database unavailable") from error

        metrics.SPOOL_BATCH.observe(len(batch))
        self.on_ready(jobs)
        return [item.queue_id for item in batch]

    async def insert(self, connection: asyncpg.Connection, batch: list[Prepared]) -> list[Job]:
        """Insert envelopes and leased delivery rows inside the caller's transaction."""
        messages = [item.message for item in batch]
        delivery_columns: tuple[list, list, list] = ([], [], [])
        for item in batch:
            for domain, recipients in group_by_domain(item.message.recipients).items():
                delivery_columns[0].append(item.queue_id)
                delivery_columns[1].append(domain)
                delivery_columns[2].append("\n".join(recipients))

        await connection.execute(
            _INSERT_MESSAGES,
            [item.queue_id for item in batch],
            [m.sender for m in messages],
            [len(m.body) for m in messages],
            [None if item.inline_data is not None else item.queue_id for item in batch],
            [item.wrapped_key for item in batch],
            [m.origin for m in messages],
            [m.session_id for m in messages],
            [None if m.dsn is None else json.dumps(m.dsn) for m in messages],
            [m.quarantine for m in messages],
            [item.data_key_id for item in batch])
        inline = [item for item in batch if item.inline_data is not None]
        if inline:
            await connection.execute(
                _INSERT_BODIES, [item.queue_id for item in inline], [item.inline_data for item in inline])
        rows = await connection.fetch(
            _INSERT_DELIVERIES, *delivery_columns, self.node_id, self.lease_seconds)
        if self.outbox is not None:
            await self.outbox.insert(connection, [
                accepted_event(item.queue_id, item.message.sender, item.message.recipients, item.message.origin,
                               len(item.message.body)) for item in batch])

        return [Job(row["id"], row["message_id"], row["domain"], list(row["recipients"]), 1) for row in rows]


def queue_owner(message: NewMessage) -> str:
    """Return the owner of the data key that the queue copy of the message is sealed under."""
    if message.origin in _SUBMISSION_ORIGINS and message.sender:
        return sender_owner(message.sender)
    return QUEUE_INBOUND
