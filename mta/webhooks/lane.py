"""One endpoint's share of the webhook dispatcher: claim its due events, POST them, record the outcomes.

A claim is one UPDATE over rows picked with FOR UPDATE SKIP LOCKED, which
pushes their due time forward by the lease. So nodes never claim the same
row at once, and the rows of a node that dies mid-POST are due again when
the lease ends. The POSTs of a batch run up to ``concurrency`` at a time. A 2xx
reply marks the row delivered. Any other reply, a redirect among them, and a
timeout or connection error count as failures: the row is retried after the
endpoint's backoff, or marked failed after max_attempts or max_age. The
outcomes of a batch are written in one UPDATE that applies only while this
node still holds the lease of that attempt, so an attempt whose lease was
taken over cannot settle the row a second time. An event may still arrive
twice when its node dies after the POST and before the UPDATE; its
Mta-Event-Id stays the same for every attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import asyncpg

from mta import metrics
from mta.db import TRANSIENT_ERRORS
from mta.webhooks.settings import WebhookEndpoint, WebhooksConfig
from mta.webhooks.signature import sign

log = logging.getLogger("mta.webhooks")

# Octets of a failure reason kept in last_error.
ERROR_LENGTH = 200

_CLAIM = """
UPDATE webhook_outbox o
SET due_at = now() + make_interval(secs => $2), lease_owner = $1, attempts = o.attempts + 1
FROM (SELECT id FROM webhook_outbox WHERE endpoint = $4 AND state = 'pending' AND due_at <= now()
      ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) due
WHERE o.id = due.id
RETURNING o.id, o.event_id, o.event, o.payload::text AS payload, o.attempts, o.created_at
"""

# Applied only while this node still holds the lease of that attempt.
_FINISH = """
UPDATE webhook_outbox o
SET state = f.state, last_error = f.error, lease_owner = NULL,
    due_at = CASE WHEN f.state = 'pending' THEN now() + make_interval(secs => f.delay) ELSE o.due_at END,
    finished_at = CASE WHEN f.state = 'pending' THEN NULL ELSE now() END
FROM unnest($1::bigint[], $2::int[], $3::text[], $4::float8[], $5::text[]) AS f (id, attempts, state, delay, error)
WHERE o.id = f.id AND o.attempts = f.attempts AND o.lease_owner = $6
"""


@dataclass(frozen=True)
class Result:
    """The outcome of one attempt, as written to its row."""

    row_id: int
    attempts: int
    # pending (retry after delay seconds), delivered or failed.
    state: str
    delay: float = 0.0
    error: str | None = None


def claim_limit(endpoint: WebhookEndpoint, settings: WebhooksConfig) -> int:
    """Return how many events of the endpoint one claim may take.

    A batch is sent in rounds of ``concurrency`` POSTs, each of which may
    take the whole timeout. The limit keeps the last round ending one timeout
    before the lease does, so no other node claims an event still in flight.
    """
    rounds = max(1, int(settings.lease_seconds // endpoint.timeout) - 1)
    return min(settings.batch_size, endpoint.concurrency * rounds)


class EndpointLane:
    """Sends one endpoint's events, batch after batch while they are due, then waits for ``wake`` or the poll."""

    def __init__(self, name: str, endpoint: WebhookEndpoint, secret: bytes, settings: WebhooksConfig,
                 node_id: str, pool: asyncpg.Pool, session: aiohttp.ClientSession):
        self.name = name
        self.endpoint = endpoint
        self.secret = secret
        self.settings = settings
        self.node_id = node_id
        self.pool = pool
        self.session = session
        self.limit = claim_limit(endpoint, settings)
        # Set by a NOTIFY: events were inserted, perhaps for this endpoint.
        self.wake = asyncio.Event()
        self._slots = asyncio.Semaphore(endpoint.concurrency)

    async def run(self) -> None:
        while True:
            # Cleared before the claim, so a NOTIFY that arrives while the batch is sent is not missed.
            self.wake.clear()
            try:
                claimed = await self.dispatch_once()
            except TRANSIENT_ERRORS as error:
                log.warning("webhook endpoint %s: dispatch failed, trying again in %g s: %r",
                            self.name, self.settings.poll_interval, error)
                await asyncio.sleep(self.settings.poll_interval)
                continue

            # A full batch suggests more are due, so look again at once.
            if claimed < self.limit:
                try:
                    await asyncio.wait_for(self.wake.wait(), self.settings.poll_interval)
                except asyncio.TimeoutError:
                    pass

    async def dispatch_once(self) -> int:
        """Claim the due events, send them, record the outcomes; return how many were claimed."""
        rows = await self.pool.fetch(_CLAIM, self.node_id, self.settings.lease_seconds, self.limit, self.name)
        if not rows:
            return 0

        results = await asyncio.gather(*(self._attempt(row) for row in rows))
        await self.pool.execute(
            _FINISH, [result.row_id for result in results], [result.attempts for result in results],
            [result.state for result in results], [result.delay for result in results],
            [result.error for result in results], self.node_id)
        self._log_retries(results)
        return len(rows)

    async def _attempt(self, row: asyncpg.Record) -> Result:
        async with self._slots:
            error = await self._post(row)
        if error is None:
            metrics.WEBHOOK_ATTEMPTS.labels(result="delivered").inc()
            return Result(row["id"], row["attempts"], "delivered")
        return self._after_failure(row, error)

    def _after_failure(self, row: asyncpg.Record, error: str) -> Result:
        age = (datetime.now(UTC) - row["created_at"]).total_seconds()
        attempts = row["attempts"]
        if attempts >= self.endpoint.max_attempts or age >= self.endpoint.max_age:
            log.error("webhook event %s (%s) to endpoint %s given up after %d attempts in %.0f s: %s",
                      row["event_id"], row["event"], self.name, attempts, age, error)
            metrics.WEBHOOK_ATTEMPTS.labels(result="failed").inc()
            return Result(row["id"], attempts, "failed", error=error)

        metrics.WEBHOOK_ATTEMPTS.labels(result="retried").inc()
        backoff = self.endpoint.backoff
        delay = backoff[min(attempts - 1, len(backoff) - 1)]
        return Result(row["id"], attempts, "pending", delay=delay, error=error)

    async def _post(self, row: asyncpg.Record) -> str | None:
        """POST one event; return None on a 2xx reply, else why it failed."""
        body = row["payload"].encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Mta-Event-Id": str(row["event_id"]),
            "Mta-Event": row["event"],
            "Mta-Timestamp": str(timestamp),
            "Mta-Signature": sign(self.secret, timestamp, body),
        }
        timeout = self.endpoint.timeout
        try:
            async with self.session.post(self.endpoint.url, data=body, headers=headers, allow_redirects=False,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                if 200 <= response.status < 300:
                    return None
                return f"HTTP status {response.status}"
        except asyncio.TimeoutError:
            return f"timed out after {timeout:g} s"
        except aiohttp.ClientError as error:
            return f"request failed: {error}"[:ERROR_LENGTH]

    def _log_retries(self, results: list[Result]) -> None:
        """Log one line per batch, so an endpoint that is down does not log once per event."""
        retried = [result for result in results if result.state == "pending"]
        if retried:
            log.warning("webhook endpoint %s: %d event(s) failed and will be retried, for example: %s",
                        self.name, len(retried), retried[0].error)
