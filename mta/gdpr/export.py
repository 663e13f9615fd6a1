"""Export of one person's data (GDPR article 15 and 20) as one zip archive.

The archive contains:

- ``mailbox.mbox``: their mailbox messages in mboxrd form, with CRLF line
  ends turned into LF as mbox readers expect;
- ``mailbox.json``: the metadata of each message and its stored attachments;
- ``deliveries.json``: messages they sent (``message.sender``) with every
  recorded attempt, and the attempts and queued deliveries naming them as
  a recipient;
- ``suppression.json``, ``account.json`` (never the password hash) and
  ``audit.json`` (entries whose detail names the address or its pseudonym).

A message whose body cannot be decrypted (its data key destroyed) is listed
in mailbox.json with ``"unreadable": true`` and left out of the mbox. So is
one removed after the snapshot, with ``"removed": true``.

Everything but the bodies is read first, in one read-only snapshot. The
bodies are then read one at a time and the archive is produced piece by
piece, so neither a large message nor the archive is ever whole in memory,
and no transaction stays open while a slow client downloads it. Deflating
runs in a thread, so it does not stall the event loop. An object altered
in the store raises its DecryptionError in the middle of the archive.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from mta.auth.users import LOCKED
from mta.gdpr.mbox import MboxrdConverter, from_line
from mta.mailbox.store import Content, MessageNotFound, open_message
from mta.storage.bodies import BodyCodec
from mta.storage.crypto import DecryptionError
from mta.storage.store import BodyStore

_MAILBOX = """
SELECT b.id, b.folder, b.size, b.date, b.from_header, b.subject, b.flags, b.delivered_at, m.id AS queue_id,
       m.sender, m.received_at
FROM mailbox_message b JOIN message m ON m.id = b.message_id WHERE b.mailbox = $1 ORDER BY b.id
"""
_ATTACHMENTS = """
SELECT a.mailbox_message_id, a.position, a.filename, a.content_type, a.size
FROM mailbox_attachment a JOIN mailbox_message b ON b.id = a.mailbox_message_id WHERE b.mailbox = $1
ORDER BY a.mailbox_message_id, a.position
"""
_SENT = """
SELECT id AS queue_id, size, origin, received_at, completed_at FROM message WHERE lower(sender) = $1 ORDER BY received_at
"""
_EVENTS_OF = """
SELECT message_id AS queue_id, recipient, status, reply, relay, at FROM delivery_event
WHERE message_id = ANY($1::text[]) ORDER BY at, id
"""
_RECEIVED = """
SELECT e.message_id AS queue_id, m.sender, e.status, e.reply, e.relay, e.at
FROM delivery_event e LEFT JOIN message m ON m.id = e.message_id WHERE lower(e.recipient) = $1 ORDER BY e.at, e.id
"""
_QUEUED = """
SELECT d.message_id AS queue_id, m.sender, d.domain, d.recipients, d.due_at, d.attempts, d.last_reply
FROM delivery d JOIN message m ON m.id = d.message_id
WHERE lower(m.sender) = $1 OR EXISTS (SELECT 1 FROM unnest(d.recipients) AS r WHERE lower(r) = $1)
ORDER BY d.id
"""
_SUPPRESSION = """
SELECT sender_domain, address, reason, source, created_at, expires_at FROM suppression WHERE address = $1
ORDER BY sender_domain
"""
_ACCOUNT = "SELECT address, created_at, password_hash = $2 AS locked FROM mailbox_user WHERE address = $1"
_AUDIT = """
SELECT id, at, actor, action, detail::text AS detail FROM audit_log
WHERE strpos(lower(detail::text), $1) > 0 OR strpos(lower(detail::text), $2) > 0 ORDER BY id
"""

# Octets gathered before they go to the deflater in a thread, and before the archive yields them.
PIECE_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Export:
    """Counts of what an archive contains, and its SHA-256, for the audit log."""

    messages: int
    unreadable: int
    removed: int
    attachments: int
    sent: int
    received_events: int
    queued: int
    suppression_entries: int
    audit_entries: int
    sha256: str

    def as_audit_detail(self, pseudonym: str) -> dict:
        return {"pseudonym": pseudonym, "messages": self.messages, "unreadable": self.unreadable,
                "removed": self.removed, "attachments": self.attachments, "sent": self.sent,
                "received_events": self.received_events, "queued": self.queued,
                "suppression_entries": self.suppression_entries, "audit_entries": self.audit_entries,
                "sha256": self.sha256}


@dataclass
class Snapshot:
    """Everything an archive contains except the message bodies, read at one moment."""

    address: str
    mailbox: list[dict]
    attachments: list[dict]
    history: dict
    suppression: list[dict]
    account: dict | None
    audit: list[dict]


async def read_snapshot(connection: asyncpg.Connection, address: str, pseudonym: str) -> Snapshot:
    """Read the address's rows in one read-only transaction, so the archive's parts agree with each other.

    address must be in lower case.
    """
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        mailbox = [dict(row) for row in await connection.fetch(_MAILBOX, address)]
        attachments = [dict(row) for row in await connection.fetch(_ATTACHMENTS, address)]
        history = await _history(connection, address)
        suppression = [dict(row) for row in await connection.fetch(_SUPPRESSION, address)]
        account = await connection.fetchrow(_ACCOUNT, address, LOCKED)
        audit = [dict(row) for row in await connection.fetch(_AUDIT, address, pseudonym.lower())]

    for entry in audit:
        entry["detail"] = json.loads(entry["detail"])
    return Snapshot(address, mailbox, attachments, history, suppression,
                    dict(account) if account is not None else None, audit)


class Archive:
    """One person's zip archive, produced piece by piece from a snapshot and the mailbox's bodies.

    database is a pool or a connection, used for one short query per body.
    """

    def __init__(self, snapshot: Snapshot, database, store: BodyStore, bodies: BodyCodec):
        self.snapshot = snapshot
        self.database = database
        self.store = store
        self.bodies = bodies
        self._digest = hashlib.sha256()
        self._sink = _Sink()
        self._unreadable = 0
        self._removed = 0
        self._complete = False

    async def pieces(self) -> AsyncIterator[bytes]:
        """Yield the archive's octets; summary() is valid once they end."""
        snapshot = self.snapshot
        with zipfile.ZipFile(self._sink, "w", zipfile.ZIP_DEFLATED) as archive:
            async for piece in self._mbox(archive):
                yield piece
            await self._json(archive, "mailbox.json", {"address": snapshot.address, "messages": snapshot.mailbox,
                                                       "attachments": snapshot.attachments})
            await self._json(archive, "deliveries.json", snapshot.history)
            await self._json(archive, "suppression.json", snapshot.suppression)
            await self._json(archive, "account.json", snapshot.account)
            await self._json(archive, "audit.json", snapshot.audit)
        yield self._take()
        self._complete = True

    def summary(self) -> Export:
        if not self._complete:
            raise RuntimeError("the archive is not complete yet")
        snapshot = self.snapshot
        history = snapshot.history
        exported = len(snapshot.mailbox) - self._unreadable - self._removed
        return Export(exported, self._unreadable, self._removed, len(snapshot.attachments), len(history["sent"]),
                      len(history["received"]), len(history["queued"]), len(snapshot.suppression),
                      len(snapshot.audit), self._digest.hexdigest())

    async def _mbox(self, archive: zipfile.ZipFile) -> AsyncIterator[bytes]:
        """Write each readable message to mailbox.mbox, mark the others, and yield the archive so far."""
        # A ZipInfo of its own, because archive.open by name dates the entry 1980-01-01.
        entry = zipfile.ZipInfo("mailbox.mbox", date_time=time.localtime()[:6])
        entry.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(entry, "w", force_zip64=True) as mbox:
            for message in self.snapshot.mailbox:
                content = await self._open(message)
                if content is None:
                    continue
                converter = MboxrdConverter()
                pending = [from_line(message["sender"], message["received_at"])]
                async for piece in content.pieces:
                    pending.append(converter.feed(piece))
                    if sum(map(len, pending)) >= PIECE_SIZE:
                        await asyncio.to_thread(mbox.write, b"".join(pending))
                        pending = []
                        yield self._take()
                pending.append(converter.finish())
                await asyncio.to_thread(mbox.write, b"".join(pending))
        yield self._take()

    async def _open(self, message: dict) -> Content | None:
        try:
            return await open_message(self.database, self.store, self.bodies, self.snapshot.address, message["id"])
        except MessageNotFound:
            message["removed"] = True
            self._removed += 1
        except DecryptionError:
            message["unreadable"] = True
            self._unreadable += 1
        return None

    async def _json(self, archive: zipfile.ZipFile, name: str, value) -> None:
        text = json.dumps(value, indent=2, default=_json_value, ensure_ascii=False)
        await asyncio.to_thread(archive.writestr, name, text)

    def _take(self) -> bytes:
        data = self._sink.take()
        self._digest.update(data)
        return data


async def write_archive(archive: Archive, path: Path) -> Export:
    """Write the archive to path, which must not exist yet; return its counts.

    The file is created with mode 0600, because it contains mail.
    """
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            async for piece in archive.pieces():
                await asyncio.to_thread(file.write, piece)
    except BaseException:
        # A partial archive would look complete to whoever receives it.
        path.unlink(missing_ok=True)
        raise
    return archive.summary()


async def _history(connection: asyncpg.Connection, address: str) -> dict:
    sent = [dict(row) for row in await connection.fetch(_SENT, address)]
    events = await connection.fetch(_EVENTS_OF, [message["queue_id"] for message in sent])
    by_message: dict[str, list] = {}
    for event in events:
        by_message.setdefault(event["queue_id"], []).append(dict(event))
    for message in sent:
        message["attempts"] = by_message.get(message["queue_id"], [])

    received = [dict(row) for row in await connection.fetch(_RECEIVED, address)]
    queued = [dict(row) for row in await connection.fetch(_QUEUED, address)]
    return {"address": address, "sent": sent, "received": received, "queued": queued}


class _Sink(io.RawIOBase):
    """A write-only file without seek, which collects what zipfile writes until taken.

    zipfile then writes each entry's sizes after its data, so it never seeks back.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pieces: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._pieces.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._pieces)
        self._pieces = []
        return data


def _json_value(value):
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
