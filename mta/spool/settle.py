"""Record the outcomes of delivery attempts, many in one transaction.

Attempts hand their outcome to one writer task (group commit, as for new
messages), which settles each batch with a few set-based statements.
Delivered and failed recipients leave the work row; deferred ones stay with a
new due time from the retry schedule, until the message is older than its
maximum age, when they fail too. The row is updated only if this node still
holds the lease for this attempt, so a worker whose lease was taken over
cannot settle it a second time. A notification for failed recipients is
inserted in the same transaction (its body already durable), so a crash can
neither lose it nor send it twice. Mail from the null sender never gets one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import asyncpg

from mta.delivery.body import BodyReadError, MessageBody
from mta.delivery.bounce import build_dsn
from mta.delivery.outcome import Outcome, Reply
from mta.mailbox.removal import drop_queue_wraps
from mta.smtp.dsn import DEFAULT_NOTIFY
from mta.spool.batch import GroupCommit, StoppingError
from mta.spool.enqueue import Job, NewMessage, Prepared, Spool, SpoolError
from mta.webhooks.outbox import Outbox, delivery_events

log = logging.getLogger("mta.settle")

# Each statement below handles a whole batch of attempts. Rows are touched
# only where this node still holds the lease for that attempt.
_RESCHEDULE = """
UPDATE delivery d
SET recipients = string_to_array(f.r, chr(10)), due_at = now() + make_interval(secs => f.delay),
    lease_owner = NULL, lease_until = NULL, last_reply = f.reply, site = coalesce(f.site, d.site),
    replies = f.replies::jsonb
FROM unnest($1::bigint[], $2::int[], $3::text[], $4::float8[], $5::text[], $7::text[], $8::text[])
    AS f (id, attempts, r, delay, reply, site, replies)
WHERE d.id = f.id AND d.attempts = f.attempts AND d.lease_owner = $6
RETURNING d.id
"""

_FINISH = """
DELETE FROM delivery d USING unnest($1::bigint[], $2::int[]) AS f (id, attempts)
WHERE d.id = f.id AND d.attempts = f.attempts AND d.lease_owner = $3
RETURNING d.id
"""

_EVENTS = """
INSERT INTO delivery_event (message_id, recipient, status, reply, relay)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
"""

# Locked in id order, in a statement of its own: two nodes that finish the
# last deliveries of one message wait for each other here. READ COMMITTED
# takes a new snapshot per statement, so the second node's next statement
# finds the first node's deletion committed, and exactly one of them
# completes the message.
_LOCK_MESSAGES = "SELECT id FROM message WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE"

_COMPLETE = """
UPDATE message m SET completed_at = now()
WHERE m.id = ANY($1::text[]) AND m.completed_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM delivery d WHERE d.message_id = m.id)
RETURNING m.id, NOT EXISTS (SELECT 1 FROM mailbox_message b WHERE b.message_id = m.id) AS body_unused
"""

_DROP_INLINE_BODIES = "DELETE FROM message_body WHERE message_id = ANY($1::text[])"

# Attempts settled in one transaction, and how long the writer waits for more.
MAX_BATCH = 100
BATCH_WINDOW = 0.002


@dataclass(frozen=True)
class MessageInfo:
    queue_id: str
    sender: str
    received_at: datetime
    # Whether the sender already got a notice that delivery is delayed.
    delay_notified: bool = False
    # The client's DSN parameters, or None (mta.smtp.session._dsn_request).
    dsn: dict | None = None


@dataclass(frozen=True)
class Settlement:
    """Result of settling, for the caller's log lines and follow-up work."""

    applied: bool
    body_unused: bool = False
    notification: Prepared | None = None


def _to_notify(message: MessageInfo, pairs: list[tuple[str, Reply]], event: str) -> list[tuple[str, Reply]]:
    """Return the recipients whose client requested a notice of event (NOTIFY), by default of failures and delays."""
    requests = (message.dsn or {}).get("recipients", {})
    return [(recipient, reply) for recipient, reply in pairs
            if event in requests.get(recipient, {}).get("notify", DEFAULT_NOTIFY)]


async def complete_messages(connection: asyncpg.Connection, queue_ids: list[str]) -> set[str]:
    """Mark the messages without delivery rows left as completed, and return those whose body no mailbox keeps.

    Their inline bodies are deleted, and the queue's wrap of a body that a
    mailbox keeps is dropped. Objects in the body store are the caller's to
    delete after the commit (or the orphan sweep's).
    """
    if not queue_ids:
        return set()
    await connection.execute(_LOCK_MESSAGES, queue_ids)
    rows = await connection.fetch(_COMPLETE, queue_ids)
    unused = {row["id"] for row in rows if row["body_unused"]}
    if unused:
        await connection.execute(_DROP_INLINE_BODIES, list(unused))
    kept = [row["id"] for row in rows if not row["body_unused"]]
    if kept:
        await drop_queue_wraps(connection, kept)
    return unused


def retry_delay(schedule: list[float], attempt: int) -> float:
    """Seconds until the next attempt; the last interval repeats, with 10 % jitter."""
    base = schedule[min(attempt - 1, len(schedule) - 1)]
    return base * random.uniform(0.9, 1.1)


@dataclass
class _Attempt:
    """One attempt's outcome waiting in the settle batch."""

    job: Job
    message: MessageInfo
    outcome: Outcome
    notification: Prepared | None
    # The notification reports delayed recipients, so it goes out only if
    # no other attempt of the message has sent a delay notice meanwhile.
    delay_notice: bool = False


class Settler:
    def __init__(self, pool: asyncpg.Pool, spool: Spool, node_id: str, hostname: str,
                 retry_schedule: list[float], max_age: float, delay_notice_after: float = 0.0,
                 outbox: Outbox | None = None):
        self.pool = pool
        self.outbox = outbox
        self.delay_notice_after = delay_notice_after
        self.spool = spool
        self.node_id = node_id
        self.hostname = hostname
        self.retry_schedule = retry_schedule
        self.max_age = max_age
        self.writer = GroupCommit("settle-writer", self._apply, MAX_BATCH, BATCH_WINDOW)

    def start(self) -> None:
        self.writer.start()

    @property
    def tasks(self) -> list[asyncio.Task]:
        return self.writer.tasks

    async def stop(self, grace: float = 10.0) -> None:
        """Settle the attempts handed over, then stop the writer."""
        await self.writer.stop(grace)

    def expire_if_old(self, message: MessageInfo, outcome: Outcome) -> None:
        """Turn deferred recipients into failures once the message is too old."""
        age = (datetime.now(timezone.utc) - message.received_at).total_seconds()
        if age < self.max_age or not outcome.deferred:
            return
        for recipient, reply in outcome.deferred:
            outcome.failed.append((recipient, Reply(reply.code, f"4.4.7 message expired in queue, last reply: {reply}")))
        outcome.deferred.clear()

    async def settle(self, job: Job, message: MessageInfo, outcome: Outcome, body: MessageBody) -> Settlement:
        """Record the outcome together with other attempts' in one transaction; raise if it failed."""
        self.expire_if_old(message, outcome)
        delay_notice = self._delay_notice_due(message, outcome)
        notification = await self._prepare_notification(message, outcome, body, delay_notice)
        try:
            done = self.writer.submit(_Attempt(job, message, outcome, notification, delay_notice))
        except StoppingError:
            if notification is not None:
                await self.spool.discard(notification)
            raise

        try:
            # Shielded: once handed over the commit may still happen, so the
            # notification's body stays unless the commit is known to have failed.
            settlement = await asyncio.shield(done)
        except asyncio.CancelledError:
            done.add_done_callback(lambda future: self._discard_unused(notification, future))
            raise
        except Exception:
            if notification is not None:
                await self.spool.discard(notification)
            raise

        if notification is not None and settlement.notification is None:
            # Not applied, or a delay notice that another attempt already sent.
            await self.spool.discard(notification)
        return settlement

    def _discard_unused(self, notification: Prepared | None, future: asyncio.Future) -> None:
        if notification is None:
            return
        if future.cancelled() or future.exception() is not None or future.result().notification is None:
            asyncio.create_task(self.spool.discard(notification))

    async def _apply(self, batch: list[_Attempt]) -> list[Settlement]:
        async with self.pool.acquire(timeout=30) as connection:
            async with connection.transaction():
                applied = await self._release_rows(connection, batch)
                done = [attempt for attempt in batch if attempt.job.delivery_id in applied]
                await self._record_events(connection, done)
                if self.outbox is not None:
                    await self.outbox.insert(connection, [
                        event for attempt in done for event in delivery_events(
                            attempt.message.queue_id, attempt.message.sender, attempt.job.attempt, attempt.outcome)])
                await self._claim_delay_notices(connection, done)
                notifications = [attempt.notification for attempt in done if attempt.notification is not None]
                jobs = await self.spool.insert(connection, notifications) if notifications else []
                unused = await self._complete_messages(connection, done)

        # Handed to the ready queue only now that the rows are committed.
        self.spool.on_ready(jobs)
        return [self._settlement(attempt, applied, unused) for attempt in batch]

    async def _claim_delay_notices(self, connection: asyncpg.Connection, done: list[_Attempt]) -> None:
        """Mark the delay notices as sent, and drop those whose message already had one.

        The update lets one attempt per message win, across nodes and within
        this batch. A losing attempt keeps its notification only when it also
        reports failed recipients or requested successes.
        """
        queue_ids = sorted({attempt.message.queue_id for attempt in done if attempt.delay_notice})
        if not queue_ids:
            return
        rows = await connection.fetch("UPDATE message SET delay_notified_at = now() WHERE id = ANY($1::text[])"
                                      " AND delay_notified_at IS NULL RETURNING id", queue_ids)
        winners = {row["id"] for row in rows}
        for attempt in done:
            if not attempt.delay_notice:
                continue
            if attempt.message.queue_id in winners:
                winners.discard(attempt.message.queue_id)
            elif not _to_notify(attempt.message, attempt.outcome.failed, "FAILURE") and \
                    not _to_notify(attempt.message, attempt.outcome.delivered, "SUCCESS"):
                attempt.notification = None

    def _settlement(self, attempt: _Attempt, applied: set[int], unused: set[str]) -> Settlement:
        if attempt.job.delivery_id not in applied:
            # The lease passed to another node; its attempt settles the row.
            log.warning("%s: lease lost before settling attempt %d, outcome discarded",
                        attempt.message.queue_id, attempt.job.attempt)
            return Settlement(applied=False)

        # Only one attempt per message reports the unused body, so it is removed once.
        body_unused = attempt.message.queue_id in unused
        unused.discard(attempt.message.queue_id)
        return Settlement(applied=True, body_unused=body_unused, notification=attempt.notification)

    async def _release_rows(self, connection: asyncpg.Connection, batch: list[_Attempt]) -> set[int]:
        """Delete finished rows and reschedule deferred ones; return the ids this node still held."""
        finished = [attempt.job for attempt in batch if not attempt.outcome.deferred]
        deferred = [attempt for attempt in batch if attempt.outcome.deferred]
        applied: set[int] = set()
        if finished:
            rows = await connection.fetch(_FINISH, [job.delivery_id for job in finished],
                                          [job.attempt for job in finished], self.node_id)
            applied.update(row["id"] for row in rows)
        if deferred:
            rows = await connection.fetch(
                _RESCHEDULE,
                [attempt.job.delivery_id for attempt in deferred],
                [attempt.job.attempt for attempt in deferred],
                ["\n".join(recipient for recipient, _ in attempt.outcome.deferred) for attempt in deferred],
                [retry_delay(self.retry_schedule, attempt.job.attempt) for attempt in deferred],
                [str(attempt.outcome.deferred[0][1]) for attempt in deferred],
                self.node_id,
                [attempt.outcome.site for attempt in deferred],
                [json.dumps({recipient: str(reply) for recipient, reply in attempt.outcome.deferred})
                 for attempt in deferred])
            applied.update(row["id"] for row in rows)
        return applied

    async def _record_events(self, connection: asyncpg.Connection, done: list[_Attempt]) -> None:
        columns: tuple[list, list, list, list, list] = ([], [], [], [], [])
        for attempt in done:
            outcome = attempt.outcome
            for status, pairs in (("delivered", outcome.delivered), ("deferred", outcome.deferred),
                                  ("bounced", outcome.failed)):
                for recipient, reply in pairs:
                    for column, value in zip(columns, (attempt.message.queue_id, recipient, status, str(reply),
                                                       outcome.relay)):
                        column.append(value)
        if columns[0]:
            await connection.execute(_EVENTS, *columns)

    async def _complete_messages(self, connection: asyncpg.Connection, done: list[_Attempt]) -> set[str]:
        queue_ids = sorted({attempt.message.queue_id for attempt in done if not attempt.outcome.deferred})
        return await complete_messages(connection, queue_ids)

    def _delay_notice_due(self, message: MessageInfo, outcome: Outcome) -> bool:
        if message.delay_notified or message.sender == "" or self.delay_notice_after <= 0:
            return False
        if not _to_notify(message, outcome.deferred, "DELAY"):
            return False
        age = (datetime.now(timezone.utc) - message.received_at).total_seconds()
        return age >= self.delay_notice_after

    async def _prepare_notification(self, message: MessageInfo, outcome: Outcome, body: MessageBody,
                                    delay_notice: bool) -> Prepared | None:
        failures = _to_notify(message, outcome.failed, "FAILURE")
        successes = _to_notify(message, outcome.delivered, "SUCCESS")
        if not failures and not successes and not delay_notice:
            return None
        if message.sender == "":
            # RFC 5321 section 6.1: never send a notification about a notification.
            log.info("%s: no notification for failed recipients, the sender is null", message.queue_id)
            return None

        request = message.dsn or {}
        delays = _to_notify(message, outcome.deferred, "DELAY") if delay_notice else []
        retry_until = message.received_at + timedelta(seconds=self.max_age)
        orcpts = {address: wish["orcpt"] for address, wish in request.get("recipients", {}).items() if wish["orcpt"]}

        def notification(original: bytes, full: bool) -> NewMessage:
            dsn = build_dsn(self.hostname, message.queue_id, message.sender, message.received_at,
                            failures, original, delays, retry_until, successes=successes,
                            success_action="delivered" if outcome.relay == "local" else "relayed",
                            envid=request.get("envid", ""), orcpts=orcpts, full=full)
            return NewMessage(sender="", recipients=[message.sender], body=dsn, origin="bounce",
                              session_id=message.queue_id)

        if request.get("ret") == "FULL":
            prepared = await self._prepare_full(message, body, notification)
            if prepared is not None:
                return prepared
        # Only the header section is returned, so a streamed body is not read again.
        return await self.spool.prepare(notification(body.header, False))

    async def _prepare_full(self, message: MessageInfo, body: MessageBody,
                            notification: Callable[[bytes, bool], NewMessage]) -> Prepared | None:
        """Prepare the notification with the whole message (RET=FULL), or return None when the body store fails.

        A streamed body is read again from the store here, after the remote
        replies came, and a large notification is written to the store. Those
        replies must still be recorded, so a store failure costs the
        notification only the message's body part, not the settlement.
        """
        try:
            return await self.spool.prepare(notification(await body.read(), True))
        except (BodyReadError, SpoolError) as error:
            log.warning("%s: queueing the RET=FULL notification failed, it is queued with the header section "
                        "only: %s", message.queue_id, error)
            return None
