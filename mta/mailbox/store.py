"""Reading a mailbox: list messages, fetch one whole, list and fetch its large attachments.

These functions are what an API or a command calls. ``database`` is an
asyncpg pool or connection, and ``bodies`` a BodyCodec whose keyring reads
data keys from the same database. A mailbox is named by its address in any
case. A message id of another mailbox is reported as not found, so one
mailbox's ids reveal nothing of another's. A mailbox with no account and no
stored message is unknown, and MailboxNotFound reports that.

Bodies and attachments are read as Content, which decrypts them piece by
piece, so a large message is never whole in memory. Decryption errors propagate: ``KeyDestroyedError`` (from
mta.storage.keyring) when the mailbox's data key was destroyed, and other
``DecryptionError`` subclasses when an object was altered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from mta.storage.bodies import BodyCodec, decrypt_object_stream, prepend
from mta.storage.store import BodyStore

# Messages one list call returns at most.
MAX_LIMIT = 1000

_SELECT = """
SELECT b.id, b.mailbox, b.folder, b.size, b.date, b.from_header, b.subject, b.flags, b.delivered_at,
       m.id AS queue_id, m.received_at,
       (SELECT count(*) FROM mailbox_attachment a WHERE a.mailbox_message_id = b.id) AS attachments
FROM mailbox_message b JOIN message m ON m.id = b.message_id
"""
_LIST = _SELECT + """
WHERE b.mailbox = $1 AND ($2::text IS NULL OR b.folder = $2) AND ($3::bigint IS NULL OR b.id < $3)
ORDER BY b.id DESC LIMIT $4
"""
_ONE = _SELECT + "WHERE b.mailbox = $1 AND b.id = $2"

# A row from before the key hierarchy has no wrap of its own and uses the message's.
_BODY = """
SELECT b.message_id, b.size, m.body_key, coalesce(b.wrapped_key, m.wrapped_key) AS wrapped_key,
       CASE WHEN b.wrapped_key IS NULL THEN m.data_key_id ELSE b.data_key_id END AS data_key_id,
       i.data AS inline_data
FROM mailbox_message b JOIN message m ON m.id = b.message_id LEFT JOIN message_body i ON i.message_id = m.id
WHERE b.id = $2 AND ($1::text IS NULL OR b.mailbox = $1)
"""

_ATTACHMENTS = """
SELECT a.position, a.filename, a.content_type, a.size, a.object_key, a.wrapped_key, a.data_key_id
FROM mailbox_attachment a JOIN mailbox_message b ON b.id = a.mailbox_message_id
WHERE b.mailbox = $1 AND b.id = $2 AND ($3::int IS NULL OR a.position = $3)
ORDER BY a.position
"""

_MAILBOX_EXISTS = """
SELECT EXISTS (SELECT 1 FROM mailbox_user WHERE address = $1) OR EXISTS (SELECT 1 FROM mailbox_message WHERE mailbox = $1)
"""


class MessageNotFound(LookupError):
    """The mailbox has no message with the id given."""


class MailboxNotFound(MessageNotFound):
    """The address has no account and no stored message."""


class AttachmentNotFound(LookupError):
    """The message has no stored attachment with the number given."""


@dataclass(frozen=True)
class MailboxMessage:
    id: int
    mailbox: str
    folder: str
    size: int
    # The Date: field, or the arrival time when the message had none.
    date: datetime
    from_header: str
    subject: str
    flags: list[str]
    queue_id: str
    # When the MTA accepted the message, and when it reached the mailbox.
    received_at: datetime
    delivered_at: datetime
    # Attachments stored as objects of their own.
    attachments: int

    def as_json(self) -> dict:
        return {"id": self.id, "mailbox": self.mailbox, "folder": self.folder, "size": self.size,
                "date": self.date.isoformat(), "from": self.from_header, "subject": self.subject,
                "flags": self.flags, "queue_id": self.queue_id, "received_at": self.received_at.isoformat(),
                "delivered_at": self.delivered_at.isoformat(), "attachments": self.attachments}


@dataclass(frozen=True)
class AttachmentInfo:
    # The attachment's number among the message's attachments, from 1.
    position: int
    filename: str
    content_type: str
    # Octets of the decoded content.
    size: int

    def as_json(self) -> dict:
        return {"position": self.position, "filename": self.filename, "content_type": self.content_type,
                "size": self.size}


@dataclass(frozen=True)
class Content:
    """Decrypted octets of a message or attachment, yielded one verified chunk at a time.

    The pieces may still raise a DecryptionError or a StoreError: the
    content is whole and authentic only when they end without one.
    """

    size: int
    pieces: AsyncIterator[bytes]

    async def read(self) -> bytes:
        """Return the whole content, for callers that need it in memory."""
        return b"".join([piece async for piece in self.pieces])


def _message(row) -> MailboxMessage:
    return MailboxMessage(row["id"], row["mailbox"], row["folder"], row["size"], row["date"], row["from_header"],
                          row["subject"], list(row["flags"]), row["queue_id"], row["received_at"],
                          row["delivered_at"], row["attachments"])


async def list_messages(database, address: str, folder: str | None = None, limit: int = 50,
                        before_id: int | None = None) -> list[MailboxMessage]:
    """Return a mailbox's messages newest first; before_id pages on from the last id of the previous call.

    folder None lists every folder. Raises ValueError when limit is not between 1 and MAX_LIMIT, and
    MailboxNotFound.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    rows = await database.fetch(_LIST, address.lower(), folder, before_id, limit)
    if not rows and not await mailbox_exists(database, address):
        raise _unknown_mailbox(address)
    return [_message(row) for row in rows]


async def mailbox_exists(database, address: str) -> bool:
    """Return whether the address has an account or at least one stored message."""
    return await database.fetchval(_MAILBOX_EXISTS, address.lower())


async def get_message(database, address: str, message_id: int) -> MailboxMessage:
    """Return one message's metadata, or raise MessageNotFound or MailboxNotFound."""
    row = await database.fetchrow(_ONE, address.lower(), message_id)
    if row is None:
        raise await _missing(database, address.lower(), message_id)
    return _message(row)


async def open_message(database, store: BodyStore, bodies: BodyCodec, address: str, message_id: int) -> Content:
    """Start reading the RFC 5322 message as delivered, decrypted with the mailbox's own wrap."""
    return await open_body(database, store, bodies, message_id, address.lower())


async def read_body(database, store: BodyStore, bodies: BodyCodec, message_id: int,
                    mailbox: str | None = None) -> bytes:
    """Return the body of a mailbox row, of any mailbox when mailbox is None; raise MessageNotFound."""
    return await (await open_body(database, store, bodies, message_id, mailbox)).read()


async def open_body(database, store: BodyStore, bodies: BodyCodec, message_id: int,
                    mailbox: str | None = None) -> Content:
    """Start reading the body of a mailbox row, of any mailbox when mailbox is None.

    The row is looked up, the content key unwrapped and the first chunk
    decrypted before this returns, so MessageNotFound, KeyDestroyedError, a
    wrong key and a missing object are raised here, not by the pieces.
    """
    row = await database.fetchrow(_BODY, mailbox, message_id)
    if row is None:
        if mailbox is None:
            raise MessageNotFound(f"the mailbox store has no message {message_id}")
        raise await _missing(database, mailbox, message_id)

    content_key = await bodies.content_key(row["message_id"], row["wrapped_key"], row["data_key_id"])
    if row["inline_data"] is not None:
        source = _one_piece(bytes(row["inline_data"]))
    else:
        source = store.get_stream(row["body_key"])
    return await _started(row["size"], decrypt_object_stream(content_key, row["message_id"], source))


async def list_attachments(database, address: str, message_id: int) -> list[AttachmentInfo]:
    """Return the attachments of a message that are stored as objects of their own.

    Smaller attachments are only in the message body. Raises MessageNotFound.
    """
    await get_message(database, address, message_id)
    rows = await database.fetch(_ATTACHMENTS, address.lower(), message_id, None)
    return [AttachmentInfo(row["position"], row["filename"], row["content_type"], row["size"]) for row in rows]


async def open_attachment(database, store: BodyStore, bodies: BodyCodec, address: str, message_id: int,
                          position: int) -> tuple[AttachmentInfo, Content]:
    """Start reading one stored attachment's decoded content, raising errors as open_body does.

    Raises MessageNotFound or AttachmentNotFound.
    """
    await get_message(database, address, message_id)
    row = await database.fetchrow(_ATTACHMENTS, address.lower(), message_id, position)
    if row is None:
        raise AttachmentNotFound(f"message {message_id} of {address.lower()} has no stored attachment {position}")

    content_key = await bodies.content_key(row["object_key"], row["wrapped_key"], row["data_key_id"])
    pieces = decrypt_object_stream(content_key, row["object_key"], store.get_stream(row["object_key"]))
    info = AttachmentInfo(row["position"], row["filename"], row["content_type"], row["size"])
    return info, await _started(row["size"], pieces)


async def _missing(database, address: str, message_id: int) -> MessageNotFound:
    if not await mailbox_exists(database, address):
        return _unknown_mailbox(address)
    return MessageNotFound(f"mailbox {address} has no message {message_id}")


def _unknown_mailbox(address: str) -> MailboxNotFound:
    return MailboxNotFound(f"mailbox {address.lower()} is unknown: no account and no stored message")


async def _started(size: int, pieces: AsyncIterator[bytes]) -> Content:
    """Read the first piece now, so that opening errors come before the caller sends anything."""
    first = await anext(pieces, None)
    if first is None:
        return Content(size, _no_pieces())
    return Content(size, prepend(first, pieces))


async def _one_piece(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _no_pieces() -> AsyncIterator[bytes]:
    return
    yield
