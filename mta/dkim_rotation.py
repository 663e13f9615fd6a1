"""The background side of DKIM rotation: activation and retirement on one node, key reloads on every worker.

DkimActivator runs on worker 0 of each node, and one node at a time does
the work, whichever takes a session advisory lock. Every
``domains.dkim_check_interval`` seconds it queries ``[delivery] nameservers``
for the record of each pending key and activates a key once they return
it exactly, then retires the retiring keys whose grace period has ended.
No transaction stays open during DNS queries. Every node also checks the
records of the active keys and exports how many are missing
(``mta_dkim_records_missing``), because receivers fail a signature whose
key they cannot fetch.

DkimKeyReloader runs on every worker. Every ``domains.dkim_reload_interval``
seconds it compares the active selectors in the database with the ones it
signs with, and on a change loads the active keys into the signer. A key
activated on another node therefore signs here within one interval.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from mta import metrics
from mta.background import BackgroundTask
from mta.config import Config
from mta.db import TRANSIENT_ERRORS
from mta.dkim import DkimKey, DkimSigner
from mta.dkim_lifecycle import MTA_ACTOR, activate_key, record_served
from mta.dkim_store import ACTIVE, PENDING, DkimKeyError, active_selectors, list_keys, load_active_keys, retire_expired
from mta.cli_support import audit
from mta.dns_check import NameserverError, make_resolver
from mta.storage.crypto import DecryptionError
from mta.storage.master_key import MasterKeys

log = logging.getLogger("mta.dkim")

ACTIVATOR_LOCK_ID = 0x6D74726F74
# Seconds each DNS query of the activator may take.
DNS_TIMEOUT = 5.0


class DkimActivator(BackgroundTask):
    """Activate pending keys that DNS serves and retire keys past their grace period, every check interval."""

    task_name = "dkim-activator"

    def __init__(self, pool: asyncpg.Pool, config: Config):
        super().__init__()
        self.pool = pool
        self.settings = config.domains
        self.resolver = make_resolver(config.delivery.nameservers, config.delivery.dns_port, DNS_TIMEOUT)

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except TRANSIENT_ERRORS as error:
                log.warning("DKIM key check failed, trying again in %.0f s: %r", self.settings.dkim_check_interval,
                            error)
            except Exception:
                # The worker stops when a watched task ends, so a bug here must not end the loop.
                log.exception("DKIM key check failed unexpectedly, trying again in %.0f s",
                              self.settings.dkim_check_interval)
            await asyncio.sleep(self.settings.dkim_check_interval)

    async def run_once(self) -> None:
        async with self.pool.acquire(timeout=30) as connection:
            await self._count_missing(connection)
            if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", ACTIVATOR_LOCK_ID):
                return
            try:
                await self._activate_served(connection)
                await self._retire_expired(connection)
            finally:
                await connection.execute("SELECT pg_advisory_unlock($1)", ACTIVATOR_LOCK_ID)

    async def _activate_served(self, connection: asyncpg.Connection) -> None:
        for key in [key for key in await list_keys(connection) if key.state == PENDING]:
            try:
                served = await asyncio.to_thread(record_served, self.resolver, key.domain, key.public)
            except NameserverError as error:
                log.warning("DKIM key %s of %s stays pending: %s", key.selector, key.domain, error)
                continue
            if not served:
                log.debug("DKIM key %s of %s stays pending: DNS does not return its record yet",
                          key.selector, key.domain)
                continue

            try:
                async with connection.transaction():
                    await activate_key(connection, key.domain, key.selector, self.settings.dkim_retire_grace,
                                       MTA_ACTOR)
            except DkimKeyError as error:
                # An operator activated it or another key meanwhile.
                log.info("DKIM key %s of %s not activated: %s", key.selector, key.domain, error)

    async def _count_missing(self, connection: asyncpg.Connection) -> None:
        missing = []
        for key in [key for key in await list_keys(connection) if key.state == ACTIVE]:
            try:
                served = await asyncio.to_thread(record_served, self.resolver, key.domain, key.public)
            except NameserverError as error:
                # Without a DNS response the count stays as it was, and one log line per round is enough.
                log.warning("DKIM record check of active keys skipped: %s", error)
                metrics.DKIM_RECORD_CHECK_FAILED.set(1)
                return
            if not served:
                missing.append(f"{key.selector}._domainkey.{key.domain}")

        metrics.DKIM_RECORDS_MISSING.set(len(missing))
        metrics.DKIM_RECORD_CHECK_FAILED.set(0)
        if missing:
            log.warning("DNS does not return the DKIM record of %d active key(s), so receivers fail their "
                        "signatures: %s (mta dns records prints the records)", len(missing), ", ".join(missing))

    async def _retire_expired(self, connection: asyncpg.Connection) -> None:
        async with connection.transaction():
            retired = await retire_expired(connection)
            for key in retired:
                await audit(connection, MTA_ACTOR, "dkim.retire", {"domain": key.domain, "selector": key.selector,
                                                                   "algorithm": key.algorithm})
        for key in retired:
            log.info("DKIM key %s of %s (%s) retired after its grace period: remove its TXT record %s._domainkey.%s",
                     key.selector, key.domain, key.algorithm, key.selector, key.domain)


class DkimKeyReloader(BackgroundTask):
    """Load the active keys into the signer whenever the active selectors in the database change."""

    task_name = "dkim-reloader"

    def __init__(self, pool: asyncpg.Pool, masters: MasterKeys, signer: DkimSigner, interval: float,
                 initial: list[DkimKey]):
        super().__init__()
        self.pool = pool
        self.masters = masters
        self.signer = signer
        self.interval = interval
        self._selectors = {(key.domain, key.selector) for key in initial}

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.reload()
            except TRANSIENT_ERRORS as error:
                log.warning("DKIM key reload failed, signing with the keys loaded before: %r", error)
            except (DecryptionError, ValueError) as error:
                log.error("DKIM key reload failed, signing with the keys loaded before: %s", error)
            except Exception:
                # The worker stops when a watched task ends, so a bug here must not end the loop.
                log.exception("DKIM key reload failed unexpectedly, signing with the keys loaded before")

    async def reload(self) -> None:
        async with self.pool.acquire(timeout=30) as connection:
            if set(await active_selectors(connection)) == self._selectors:
                return
            keys = await load_active_keys(connection, self.masters)

        self.signer.replace_keys(keys)
        self._selectors = {(key.domain, key.selector) for key in keys}
        log.info("DKIM signing keys reloaded: %s",
                 ", ".join(f"{domain}/{selector}" for domain, selector in sorted(self._selectors)))
