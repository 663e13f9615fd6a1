"""Reading a mailbox: list messages, fetch one whole, list and fetch its large attachments.

These functions are what an API or a command calls. ``database`` is an
asyncpg pool or connection, and ``bodies`` a BodyCodec whose keyring reads
data keys from the same database. A mailbox is named by its address in any
case. A message id of another mailbox is reported as not found, so one
mailbox's ids reveal nothing of another's.

Decryption errors propagate: ``KeyDestroyedError`` (from
mta.storage.keyring) when the mailbox's data key was destroyed, and other
``DecryptionError`` subclasses when an object was altered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mta.storage.bodies import BodyCodec, decrypt_object
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
SELECT b.message_id, m.body_key, coalesce(b.wrapped_key, m.wrapped_key) AS wrapped_key,
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


class MessageNotFound(LookupError):
    """The mailbox has no message with the id given."""


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


def _message(row) -> MailboxMessage:
    return MailboxMessage(row["id"], row["mailbox"], row["folder"], row["size"], row["date"], row["from_header"],
                          row["subject"], list(row["flags"]), row["queue_id"], row["received_at"],
                          row["delivered_at"], row["attachments"])


async def list_messages(database, address: str, folder: str | None = None, limit: int = 50,
                        before_id: int | None = None) -> list[MailboxMessage]:
    """Return a mailbox's messages newest first; before_id pages on from the last id of the previous call.

    folder None lists every folder. Raises ValueError when limit is not between 1 and MAX_LIMIT.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    rows = await database.fetch(_LIST, address.lower(), folder, before_id, limit)
    return [_message(row) for row in rows]


async def get_message(database, address: str, message_id: int) -> MailboxMessage:
    """Return one message's metadata, or raise MessageNotFound."""
    row = await database.fetchrow(_ONE, address.lower(), message_id)
    if row is None:
        raise MessageNotFound(f"mailbox {address.lower()} has no message {message_id}")
    return _message(row)


async def fetch_message(database, store: BodyStore, bodies: BodyCodec, address: str, message_id: int) -> bytes:
    """Return the whole RFC 5322 message as delivered, decrypted with the mailbox's own wrap."""
    return await read_body(database, store, bodies, message_id, address.lower())


async def read_body(database, store: BodyStore, bodies: BodyCodec, message_id: int,
                    mailbox: str | None = None) -> bytes:
    """Return the body of a mailbox row, of any mailbox when mailbox is None; raise MessageNotFound."""
    row = await database.fetchrow(_BODY, mailbox, message_id)
    if row is None:
        raise MessageNotFound(f"mailbox {mailbox or 'store'} has no message {message_id}")

    data = row["inline_data"]
    if data is None:
        data = await store.get(row["body_key"])
    opened = await bodies.open(row["message_id"], bytes(data), row["wrapped_key"], row["data_key_id"])
    return opened.body


async def list_attachments(database, address: str, message_id: int) -> list[AttachmentInfo]:
    """Return the attachments of a message that are stored as objects of their own.

    Smaller attachments are only in the message body. Raises MessageNotFound.
    """
    await get_message(database, address, message_id)
    rows = await database.fetch(_ATTACHMENTS, address.lower(), message_id, None)
    return [AttachmentInfo(row["position"], row["filename"], row["content_type"], row["size"]) for row in rows]


async def fetch_attachment(database, store: BodyStore, bodies: BodyCodec, address: str, message_id: int,
                           position: int) -> tuple[AttachmentInfo, bytes]:
    """Return one stored attachment and its decoded content; raise MessageNotFound or AttachmentNotFound."""
    await get_message(database, address, message_id)
    row = await database.fetchrow(_ATTACHMENTS, address.lower(), message_id, position)
    if row is None:
        raise AttachmentNotFound(f"message {message_id} of {address.lower()} has no stored attachment {position}")

    content_key = await bodies.content_key(row["object_key"], row["wrapped_key"], row["data_key_id"])
    data = decrypt_object(content_key, row["object_key"], await store.get(row["object_key"]))
    info = AttachmentInfo(row["position"], row["filename"], row["content_type"], row["size"])
    return info, data
