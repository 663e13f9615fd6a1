"""Send the events in ``webhook_outbox`` to their endpoints, with retries.

Every node (worker process) runs a dispatcher with one lane per configured
endpoint (mta.webhooks.lane), so an endpoint that is slow or down holds up
only its own events. The lanes share one aiohttp client, which keeps its
connections alive between POSTs, and a small pool of database connections
with synchronous_commit off. That is safe because a claim or an outcome lost
in a database crash only makes an event be sent again, which the
at-least-once contract allows, and it spares the WAL flushes that accepts
wait for.

New events wake the lanes at once: a trigger on webhook_outbox sends a NOTIFY
on NOTIFY_CHANNEL when rows are inserted (queue/0028_webhook_notify_and_complaints.sql).
Retries that fall due later, and events inserted while the LISTEN connection
was down, are found by a poll every poll_interval seconds.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import asyncpg

from mta.background import BackgroundTask
from mta.db import TRANSIENT_ERRORS
from mta.listen import listen_forever
from mta.webhooks.lane import EndpointLane
from mta.webhooks.settings import WebhooksConfig

log = logging.getLogger("mta.webhooks")

NOTIFY_CHANNEL = "mta_webhook"
# Seconds between deletions of delivered and failed rows older than retention_days.
PURGE_INTERVAL = 3600.0

_PURGE = "DELETE FROM webhook_outbox WHERE state <> 'pending' AND finished_at < now() - make_interval(days => $1)"

# Due rows only: a row leased by a node with another configuration is left to that node.
# Only rows older than UNCONFIGURED_GRACE, because during a rolling change of
# the configuration a node not yet updated finds the new endpoint's fresh rows.
UNCONFIGURED_GRACE = 24 * 3600.0
_FAIL_UNCONFIGURED = """
UPDATE webhook_outbox SET state = 'failed', last_error = 'endpoint no longer configured', finished_at = now()
WHERE state = 'pending' AND due_at <= now() AND endpoint <> ALL($1::text[])
  AND created_at < now() - make_interval(secs => $2)
"""


class WebhookDispatcher(BackgroundTask):
    task_name = "webhook-dispatcher"

    def __init__(self, url: str, settings: WebhooksConfig, secrets: dict[str, bytes], node_id: str):
        super().__init__()
        self.url = url
        self.settings = settings
        self.secrets = secrets
        self.node_id = node_id

    async def _loop(self) -> None:
        pool = await self._connect()
        try:
            # No limit in the connector: each lane's concurrency bounds its own connections.
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                lanes = [EndpointLane(name, endpoint, self.secrets[name], self.settings, self.node_id, pool, session)
                         for name, endpoint in self.settings.endpoints.items()]
                await self._run(pool, lanes)
        finally:
            await pool.close()

    async def _connect(self) -> asyncpg.Pool:
        while True:
            try:
                return await asyncpg.create_pool(
                    self.url, min_size=1, max_size=len(self.settings.endpoints) + 1,
                    server_settings={"synchronous_commit": "off", "application_name": "mta-webhooks"})
            except TRANSIENT_ERRORS as error:
                log.warning("webhook dispatcher cannot connect to the database, trying again in %g s: %r",
                            self.settings.poll_interval, error)
                await asyncio.sleep(self.settings.poll_interval)

    async def _run(self, pool: asyncpg.Pool, lanes: list[EndpointLane]) -> None:
        def wake_all() -> None:
            for lane in lanes:
                lane.wake.set()

        async with asyncio.TaskGroup() as group:
            group.create_task(listen_forever(self.url, NOTIFY_CHANNEL, wake_all, self.settings.poll_interval),
                              name="webhook-listen")
            group.create_task(self._housekeeping(pool), name="webhook-housekeeping")
            for lane in lanes:
                group.create_task(lane.run(), name=f"webhook-{lane.name}")

    async def _housekeeping(self, pool: asyncpg.Pool) -> None:
        while True:
            try:
                await self._fail_unconfigured(pool)
                await self._purge(pool)
            except TRANSIENT_ERRORS as error:
                log.warning("webhook outbox housekeeping failed, trying again in %g s: %r", PURGE_INTERVAL, error)
            await asyncio.sleep(PURGE_INTERVAL)

    async def _fail_unconfigured(self, pool: asyncpg.Pool) -> None:
        status = await pool.execute(_FAIL_UNCONFIGURED, list(self.settings.endpoints), UNCONFIGURED_GRACE)
        count = int(status.split()[-1])
        if count:
            log.error("webhook events of endpoints no longer configured marked failed: %d", count)

    async def _purge(self, pool: asyncpg.Pool) -> None:
        deleted = await pool.execute(_PURGE, self.settings.retention_days)
        count = int(deleted.split()[-1])
        if count:
            log.info("webhook events older than %d days deleted: %d", self.settings.retention_days, count)
