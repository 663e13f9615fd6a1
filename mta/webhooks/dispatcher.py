"""Send the events in ``webhook_outbox`` to their endpoints, with retries.

Every node runs a dispatcher. It claims due rows with FOR UPDATE SKIP LOCKED,
so nodes never claim the same row at once, and pushes their due time forward
by the lease. It then POSTs each event. A 2xx reply marks the row delivered.
Any other reply, a redirect among them, and a timeout or connection error
count as failures: the row is retried after the endpoint's backoff, or marked
failed after max_attempts or max_age. A node that dies mid-POST leaves the row
to be sent again when the lease ends, so an event may arrive more than once.
Its Mta-Event-Id stays the same for every attempt.

NOTE: the dispatcher runs in the worker's event loop, beside SMTP. Under full
relay load it sent about 50 events/s (docs/BENCHMARKS.md), so events queue up
in the outbox until the load drops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import asyncpg

from mta import metrics
from mta.background import BackgroundTask
from mta.db import TRANSIENT_ERRORS
from mta.webhooks.settings import WebhookEndpoint, WebhooksConfig
from mta.webhooks.signature import sign

log = logging.getLogger("mta.webhooks")

# Seconds between deletions of delivered and failed rows older than retention_days.
PURGE_INTERVAL = 3600.0
# Octets of a failure reason kept in last_error.
ERROR_LENGTH = 200

_CLAIM = """
UPDATE webhook_outbox o
SET due_at = now() + make_interval(secs => $2), lease_owner = $1, attempts = o.attempts + 1
FROM (SELECT id FROM webhook_outbox WHERE state = 'pending' AND due_at <= now()
      ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) due
WHERE o.id = due.id
RETURNING o.id, o.event_id, o.endpoint, o.event, o.payload::text AS payload, o.attempts, o.created_at
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

_PURGE = "DELETE FROM webhook_outbox WHERE state <> 'pending' AND finished_at < now() - make_interval(days => $1)"


@dataclass(frozen=True)
class Result:
    """The outcome of one attempt, as written to its row."""

    row_id: int
    attempts: int
    # pending (retry after delay seconds), delivered or failed.
    state: str
    delay: float = 0.0
    error: str | None = None


class WebhookDispatcher(BackgroundTask):
    task_name = "webhook-dispatcher"

    def __init__(self, pool: asyncpg.Pool, settings: WebhooksConfig, secrets: dict[str, bytes], node_id: str):
        super().__init__()
        self.pool = pool
        self.settings = settings
        self.secrets = secrets
        self.node_id = node_id
        self._session: aiohttp.ClientSession | None = None

    async def _loop(self) -> None:
        next_purge = 0.0
        async with aiohttp.ClientSession() as session:
            self._session = session
            while True:
                claimed = 0
                try:
                    claimed = await self.dispatch_once()
                    if time.monotonic() >= next_purge:
                        await self._purge()
                        next_purge = time.monotonic() + PURGE_INTERVAL
                except TRANSIENT_ERRORS as error:
                    log.warning("webhook dispatch failed, trying again in %g s: %r",
                                self.settings.poll_interval, error)

                # A full batch suggests more are due, so look again at once.
                if claimed < self.settings.batch_size:
                    await asyncio.sleep(self.settings.poll_interval)

    async def dispatch_once(self) -> int:
        """Claim the due events, send them, record the results; return how many were claimed."""
        rows = await self.pool.fetch(_CLAIM, self.node_id, self.settings.lease_seconds, self.settings.batch_size)
        if not rows:
            return 0

        results = await asyncio.gather(*(self._attempt(row) for row in rows))
        await self.pool.execute(
            _FINISH, [result.row_id for result in results], [result.attempts for result in results],
            [result.state for result in results], [result.delay for result in results],
            [result.error for result in results], self.node_id)
        self._log_retries(rows, results)
        return len(rows)

    async def _attempt(self, row: asyncpg.Record) -> Result:
        endpoint = self.settings.endpoints.get(row["endpoint"])
        if endpoint is None:
            log.error("webhook event %s: endpoint %s is no longer configured, event dropped",
                      row["event_id"], row["endpoint"])
            metrics.WEBHOOK_ATTEMPTS.labels(result="failed").inc()
            return Result(row["id"], row["attempts"], "failed", error="endpoint no longer configured")

        error = await self._post(row, endpoint)
        if error is None:
            metrics.WEBHOOK_ATTEMPTS.labels(result="delivered").inc()
            return Result(row["id"], row["attempts"], "delivered")
        return self._after_failure(row, endpoint, error)

    def _after_failure(self, row: asyncpg.Record, endpoint: WebhookEndpoint, error: str) -> Result:
        age = (datetime.now(UTC) - row["created_at"]).total_seconds()
        attempts = row["attempts"]
        if attempts >= endpoint.max_attempts or age >= endpoint.max_age:
            log.error("webhook event %s (%s) to endpoint %s given up after %d attempts in %.0f s: %s",
                      row["event_id"], row["event"], row["endpoint"], attempts, age, error)
            metrics.WEBHOOK_ATTEMPTS.labels(result="failed").inc()
            return Result(row["id"], attempts, "failed", error=error)

        metrics.WEBHOOK_ATTEMPTS.labels(result="retried").inc()
        delay = endpoint.backoff[min(attempts - 1, len(endpoint.backoff) - 1)]
        return Result(row["id"], attempts, "pending", delay=delay, error=error)

    async def _post(self, row: asyncpg.Record, endpoint: WebhookEndpoint) -> str | None:
        """POST one event; return None on a 2xx reply, else why it failed."""
        assert self._session is not None
        body = row["payload"].encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Mta-Event-Id": str(row["event_id"]),
            "Mta-Event": row["event"],
            "Mta-Timestamp": str(timestamp),
            "Mta-Signature": sign(self.secrets[row["endpoint"]], timestamp, body),
        }
        try:
            async with self._session.post(endpoint.url, data=body, headers=headers, allow_redirects=False,
                                          timeout=aiohttp.ClientTimeout(total=endpoint.timeout)) as response:
                if 200 <= response.status < 300:
                    return None
                return f"HTTP status {response.status}"
        except asyncio.TimeoutError:
            return f"timed out after {endpoint.timeout:g} s"
        except aiohttp.ClientError as error:
            return f"request failed: {error}"[:ERROR_LENGTH]

    def _log_retries(self, rows: list[asyncpg.Record], results: list[Result]) -> None:
        """Log one line per endpoint and batch, so an endpoint that is down does not log once per event."""
        retried = Counter(row["endpoint"] for row, result in zip(rows, results) if result.state == "pending")
        for name, count in retried.items():
            reason = next(result.error for row, result in zip(rows, results)
                          if row["endpoint"] == name and result.state == "pending")
            log.warning("webhook endpoint %s: %d event(s) failed and will be retried, for example: %s",
                        name, count, reason)

    async def _purge(self) -> None:
        deleted = await self.pool.execute(_PURGE, self.settings.retention_days)
        count = int(deleted.split()[-1])
        if count:
            log.info("webhook events older than %d days deleted: %d", self.settings.retention_days, count)
