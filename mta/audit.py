"""Verification and export of the hash-chained audit log (queue/0015_audit_chain.sql).

``verify`` recomputes every entry's hash from its content and the previous
entry's hash, in id order, and names the first entry that does not match.
An entry changed in place breaks its own hash. A removed entry breaks the
link of the entry after it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone

import asyncpg

GENESIS = bytes(32)

_ENTRIES = """
SELECT id, at, actor, action, detail::text AS detail, prev_hash, hash FROM audit_log
WHERE ($1::timestamptz IS NULL OR at >= $1) AND ($2::timestamptz IS NULL OR at < $2)
  AND ($3::bigint IS NULL OR id > $3) AND ($4::bigint IS NULL OR id <= $4)
  AND ($5::text[] IS NULL OR action = ANY($5))
ORDER BY id
"""


async def append(connection, actor: str, action: str, detail: dict) -> None:
    """Append an action to the audit log; the database computes its place in the hash chain."""
    await connection.execute("INSERT INTO audit_log (actor, action, detail) VALUES ($1, $2, $3::jsonb)",
                             actor, action, json.dumps(detail))


@dataclass(frozen=True)
class Selection:
    """The id, time and action bounds that select the entries of an export; None leaves a bound open."""

    start: datetime | None = None
    end: datetime | None = None
    # Entries with ids after after_id, up to and including to_id.
    after_id: int | None = None
    to_id: int | None = None
    actions: list[str] | None = None


@dataclass(frozen=True)
class Verification:
    entries: int
    head: bytes
    # The id of the first entry that does not match, and why; None when the chain holds.
    broken_at: int | None = None
    reason: str = ""


def content(entry: asyncpg.Record) -> bytes:
    """Return the octets an entry's hash covers, as the database trigger forms them."""
    at = entry["at"].astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")
    fields = [str(entry["id"]), at, entry["actor"], entry["action"], entry["detail"]]
    # Each field is prefixed with its length, so no character inside one can shift the boundaries.
    return b"".join(str(len(field.encode())).encode() + b":" + field.encode() for field in fields)


def entry_hash(previous: bytes, entry: asyncpg.Record) -> bytes:
    return hashlib.sha256(previous + content(entry)).digest()


async def verify(connection: asyncpg.Connection) -> Verification:
    previous = GENESIS
    count = 0
    async with connection.transaction():
        async for entry in connection.cursor(_ENTRIES, None, None, None, None, None):
            count += 1
            if bytes(entry["prev_hash"]) != previous:
                return Verification(count, previous, entry["id"], "its link to the previous entry does not match: "
                                                                    "an entry before it was removed or changed")
            expected = entry_hash(previous, entry)
            if bytes(entry["hash"]) != expected:
                return Verification(count, previous, entry["id"], "its content does not match its hash: "
                                                                    "it was changed")
            previous = expected
    return Verification(count, previous)


async def export(connection: asyncpg.Connection, selection: Selection) -> list[dict]:
    """Return the selected entries with their hashes, for an auditor to check against a verified head."""
    rows = await connection.fetch(_ENTRIES, selection.start, selection.end, selection.after_id, selection.to_id,
                                  selection.actions)
    return [{"id": row["id"], "at": row["at"].astimezone(timezone.utc).isoformat(), "actor": row["actor"],
             "action": row["action"], "detail": row["detail"], "prev_hash": bytes(row["prev_hash"]).hex(),
             "hash": bytes(row["hash"]).hex()} for row in rows]
