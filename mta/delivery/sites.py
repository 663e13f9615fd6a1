"""Destination sites: concurrency windows, rate limits and dead-site detection.

A site is the set of hosts that receive a domain's mail: its MX hosts, or
its static route. Domains hosted by one provider share one site.

- Each node keeps a concurrency window per site, as Postfix does: it starts
  at ``initial_concurrency`` parallel deliveries, widens by 1/window with
  each delivery that connected and narrows by 1 with each failed connection,
  between 1 and the node's share of the site's ``max_concurrency``. The
  share is the cap divided by the nodes whose heartbeat is recent, so all
  nodes together stay within the cap. With more nodes than the cap, each
  node still takes 1. A delivery that finds the
  window full gives its place among the node's ``concurrency`` back while it
  waits, so other sites are served meanwhile, and claims leave that site's
  rows to other nodes.
- A site with ``rate_per_second`` or ``rate_per_hour`` (overrides per
  destination domain) gets its messages spaced evenly over all nodes, by
  GCRA without burst. Each delivery moves the site's theoretical arrival
  time in PostgreSQL one interval on, and waits while it lies ahead.
- When a node fails to connect to any host of a site ``dead_after_failures``
  times in a row, it suspends the site for ``suspend_seconds`` with one
  update of the shared ``site`` row. Every node then defers that site's
  deliveries without connecting: claims skip rows whose site is suspended,
  and first attempts check a copy of the suspensions that each node reads
  every few seconds. The failure run itself is counted per node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

import asyncpg

from mta import metrics
from mta.config import SiteLimits, SitesConfig
from mta.db import TRANSIENT_ERRORS
from mta.delivery.outcome import Outcome, Reply
from mta.delivery.resolve import Target
from mta.spool.scheduler import Slot

log = logging.getLogger("mta.delivery")

# Seconds between two reads of the suspended sites.
REFRESH_INTERVAL = 2.0
# A delivery waits at most this long for its site's rate limit. Beyond it,
# the delivery is deferred and retried by the schedule.
MAX_RATE_WAIT = 10.0

_TAKE_RATE = """
INSERT INTO site (key, second_tat, hour_tat, updated_at)
VALUES ($1, now() + make_interval(secs => $2), now() + make_interval(secs => $3), now())
ON CONFLICT (key) DO UPDATE
SET second_tat = now() + make_interval(secs => $2), hour_tat = now() + make_interval(secs => $3), updated_at = now()
WHERE coalesce(site.second_tat, now()) <= now() AND coalesce(site.hour_tat, now()) <= now()
RETURNING key
"""

_RATE_WAIT = """
SELECT extract(epoch FROM greatest(coalesce(second_tat, now()), coalesce(hour_tat, now())) - now()) AS wait
FROM site WHERE key = $1
"""

_SUSPEND = """
INSERT INTO site (key, suspended_until, last_reply, suspend_reason, updated_at)
VALUES ($1, now() + make_interval(secs => $2), $3, $4, now())
ON CONFLICT (key) DO UPDATE
SET suspended_until = EXCLUDED.suspended_until, last_reply = EXCLUDED.last_reply,
    suspend_reason = EXCLUDED.suspend_reason, updated_at = now()
"""

_SUSPENDED = """
SELECT key, extract(epoch FROM suspended_until - now()) AS remaining, coalesce(suspend_reason, '') AS reason
FROM site WHERE suspended_until > now()
"""

# A node whose heartbeat is older than three intervals no longer counts in the shares.
_LIVE_NODES = "SELECT count(*) FROM node WHERE seen_at > now() - interval '30 seconds'"


def site_key(targets: list[Target]) -> str:
    """Name the site of a destination by its hosts and ports, in a stable order."""
    return ",".join(sorted({f"{target.host.lower().rstrip('.')}:{target.port}" for target in targets}))


class SiteWindow:
    """The parallel deliveries one node allows a site, with the deliveries waiting for room."""

    def __init__(self, initial: int, cap: int):
        self.cap = cap
        self.limit = float(min(initial, cap))
        self.active = 0
        self._waiters: deque[asyncio.Future] = deque()

    def set_cap(self, cap: int) -> None:
        """Set the max parallel deliveries. Deliveries already running over a lower cap finish."""
        self.cap = cap
        self.limit = min(self.limit, float(cap))
        self._wake()

    @property
    def busy(self) -> bool:
        return bool(self._waiters)

    async def acquire(self, slot: Slot) -> None:
        """Take room in the window, giving the node's place back while waiting for it."""
        if self.active < int(self.limit) and not self._waiters:
            self.active += 1
            return
        slot.give_back()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The room was handed over just before the cancellation: pass it on.
                self.release()
            else:
                self._waiters.remove(waiter)
            raise
        finally:
            slot.waited()

    def release(self) -> None:
        self.active -= 1
        self._wake()

    def succeeded(self) -> None:
        self.limit = min(float(self.cap), self.limit + 1 / self.limit)
        self._wake()

    def failed(self) -> None:
        self.limit = max(1.0, self.limit - 1)

    def _wake(self) -> None:
        while self._waiters and self.active < int(self.limit):
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.active += 1
                waiter.set_result(None)


class Sites:
    def __init__(self, pool: asyncpg.Pool, config: SitesConfig):
        self.pool = pool
        self.config = config
        self._overrides = {domain.lower().rstrip("."): limits for domain, limits in config.overrides.items()}
        self._default_limits = SiteLimits(max_concurrency=config.max_concurrency)
        self._windows: dict[str, tuple[SiteWindow, SiteLimits]] = {}
        self._live_nodes = 1
        # Site key -> (time.monotonic() when its suspension ends, why).
        self._suspended: dict[str, tuple[float, str]] = {}
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

    def limits(self, domain: str) -> SiteLimits:
        """Return the limits for the site of domain: its override, or the defaults."""
        return self._overrides.get(domain.lower().rstrip("."), self._default_limits)

    def window(self, key: str, limits: SiteLimits) -> SiteWindow:
        entry = self._windows.get(key)
        if entry is None:
            window = SiteWindow(self.config.initial_concurrency, self._share(limits))
            entry = self._windows[key] = (window, limits)
        return entry[0]

    def busy_keys(self) -> list[str]:
        """Return the sites with deliveries waiting for room in their window."""
        return [key for key, (window, _) in self._windows.items() if window.busy]

    def _share(self, limits: SiteLimits) -> int:
        return max(1, limits.max_concurrency // self._live_nodes)

    def _set_live_nodes(self, count: int) -> None:
        count = max(1, count)
        if count == self._live_nodes:
            return
        self._live_nodes = count
        log.info("%d live node(s): each takes 1/%d of every site's max_concurrency", count, count)
        for window, limits in self._windows.values():
            window.set_cap(self._share(limits))

    async def take_rate(self, key: str, limits: SiteLimits) -> Reply | None:
        """Wait for the site's rate limit; return a deferral when the wait would be too long."""
        if limits.rate_per_second <= 0 and limits.rate_per_hour <= 0:
            return None
        second = 1 / limits.rate_per_second if limits.rate_per_second > 0 else 0.0
        hour = 3600 / limits.rate_per_hour if limits.rate_per_hour > 0 else 0.0
        deadline = time.monotonic() + MAX_RATE_WAIT
        while True:
            if await self.pool.fetchval(_TAKE_RATE, key, second, hour) is not None:
                return None
            wait = float(await self.pool.fetchval(_RATE_WAIT, key) or 0.0)
            if time.monotonic() + wait > deadline:
                return Reply(451, f"4.7.0 rate limit of site {key} reached, next message in {wait:.0f} s")
            await asyncio.sleep(max(wait, 0.001))

    def suspended_reply(self, key: str) -> Reply | None:
        """Return the deferral for a suspended site, or None when the site may be tried."""
        until, reason = self._suspended.get(key, (0.0, ""))
        remaining = until - time.monotonic()
        if remaining <= 0:
            return None
        return Reply(451, f"4.4.1 site {key} suspended for {remaining:.0f} s more after {reason}")

    async def record(self, key: str, outcome: Outcome) -> None:
        """Count a failed connection to the site, or clear the count after a connection."""
        window = self._windows.get(key, (None, None))[0]
        if not outcome.connection_failed:
            self._failures.pop(key, None)
            if window is not None:
                window.succeeded()
            return

        if window is not None:
            window.failed()

        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        if failures < self.config.dead_after_failures:
            return
        self._failures.pop(key, None)
        last_reply = str(outcome.deferred[0][1]) if outcome.deferred else ""
        await self._suspend(key, self.config.suspend_seconds, f"{failures} failed connections in a row", last_reply)

    async def throttled(self, key: str, reply: Reply) -> None:
        """Slow a site down after a receiver's throttling reply: narrow the window and pause the site."""
        window = self._windows.get(key, (None, None))[0]
        if window is not None:
            window.failed()
        if self.config.throttle_pause_seconds > 0:
            await self._suspend(key, self.config.throttle_pause_seconds, "throttling by the receiver", str(reply))

    async def _suspend(self, key: str, seconds: float, reason: str, last_reply: str) -> None:
        """Suspend a site here at once and for every node through its shared row."""
        self._suspended[key] = (time.monotonic() + seconds, reason)
        log.warning("site %s suspended for %.0f s after %s: %s", key, seconds, reason, last_reply)
        try:
            await self.pool.execute(_SUSPEND, key, seconds, last_reply, reason)
        except TRANSIENT_ERRORS as error:
            # This node still skips the site; the others find out from their own attempts.
            log.warning("site %s: failed to record the suspension: %r", key, error)

    async def _refresh_loop(self) -> None:
        while True:
            try:
                rows = await self.pool.fetch(_SUSPENDED)
                live_nodes = await self.pool.fetchval(_LIVE_NODES)
            except TRANSIENT_ERRORS as error:
                log.warning("reading suspended sites failed: %r", error)
            else:
                now = time.monotonic()
                self._suspended = {row["key"]: (now + float(row["remaining"]), row["reason"] or "failures")
                                   for row in rows}
                self._set_live_nodes(live_nodes)
                metrics.SITES_SUSPENDED.set(len(rows))
                metrics.SITES_WAITING.set(len(self.busy_keys()))
            await asyncio.sleep(REFRESH_INTERVAL)
