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
in mailbox.json with ``"unreadable": true`` and left out of the mbox.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import asyncpg

from mta.auth.users import LOCKED
from mta.mailbox.store import fetch_message
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

_FROM_LINE = re.compile(rb"^>*From ")


@dataclass(frozen=True)
class Export:
    """Counts of what an archive contains, and its SHA-256, for the audit log."""

    messages: int
    unreadable: int
    attachments: int
    sent: int
    received_events: int
    queued: int
    suppression_entries: int
    audit_entries: int
    sha256: str

    def as_audit_detail(self, pseudonym: str) -> dict:
        return {"pseudonym": pseudonym, "messages": self.messages, "unreadable": self.unreadable,
                "attachments": self.attachments, "sent": self.sent, "received_events": self.received_events,
                "queued": self.queued, "suppression_entries": self.suppression_entries,
                "audit_entries": self.audit_entries, "sha256": self.sha256}


async def export(connection: asyncpg.Connection, store: BodyStore, bodies: BodyCodec, address: str,
                 pseudonym: str, path: Path) -> Export:
    """Write the address's archive to path, which must not exist yet; return its counts.

    The file is created with mode 0600, because it contains mail.
    """
    mailbox = [dict(row) for row in await connection.fetch(_MAILBOX, address)]
    attachments = [dict(row) for row in await connection.fetch(_ATTACHMENTS, address)]
    history = await _history(connection, address)
    suppression = [dict(row) for row in await connection.fetch(_SUPPRESSION, address)]
    account = await connection.fetchrow(_ACCOUNT, address, LOCKED)
    audit = [dict(row) for row in await connection.fetch(_AUDIT, address, pseudonym.lower())]

    for entry in audit:
        entry["detail"] = json.loads(entry["detail"])

    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file, zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as archive:
            unreadable = await _write_mbox(archive, connection, store, bodies, address, mailbox)
            _write_json(archive, "mailbox.json", {"address": address, "messages": mailbox,
                                                  "attachments": attachments})
            _write_json(archive, "deliveries.json", history)
            _write_json(archive, "suppression.json", suppression)
            _write_json(archive, "account.json", dict(account) if account is not None else None)
            _write_json(archive, "audit.json", audit)
    except BaseException:
        # A partial archive would look complete to whoever receives it.
        path.unlink(missing_ok=True)
        raise

    return Export(len(mailbox) - unreadable, unreadable, len(attachments), len(history["sent"]),
                  len(history["received"]), len(history["queued"]), len(suppression), len(audit), _sha256(path))


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


async def _write_mbox(archive: zipfile.ZipFile, connection, store: BodyStore, bodies: BodyCodec, address: str,
                      mailbox: list[dict]) -> int:
    """Append each readable message to mailbox.mbox; mark the others; return how many were unreadable."""
    unreadable = 0
    with archive.open("mailbox.mbox", "w", force_zip64=True) as mbox:
        for message in mailbox:
            try:
                body = await fetch_message(connection, store, bodies, address, message["id"])
            except DecryptionError:
                message["unreadable"] = True
                unreadable += 1
                continue
            mbox.write(mboxrd_entry(message["sender"], message["received_at"], body))
    return unreadable


def mboxrd_entry(sender: str, received_at: datetime, body: bytes) -> bytes:
    """Return one message in mboxrd form: a From_ line, then lines where every '>*From ' gains one '>'."""
    when = received_at.astimezone(timezone.utc).strftime("%a %b %d %H:%M:%S %Y")
    envelope = (sender or "MAILER-DAEMON").replace(" ", "_")
    lines = body.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    quoted = [b">" + line if _FROM_LINE.match(line) else line for line in lines]
    return f"From {envelope} {when}\n".encode() + b"\n".join(quoted) + b"\n\n"


def _write_json(archive: zipfile.ZipFile, name: str, value) -> None:
    archive.writestr(name, json.dumps(value, indent=2, default=_json_value, ensure_ascii=False))


def _json_value(value):
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while piece := file.read(1024 * 1024):
            digest.update(piece)
    return digest.hexdigest()
