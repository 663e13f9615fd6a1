"""The message auditor: audit entries for accepted messages and delivery outcomes.

The SMTP accept path and the settle writer take no audit lock. Instead one
node at a time, whichever takes an advisory lock, reads the rows they have
committed (``message`` for "message accepted", ``delivery_event`` for
"message delivered", "message bounced" and "message deferred") and appends
their entries to the hash-chained ``audit_log`` in batches. The cursor in
``audit_cursor`` moves in the same transaction as the entries are appended,
so each row is audited exactly once, also across crashes. Rows are read in
(xid, id) order, and only from transactions older than every one still
running (queue/0022_message_audit.sql explains why).

Entries hold no address in clear: senders and recipients are keyed
pseudonyms (mta.pseudonym) with the domain kept, because the chain cannot be
rewritten to erase a person's data. Reply texts are left out too, since
remote servers often repeat the address in them; only the reply code and
the enhanced status code are kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from mta import pseudonym
from mta.background import BackgroundTask
from mta.db import TRANSIENT_ERRORS

log = logging.getLogger("mta.audit")

ACTOR = "mta"
# Any constant works: it only has to be the same on every node.
AUDITOR_LOCK_ID = 0x6D7461756469
# Rounds in a row while a backlog remains, so one tick ends in bounded time.
MAX_ROUNDS_PER_TICK = 20
# Delivery outcomes that get an entry. "deleted" rows come from mta queue
# delete, which is audited as the operator's action already.
AUDITED_STATUSES = {"delivered": "message delivered", "bounced": "message bounced",
                    "deferred": "message deferred"}

_REPLY = re.compile(r"^(?P<code>\d{3})(?:[ -](?P<enhanced>[245]\.\d{1,3}\.\d{1,3})\b)?")

_HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())"

_CURSOR = "SELECT message_xid, message_id, event_xid, event_id FROM audit_cursor FOR UPDATE"

_MESSAGES = """
SELECT xid, id, sender, origin, size, received_at FROM message
WHERE (xid, id) > ($1::xid8, $2) AND xid < $3::xid8
ORDER BY xid, id LIMIT $4
"""

_EVENTS = """
SELECT xid, id, message_id, recipient, status, reply, relay, at FROM delivery_event
WHERE (xid, id) > ($1::xid8, $2) AND xid < $3::xid8
ORDER BY xid, id LIMIT $4
"""

_APPEND = """
INSERT INTO audit_log (actor, action, detail)
SELECT $1, action, detail::jsonb FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS e (action, detail, n)
ORDER BY n
"""

_ADVANCE = """
UPDATE audit_cursor SET message_xid = $1::xid8, message_id = $2, event_xid = $3::xid8, event_id = $4,
                        updated_at = now()
"""


@dataclass(frozen=True)
class Round:
    """Counts of one audit transaction."""

    messages: int = 0
    events: int = 0
    entries: int = 0
    # Whether a batch was full, so more rows may be waiting.
    full: bool = False


class AddressPseudonyms:
    """Keyed pseudonyms of whole addresses, as ``anon.<hex>@domain``."""

    def __init__(self, key: bytes):
        self.key = key

    def __call__(self, address: str) -> str:
        # The null reverse-path stays empty: it names nobody.
        if not address:
            return ""
        _, at, domain = address.rpartition("@")
        if not at:
            return pseudonym.local_pseudonym(self.key, address)
        return f"{pseudonym.local_pseudonym(self.key, address)}@{domain.lower()}"


def reply_codes(reply: str) -> dict:
    """Return the reply code and enhanced status code of a reply, without its text."""
    match = _REPLY.match(reply)
    if match is None:
        return {"code": None, "enhanced": None}
    return {"code": int(match.group("code")), "enhanced": match.group("enhanced")}


def accepted_entry(row: asyncpg.Record, pseudonymise: AddressPseudonyms) -> tuple[str, str]:
    detail = {"queue_id": row["id"], "sender": pseudonymise(row["sender"]), "origin": row["origin"],
              "size": row["size"], "at": row["received_at"].isoformat()}
    return "message accepted", json.dumps(detail)


def outcome_entry(row: asyncpg.Record, pseudonymise: AddressPseudonyms) -> tuple[str, str]:
    detail = {"queue_id": row["message_id"], "recipient": pseudonymise(row["recipient"]),
              "status": row["status"], **reply_codes(row["reply"]), "relay": row["relay"],
              "event_id": row["id"], "at": row["at"].isoformat()}
    return AUDITED_STATUSES[row["status"]], json.dumps(detail)


async def audit_round(connection: asyncpg.Connection, pseudonymise: AddressPseudonyms, batch_size: int) -> Round | None:
    """Append the entries of up to batch_size messages and events; return None when another node holds the lock."""
    async with connection.transaction():
        if not await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", AUDITOR_LOCK_ID):
            return None
        # Taken before the cursor row is locked, which gives this transaction an id of its own.
        horizon = await connection.fetchval(_HORIZON)
        cursor = await connection.fetchrow(_CURSOR)

        messages = await connection.fetch(_MESSAGES, cursor["message_xid"], cursor["message_id"], horizon, batch_size)
        messages_full = len(messages) == batch_size
        # While messages remain, events stop before the last message read, so
        # no delivery entry comes before the entry of its message's acceptance.
        event_horizon = messages[-1]["xid"] if messages_full else horizon
        events = await connection.fetch(_EVENTS, cursor["event_xid"], cursor["event_id"], event_horizon, batch_size)

        entries = [accepted_entry(row, pseudonymise) for row in messages]
        entries += [outcome_entry(row, pseudonymise) for row in events if row["status"] in AUDITED_STATUSES]
        if entries:
            await connection.execute(_APPEND, ACTOR, [action for action, _ in entries],
                                     [detail for _, detail in entries])
        if messages or events:
            await _advance(connection, cursor, messages, events)
    return Round(len(messages), len(events), len(entries), messages_full or len(events) == batch_size)


async def _advance(connection: asyncpg.Connection, cursor: asyncpg.Record, messages: list, events: list) -> None:
    message_position = (messages[-1]["xid"], messages[-1]["id"]) if messages \
        else (cursor["message_xid"], cursor["message_id"])
    event_position = (events[-1]["xid"], events[-1]["id"]) if events else (cursor["event_xid"], cursor["event_id"])
    await connection.execute(_ADVANCE, *message_position, *event_position)


class MessageAuditor(BackgroundTask):
    """Runs audit rounds every ``interval`` seconds, more at once while a backlog remains."""

    task_name = "message-auditor"

    def __init__(self, pool: asyncpg.Pool, key_path: Path, interval: float, batch_size: int):
        super().__init__()
        self.pool = pool
        self.key_path = key_path
        self.interval = interval
        self.batch_size = batch_size
        self._pseudonyms: AddressPseudonyms | None = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except TRANSIENT_ERRORS as error:
                log.warning("message audit failed, trying again in %.0f s: %r", self.interval, error)
            except (OSError, ValueError) as error:
                # Without the key no entry is written, rather than one with an unkeyed pseudonym.
                log.error("message audit paused: pseudonym key %s unusable: %s", self.key_path, error)
            await asyncio.sleep(self.interval)

    async def tick(self) -> int:
        """Run rounds until no batch is full or MAX_ROUNDS_PER_TICK; return the entries appended."""
        pseudonymise = await self._key()
        appended = 0
        async with self.pool.acquire(timeout=30) as connection:
            for _ in range(MAX_ROUNDS_PER_TICK):
                result = await audit_round(connection, pseudonymise, self.batch_size)
                if result is None:
                    break
                appended += result.entries
                if not result.full:
                    break
        if appended:
            log.debug("message audit appended %d entries", appended)
        return appended

    async def _key(self) -> AddressPseudonyms:
        if self._pseudonyms is None:
            key = await asyncio.to_thread(pseudonym.load_or_create_key, self.key_path)
            self._pseudonyms = AddressPseudonyms(key)
        return self._pseudonyms
