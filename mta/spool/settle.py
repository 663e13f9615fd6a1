"""Record the outcome of a delivery attempt, in one transaction.

Delivered and failed recipients leave the work row; deferred ones stay with a
new due time from the retry schedule, until the message is older than its
maximum age, when they fail too. The row is updated only if this node still
holds the lease for this attempt, so a worker whose lease was taken over
cannot settle it a second time. A notification for failed recipients is
inserted in the same transaction (its body already durable), so a crash can
neither lose it nor send it twice. Mail from the null sender never gets one.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone

import asyncpg

from mta.delivery.bounce import build_dsn
from mta.delivery.outcome import Outcome, Reply
from mta.spool.enqueue import Job, NewMessage, Prepared, Spool

log = logging.getLogger("mta.settle")

_RESCHEDULE = """
UPDATE delivery
SET recipients = $4, due_at = now() + make_interval(secs => $5),
    lease_owner = NULL, lease_until = NULL, last_reply = $6
WHERE id = $1 AND lease_owner = $2 AND attempts = $3
"""

_FINISH = "DELETE FROM delivery WHERE id = $1 AND lease_owner = $2 AND attempts = $3"

_EVENTS = """
INSERT INTO delivery_event (message_id, recipient, status, reply, relay)
SELECT $1, r, s, t, $5 FROM unnest($2::text[], $3::text[], $4::text[]) AS e (r, s, t)
"""

_DROP_INLINE_BODY = "DELETE FROM message_body WHERE message_id = $1"

_COMPLETE = """
UPDATE message SET completed_at = now()
WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM delivery WHERE message_id = $1)
RETURNING NOT EXISTS (SELECT 1 FROM mailbox_message WHERE message_id = $1) AS body_unused
"""


@dataclass(frozen=True)
class MessageInfo:
    queue_id: str
    sender: str
    received_at: datetime


@dataclass(frozen=True)
class Settlement:
    """Result of settling, for the caller's log lines and follow-up work."""

    applied: bool
    body_unused: bool = False
    notification: Prepared | None = None
    jobs: list[Job] = field(default_factory=list)


def retry_delay(schedule: list[float], attempt: int) -> float:
    """Seconds until the next attempt; the last interval repeats, with 10 % jitter."""
    base = schedule[min(attempt - 1, len(schedule) - 1)]
    return base * random.uniform(0.9, 1.1)


class Settler:
    def __init__(self, pool: asyncpg.Pool, spool: Spool, node_id: str, hostname: str,
                 retry_schedule: list[float], max_age: float):
        self.pool = pool
        self.spool = spool
        self.node_id = node_id
        self.hostname = hostname
        self.retry_schedule = retry_schedule
        self.max_age = max_age

    def expire_if_old(self, message: MessageInfo, outcome: Outcome) -> None:
        """Turn deferred recipients into failures once the message is too old."""
        age = (datetime.now(timezone.utc) - message.received_at).total_seconds()
        if age < self.max_age or not outcome.deferred:
            return
        for recipient, reply in outcome.deferred:
            outcome.failed.append((recipient, Reply(reply.code, f"4.4.7 message expired in queue, last reply: {reply}")))
        outcome.deferred.clear()

    async def settle(self, job: Job, message: MessageInfo, outcome: Outcome, body: bytes) -> Settlement:
        self.expire_if_old(message, outcome)
        notification = await self._prepare_notification(message, outcome, body)

        try:
            async with self.pool.acquire(timeout=30) as connection:
                async with connection.transaction():
                    settlement = await self._apply(connection, job, message, outcome, notification)
        except BaseException:
            if notification is not None:
                await self.spool.discard(notification)
            raise

        if not settlement.applied and notification is not None:
            await self.spool.discard(notification)
            return Settlement(applied=False)

        # Handed to the ready queue only now that the rows are committed.
        self.spool.on_ready(settlement.jobs)
        return settlement

    async def _apply(self, connection: asyncpg.Connection, job: Job, message: MessageInfo,
                     outcome: Outcome, notification: Prepared | None) -> Settlement:
        if outcome.deferred:
            recipients = [recipient for recipient, _ in outcome.deferred]
            last_reply = str(outcome.deferred[0][1])
            delay = retry_delay(self.retry_schedule, job.attempt)
            status = await connection.execute(
                _RESCHEDULE, job.delivery_id, self.node_id, job.attempt, recipients, delay, last_reply)
        else:
            status = await connection.execute(_FINISH, job.delivery_id, self.node_id, job.attempt)

        if status.endswith(" 0"):
            # The lease passed to another node; its attempt settles the row.
            log.warning("%s: lease lost before settling attempt %d, outcome discarded",
                        message.queue_id, job.attempt)
            return Settlement(applied=False)

        events = ([], [], [])
        for status_name, pairs in (("delivered", outcome.delivered), ("deferred", outcome.deferred),
                                   ("bounced", outcome.failed)):
            for recipient, reply in pairs:
                events[0].append(recipient)
                events[1].append(status_name)
                events[2].append(str(reply))
        await connection.execute(_EVENTS, message.queue_id, *events, outcome.relay)

        jobs = []
        if notification is not None:
            jobs = await self.spool.insert(connection, [notification])
        completed = await connection.fetchrow(_COMPLETE, message.queue_id)
        if completed and completed["body_unused"]:
            await connection.execute(_DROP_INLINE_BODY, message.queue_id)

        return Settlement(applied=True, body_unused=bool(completed and completed["body_unused"]),
                          notification=notification, jobs=jobs)

    async def _prepare_notification(self, message: MessageInfo, outcome: Outcome, body: bytes) -> Prepared | None:
        if not outcome.failed:
            return None
        if message.sender == "":
            # RFC 5321 section 6.1: never send a notification about a notification.
            log.info("%s: no notification for failed recipients, the sender is null", message.queue_id)
            return None

        dsn = build_dsn(self.hostname, message.queue_id, message.sender, message.received_at,
                        outcome.failed, body)
        return await self.spool.prepare(NewMessage(
            sender="", recipients=[message.sender], body=dsn, origin="bounce",
            session_id=message.queue_id))
