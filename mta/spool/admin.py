"""Operator actions on the queue: list, show, hold, release, retry, delete, bounce, summary.

Each changing action runs in one transaction with an entry in the audit log
that names the actor, the action and the queue ids (never addresses), and
ends with one NOTIFY when rows became due. A delivery that a node is
attempting right now (leased) is left alone by retry, delete and bounce,
and reported as busy: its attempt settles it, and the operator can repeat
the action after it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from mta.delivery.bounce import build_dsn
from mta.delivery.outcome import Reply
from mta.spool.enqueue import NewMessage, Spool
from mta.spool.scheduler import NOTIFY_CHANNEL
from mta.spool.settle import complete_messages
from mta.storage.bodies import BodyCodec
from mta.storage.keyring import KeyDestroyedError
from mta.storage.store import BodyStore, StoreError
from mta.webhooks.outbox import Outbox, operator_events

log = logging.getLogger("mta.queue")

QUEUE_ID = re.compile(r"^[A-Z2-7]{16}$")
OPERATOR_BOUNCE = Reply(550, "5.0.0 returned to sender by the mail operator")
OPERATOR_DELETE = Reply(250, "2.0.0 deleted by the mail operator")

# Age buckets of the summary, in minutes, as Postfix's qshape uses them.
AGE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)


class AdminError(ValueError):
    """An operator's request names something that does not exist or cannot be done."""


@dataclass(frozen=True)
class Filters:
    sender: str | None = None
    recipient: str | None = None
    domain: str | None = None
    state: str | None = None
    older_than: timedelta | None = None
    newer_than: timedelta | None = None


@dataclass
class ActionResult:
    """The outcome of an action: queue ids changed, and those skipped because a node is delivering them."""

    done: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)


async def remove_objects(store: BodyStore, object_keys: list[str]) -> None:
    """Delete body objects that no row needs any more, leaving any that fail to the orphan sweep."""
    for key in object_keys:
        try:
            await store.delete(key)
        except StoreError as error:
            log.warning("failed to delete the body object of a removed message, the orphan sweep deletes it "
                        "later: %s", error)


def check_queue_ids(queue_ids: list[str]) -> list[str]:
    """Return the ids in upper case, or raise AdminError naming the first malformed one."""
    normalised = []
    for queue_id in queue_ids:
        if not QUEUE_ID.match(queue_id.upper()):
            raise AdminError(f"invalid queue id {queue_id!r}: expected 16 characters of A-Z and 2-7")
        normalised.append(queue_id.upper())
    return normalised


_STATE_SQL = """CASE WHEN d.held THEN 'held' WHEN d.lease_owner IS NOT NULL THEN 'active' ELSE 'deferred' END"""

_LIST = f"""
SELECT d.message_id, m.sender, m.size, m.received_at, d.domain, d.recipients, d.due_at,
       d.attempts, {_STATE_SQL} AS state, d.last_reply, d.replies
FROM delivery d JOIN message m ON m.id = d.message_id
WHERE ($1::text IS NULL OR lower(m.sender) = lower($1))
  AND ($2::text IS NULL OR lower($2) = ANY (SELECT lower(r) FROM unnest(d.recipients) AS r))
  AND ($3::text IS NULL OR d.domain = lower($3))
  AND ($4::text IS NULL OR {_STATE_SQL} = $4)
  AND ($5::interval IS NULL OR m.received_at < now() - $5)
  AND ($6::interval IS NULL OR m.received_at > now() - $6)
ORDER BY m.received_at, d.id
"""


async def list_deliveries(connection: asyncpg.Connection, filters: Filters) -> list[dict]:
    rows = await connection.fetch(_LIST, filters.sender, filters.recipient, filters.domain, filters.state,
                                  filters.older_than, filters.newer_than)
    return [_with_replies(row) for row in rows]


async def show(connection: asyncpg.Connection, queue_id: str) -> dict:
    """Return the envelope, the deliveries still queued and the history of one message."""
    message = await connection.fetchrow(
        "SELECT id, sender, size, origin, session_id, received_at, completed_at, quarantine FROM message WHERE id = $1",
        queue_id)
    if message is None:
        raise AdminError(f"queue id not found: {queue_id}")
    deliveries = await connection.fetch(
        f"SELECT d.domain, d.recipients, {_STATE_SQL} AS state, d.due_at, d.attempts, d.last_reply, d.replies"
        " FROM delivery d WHERE d.message_id = $1 ORDER BY d.domain", queue_id)
    events = await connection.fetch(
        "SELECT at, recipient, status, reply, relay FROM delivery_event WHERE message_id = $1 ORDER BY at, id",
        queue_id)
    return {"message": dict(message), "deliveries": [_with_replies(row) for row in deliveries],
            "events": [dict(row) for row in events]}


def _with_replies(row: asyncpg.Record) -> dict:
    """Return the row with its per-recipient replies decoded from JSON, {} when none was recorded."""
    decoded = dict(row)
    decoded["replies"] = json.loads(row["replies"]) if row["replies"] else {}
    return decoded


async def summary(connection: asyncpg.Connection) -> list[asyncpg.Record]:
    """Return, per destination domain, the queued deliveries by age bucket (minutes since arrival)."""
    buckets = ", ".join(
        f"count(*) FILTER (WHERE age >= {low} AND age < {high}) AS \"{high}\""
        for low, high in zip((0, *AGE_BUCKETS[:-1]), AGE_BUCKETS, strict=True))
    return await connection.fetch(f"""
        SELECT domain, count(*) AS total, {buckets},
               count(*) FILTER (WHERE age >= {AGE_BUCKETS[-1]}) AS "older"
        FROM (SELECT d.domain, extract(epoch FROM now() - m.received_at) / 60 AS age
              FROM delivery d JOIN message m ON m.id = d.message_id) AS queued
        GROUP BY domain ORDER BY total DESC, domain""")


class QueueAdmin:
    """Changing actions, each in one transaction with its audit entry."""

    def __init__(self, connection: asyncpg.Connection, actor: str, outbox: Outbox | None = None):
        self.connection = connection
        self.actor = actor
        # Where delete and bounce write their webhook events; None when no endpoint is configured.
        self.outbox = outbox

    async def hold(self, queue_ids: list[str]) -> ActionResult:
        return await self._update(queue_ids, "hold", "UPDATE delivery SET held = true"
                                  " WHERE message_id = ANY($1::text[]) AND NOT held RETURNING message_id")

    async def release(self, queue_ids: list[str]) -> ActionResult:
        return await self._update(queue_ids, "release", "UPDATE delivery SET held = false, due_at = now()"
                                  " WHERE message_id = ANY($1::text[]) AND held RETURNING message_id", wake=True)

    async def retry(self, queue_ids: list[str]) -> ActionResult:
        return await self._update(queue_ids, "retry", "UPDATE delivery SET due_at = now()"
                                  " WHERE message_id = ANY($1::text[]) AND lease_owner IS NULL AND NOT held"
                                  " RETURNING message_id", wake=True)

    async def flush(self) -> int:
        async with self.connection.transaction():
            status = await self.connection.execute(
                "UPDATE delivery SET due_at = now() WHERE lease_owner IS NULL AND NOT held")
            count = int(status.split()[-1])
            await self._audit("flush", {"deliveries": count})
            await self._wake()
        return count

    async def delete(self, queue_ids: list[str], store: BodyStore | None = None) -> ActionResult:
        """Remove the messages' queued deliveries, recording 'deleted' for each recipient.

        With store, the body objects that no mailbox keeps are deleted after
        the commit. Without it, or when that fails, the orphan sweep deletes them.
        """
        async with self.connection.transaction():
            result = await self._take_rows(queue_ids)
            unused = await complete_messages(self.connection, result.done)
            object_keys = await self._object_keys(unused)
            await self._audit("delete", {"queue_ids": result.done, "busy": result.busy})
        if store is not None:
            await remove_objects(store, object_keys)
        return result

    async def bounce(self, queue_ids: list[str], spool: Spool, store: BodyStore, bodies: BodyCodec,
                     hostname: str) -> ActionResult:
        """Fail the messages' queued recipients and send each sender one notification."""
        async with self.connection.transaction():
            result = await self._take_rows(queue_ids, status="bounced", reply=OPERATOR_BOUNCE)
            notifications = []
            for queue_id, recipients in result.recipients.items():
                notification = await self._notification(queue_id, recipients, spool, store, bodies, hostname)
                if notification is not None:
                    notifications.append(notification)
            if notifications:
                jobs = await spool.insert(self.connection, notifications)
                # Inserted leased, as by a node; unleased here, so the next claim of any node takes them.
                await self.connection.execute(
                    "UPDATE delivery SET lease_owner = NULL, lease_until = NULL, attempts = 0"
                    " WHERE id = ANY($1::bigint[])", [job.delivery_id for job in jobs])
                await self._wake()
            # After the notifications, which read the bodies that completing may delete.
            unused = await complete_messages(self.connection, result.done)
            object_keys = await self._object_keys(unused)
            await self._audit("bounce", {"queue_ids": result.done, "busy": result.busy,
                                         "notifications": [n.queue_id for n in notifications]})
        await remove_objects(store, object_keys)
        return result

    async def _object_keys(self, queue_ids: set[str]) -> list[str]:
        """Return the body store keys of these messages' bodies; inline bodies have none."""
        rows = await self.connection.fetch("SELECT body_key FROM message WHERE id = ANY($1::text[])"
                                           " AND body_key IS NOT NULL", list(queue_ids))
        return [row["body_key"] for row in rows]

    async def _update(self, queue_ids: list[str], action: str, sql: str, wake: bool = False) -> ActionResult:
        async with self.connection.transaction():
            await self._require_known(queue_ids)
            rows = await self.connection.fetch(sql, queue_ids)
            done = sorted({row["message_id"] for row in rows})
            await self._audit(action, {"queue_ids": queue_ids, "changed": done})
            if wake and done:
                await self._wake()
        return ActionResult(done=done)

    async def _take_rows(self, queue_ids: list[str], status: str = "deleted",
                         reply: Reply = OPERATOR_DELETE) -> _Removed:
        """Delete the unleased delivery rows of the messages and record status for their recipients.

        The caller completes the messages left without delivery rows (complete_messages).
        """
        await self._require_known(queue_ids)
        rows = await self.connection.fetch(
            "DELETE FROM delivery d USING message m WHERE m.id = d.message_id"
            " AND d.message_id = ANY($1::text[]) AND d.lease_owner IS NULL"
            " RETURNING d.message_id, d.recipients, m.sender", queue_ids)
        leased = await self.connection.fetch(
            "SELECT DISTINCT message_id FROM delivery WHERE message_id = ANY($1::text[]) AND lease_owner IS NOT NULL",
            queue_ids)

        removed = _Removed(busy=sorted(row["message_id"] for row in leased))
        for row in rows:
            removed.recipients.setdefault(row["message_id"], []).extend(row["recipients"])
        removed.done = sorted(removed.recipients)
        events = [(queue_id, recipient) for queue_id, recipients in removed.recipients.items() for recipient in recipients]
        await self.connection.execute(
            "INSERT INTO delivery_event (message_id, recipient, status, reply, relay)"
            " SELECT m, r, $3, $4, 'none' FROM unnest($1::text[], $2::text[]) AS e (m, r)",
            [queue_id for queue_id, _ in events], [recipient for _, recipient in events], status, str(reply))
        if self.outbox is not None:
            await self.outbox.insert(self.connection, operator_events(status, reply, [
                (row["message_id"], row["sender"], recipient) for row in rows for recipient in row["recipients"]]))
        return removed

    async def _notification(self, queue_id: str, recipients: list[str], spool: Spool, store: BodyStore,
                            bodies: BodyCodec, hostname: str):
        row = await self.connection.fetchrow(
            "SELECT m.sender, m.received_at, m.body_key, m.wrapped_key, m.data_key_id, b.data AS inline_data"
            " FROM message m LEFT JOIN message_body b ON b.message_id = m.id WHERE m.id = $1", queue_id)
        if row["sender"] == "":
            # RFC 5321 section 6.1: never a notification about a notification.
            return None
        data = row["inline_data"] if row["inline_data"] is not None else await store.get(row["body_key"])
        try:
            original = (await bodies.open(queue_id, data, row["wrapped_key"], row["data_key_id"])).body
        except KeyDestroyedError:
            # The body was erased, so the notification names the recipients only.
            original = b""
        dsn = build_dsn(hostname, queue_id, row["sender"], row["received_at"],
                        [(recipient, OPERATOR_BOUNCE) for recipient in recipients], original)
        return await spool.prepare(NewMessage(sender="", recipients=[row["sender"]], body=dsn, origin="bounce",
                                              session_id=queue_id))

    async def _require_known(self, queue_ids: list[str]) -> None:
        rows = await self.connection.fetch("SELECT id FROM message WHERE id = ANY($1::text[])", queue_ids)
        unknown = sorted(set(queue_ids) - {row["id"] for row in rows})
        if unknown:
            raise AdminError(f"queue id not found: {', '.join(unknown)}")

    async def _audit(self, action: str, detail: dict) -> None:
        await self.connection.execute("INSERT INTO audit_log (actor, action, detail) VALUES ($1, $2, $3::jsonb)",
                                      self.actor, f"queue {action}", json.dumps(detail))

    async def _wake(self) -> None:
        # Delivered at commit: one NOTIFY wakes the idle nodes.
        await self.connection.execute(f"NOTIFY {NOTIFY_CHANNEL}")


@dataclass
class _Removed(ActionResult):
    recipients: dict[str, list[str]] = field(default_factory=dict)


def parse_age(text: str) -> timedelta:
    """Parse an age such as 90s, 30m, 4h or 2d; raise ValueError otherwise."""
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if match is None:
        raise ValueError(f"invalid age {text!r}: use a number and s, m, h or d, for example 30m or 2d")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


def as_json(value: object) -> object:
    """Make rows printable as JSON, with times as ISO 8601 in UTC."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(item) for item in value]
    return value
