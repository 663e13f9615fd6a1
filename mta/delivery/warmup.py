"""Warm-up of new source addresses: a daily cap per destination site that grows on a schedule.

A declared source address listed in ``[delivery.warmup] addresses`` with the
day its ramp began may send, on day n of the ramp, ``schedule[n]`` messages
to each destination site (the site is the destination's MX set, so one
provider's domains share it). After the last step it is warm: no cap.
Counts live in PostgreSQL, shared by all nodes.

A message first takes a slot of a warming address of its pool. When every
warming address has reached today's cap, it goes from the pool's warm
addresses. With none of those, it is deferred. A throttling reply from a
site to a warming address pauses that address's ramp for the site, so the
ramp does not move on that day.

Each message costs two queries per listed address, so an address that has
finished its schedule should leave the list.
"""

from __future__ import annotations

import ipaddress
import logging
from datetime import date, datetime, timezone

import asyncpg

from mta.delivery.outcome import Reply
from mta.delivery.sources import SourcePool

log = logging.getLogger("mta.delivery")

_HELD = "SELECT count(*) FROM warmup_hold WHERE address = $1 AND site = $2"
_RESERVE = """
INSERT INTO warmup_count AS w (address, site, day, sent) VALUES ($1, $2, $3, 1)
ON CONFLICT (address, site, day) DO UPDATE SET sent = w.sent + 1 WHERE w.sent < $4
RETURNING sent
"""
_HOLD = "INSERT INTO warmup_hold (address, site, day) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"


class Warmup:
    def __init__(self, pool: asyncpg.Pool, schedule: list[int], starts: dict[str, str]):
        self.pool = pool
        self.schedule = list(schedule)
        self.starts = {address: date.fromisoformat(day) for address, day in starts.items()}

    def _today(self) -> date:
        return datetime.now(timezone.utc).date()

    def ramping(self, address: str | None) -> bool:
        """Return whether an address is listed for warm-up; its cap ends with its schedule."""
        return (address or "") in self.starts

    async def narrow(self, sources: SourcePool | None, site: str,
                     families: set[int] | frozenset[int] = frozenset((4, 6))) -> tuple[SourcePool | None, Reply | None]:
        """Return the addresses of the pool this message may leave from for the site, or a deferral.

        Only addresses of the IP families of the site's hosts (4, 6) count,
        so a slot is never taken on an address no connection can use.
        """
        if sources is None or not any(self.ramping(address) for address in sources.addresses):
            return sources, None

        warm = []
        usable = [address for address in sources.addresses if ipaddress.ip_address(address).version in families]
        for address in usable:
            cap = await self._cap(address, site) if self.ramping(address) else None
            if cap is None:
                warm.append(address)
            elif await self.pool.fetchval(_RESERVE, address, site, self._today(), cap) is not None:
                return SourcePool(sources.name, (address,)), None
        if warm:
            return SourcePool(sources.name, tuple(warm)), None
        return None, Reply(451, f"4.7.0 warm-up: every address of source pool {sources.name} has reached "
                                f"today's cap for site {site}")

    async def _cap(self, address: str, site: str) -> int | None:
        """Return today's cap of a warming address for a site, or None once its ramp is over."""
        paused_days = await self.pool.fetchval(_HELD, address, site)
        step = (self._today() - self.starts[address]).days - int(paused_days)
        if step >= len(self.schedule):
            return None
        return self.schedule[max(step, 0)]

    async def throttled(self, address: str | None, site: str) -> None:
        """Hold the ramp of a warming address for the site today, after a throttling reply."""
        if address is None or not self.ramping(address):
            return
        await self.pool.execute(_HOLD, address, site, self._today())
        log.info("warm-up of %s for site %s paused for today after a throttling reply", address, site)
