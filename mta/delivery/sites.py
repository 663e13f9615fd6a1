"""Destination sites: dead-site detection shared by all nodes.

A site is the set of hosts that receive a domain's mail: its MX hosts, or
its static route. Domains hosted by one provider share one site. When a
node fails to connect to any host of a site ``dead_after_failures`` times in
a row, it suspends the site for ``suspend_seconds`` with one update of the
shared ``site`` row. Every node then defers that site's deliveries without
connecting: claims skip rows whose site is suspended, and first attempts
check a copy of the suspensions that each node reads every few seconds.
The failure run itself is counted per node.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from mta.config import SitesConfig
from mta.db import TRANSIENT_ERRORS
from mta.delivery.outcome import Outcome, Reply
from mta.delivery.resolve import Target

log = logging.getLogger("mta.delivery")

# Seconds between two reads of the suspended sites.
REFRESH_INTERVAL = 2.0

_SUSPEND = """
INSERT INTO site (key, suspended_until, last_reply, updated_at)
VALUES ($1, now() + make_interval(secs => $2), $3, now())
ON CONFLICT (key) DO UPDATE
SET suspended_until = EXCLUDED.suspended_until, last_reply = EXCLUDED.last_reply, updated_at = now()
"""

_SUSPENDED = "SELECT key, extract(epoch FROM suspended_until - now()) AS remaining FROM site WHERE suspended_until > now()"


def site_key(targets: list[Target]) -> str:
    """Name the site of a destination by its hosts and ports, in a stable order."""
    return ",".join(sorted({f"{target.host.lower().rstrip('.')}:{target.port}" for target in targets}))


class Sites:
    def __init__(self, pool: asyncpg.Pool, config: SitesConfig):
        self.pool = pool
        self.config = config
        # Site key -> time.monotonic() when its suspension ends.
        self._suspended: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._refresher: asyncio.Task | None = None

    def start(self) -> None:
        self._refresher = asyncio.create_task(self._refresh_loop(), name="sites-refresh")

    @property
    def tasks(self) -> list[asyncio.Task]:
        return [self._refresher] if self._refresher is not None else []

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)

    def suspended_reply(self, key: str) -> Reply | None:
        """Return the deferral for a suspended site, or None when the site may be tried."""
        remaining = self._suspended.get(key, 0.0) - time.monotonic()
        if remaining <= 0:
            return None
        return Reply(451, f"4.4.1 site {key} suspended for {remaining:.0f} s more after "
                          f"{self.config.dead_after_failures} failed connections in a row")

    async def record(self, key: str, outcome: Outcome) -> None:
        """Count a failed connection to the site, or clear the count after a connection."""
        if not outcome.connection_failed:
            self._failures.pop(key, None)
            return

        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        if failures < self.config.dead_after_failures:
            return
        self._failures.pop(key, None)
        last_reply = str(outcome.deferred[0][1]) if outcome.deferred else ""
        self._suspended[key] = time.monotonic() + self.config.suspend_seconds
        log.warning("site %s suspended for %.0f s after %d failed connections in a row: %s", key,
                    self.config.suspend_seconds, failures, last_reply)
        try:
            await self.pool.execute(_SUSPEND, key, self.config.suspend_seconds, last_reply)
        except TRANSIENT_ERRORS as error:
            # This node still skips the site; the others find out from their own failures.
            log.warning("site %s: failed to record the suspension: %r", key, error)

    async def _refresh_loop(self) -> None:
        while True:
            try:
                rows = await self.pool.fetch(_SUSPENDED)
            except TRANSIENT_ERRORS as error:
                log.warning("reading suspended sites failed: %r", error)
            else:
                now = time.monotonic()
                self._suspended = {row["key"]: now + float(row["remaining"]) for row in rows}
            await asyncio.sleep(REFRESH_INTERVAL)
