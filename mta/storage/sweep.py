"""Removal of orphaned objects from the body store.

An object is orphaned when no row needs it: no queued message (``message``
not yet completed), no mailbox delivery of its message (``mailbox_message``)
and no mailbox attachment (``mailbox_attachment.object_key``, where that
table exists) names its key. Orphans are left by a body write whose
envelope never committed and whose cleanup failed, and by a completed
message whose body delete failed or was cut short by a crash. The sweep
also removes unfinished writes of the same age: multipart uploads that were
never completed nor aborted, and temporary files of the local store.

Only objects older than a minimum age are considered, because a body is
written before its envelope commits. Between the two, a session waits for
the group commit (at most 10 s for a pool connection, then the
transaction), and the settle writer waits at most 30 s for a connection
before committing a notification. The transactions themselves have no time
limit, so the gap is seconds in practice but not strictly bounded. The
24-hour default leaves a wide margin over it, and over clock skew between
this host and the store.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from mta.background import BackgroundTask
from mta.db import TRANSIENT_ERRORS
from mta.storage.store import BodyStore, StoreError

log = logging.getLogger("mta.storage")

DEFAULT_MIN_AGE = 24 * 3600.0
# Any constant works: it only has to be the same on every node.
SWEEP_LOCK_ID = 0x6D7473776570
# Keys checked against the database in one query.
PAGE_SIZE = 1000

_REFERENCED_BODIES = """
SELECT m.body_key FROM message m
WHERE m.body_key = ANY($1::text[])
  AND (m.completed_at IS NULL OR EXISTS (SELECT 1 FROM mailbox_message b WHERE b.message_id = m.id))
"""

# The mailbox attachment table comes with a later migration, so its presence is checked at run time.
_HAS_ATTACHMENTS = """
SELECT EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = 'mailbox_attachment'
                 AND column_name = 'object_key')
"""

_REFERENCED_ATTACHMENTS = "SELECT object_key FROM mailbox_attachment WHERE object_key = ANY($1::text[])"


class SweepBusy(Exception):
    """Another node or command is sweeping the body store."""


@dataclass
class SweepResult:
    """Counts of one sweep, of objects."""

    listed: int = 0
    # Younger than the minimum age, so not considered.
    recent: int = 0
    referenced: int = 0
    orphaned: int = 0
    deleted: int = 0
    failed: int = 0
    # Unfinished writes (multipart uploads, temporary files) older than the minimum age.
    abandoned: int = 0


async def referenced_keys(connection: asyncpg.Connection, keys: list[str], attachments: bool) -> set[str]:
    """Return the keys among ``keys`` that a row still needs."""
    found = {row[0] for row in await connection.fetch(_REFERENCED_BODIES, keys)}
    if attachments:
        found.update(row[0] for row in await connection.fetch(_REFERENCED_ATTACHMENTS, keys))
    return found


async def sweep(connection: asyncpg.Connection, store: BodyStore, min_age: float, dry_run: bool = False,
                now: datetime | None = None) -> SweepResult:
    """Delete the orphaned objects older than min_age seconds, or only count them with dry_run.

    Raises SweepBusy when another sweep holds the lock, and StoreError when listing fails.
    """
    if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", SWEEP_LOCK_ID):
        raise SweepBusy("another node or command is sweeping the body store")
    try:
        return await _sweep_locked(connection, store, min_age, dry_run, now or datetime.now(UTC))
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", SWEEP_LOCK_ID)


async def _sweep_locked(connection: asyncpg.Connection, store: BodyStore, min_age: float, dry_run: bool,
                        now: datetime) -> SweepResult:
    result = SweepResult()
    attachments = await connection.fetchval(_HAS_ATTACHMENTS)
    oldest_fresh = now - timedelta(seconds=min_age)
    page: list[str] = []
    async for stored in store.list_objects():
        result.listed += 1
        if stored.modified > oldest_fresh:
            result.recent += 1
            continue
        page.append(stored.key)
        if len(page) >= PAGE_SIZE:
            await _sweep_page(connection, store, page, attachments, dry_run, result)
            page = []
    if page:
        await _sweep_page(connection, store, page, attachments, dry_run, result)

    result.abandoned = await store.remove_abandoned_writes(oldest_fresh, dry_run)
    return result


async def _sweep_page(connection: asyncpg.Connection, store: BodyStore, keys: list[str], attachments: bool,
                      dry_run: bool, result: SweepResult) -> None:
    referenced = await referenced_keys(connection, keys, attachments)
    result.referenced += len(referenced)
    orphans = [key for key in keys if key not in referenced]
    result.orphaned += len(orphans)
    if dry_run:
        return

    for key in orphans:
        try:
            await store.delete(key)
        except StoreError as error:
            result.failed += 1
            log.warning("failed to delete orphaned object, the next sweep tries again: %s", error)
            continue
        result.deleted += 1


class StoreSweeper(BackgroundTask):
    """Sweeps the body store every ``interval`` seconds, one node at a time."""

    task_name = "store-sweeper"

    def __init__(self, url: str, store: BodyStore, interval: float, min_age: float):
        super().__init__()
        self.url = url
        self.store = store
        self.interval = interval
        self.min_age = min_age

    async def _loop(self) -> None:
        # A random first delay, so nodes started together do not all try at once.
        await asyncio.sleep(random.uniform(0.1, 1.0) * min(self.interval, 3600.0))
        while True:
            await self.run_once()
            await asyncio.sleep(self.interval)

    async def run_once(self) -> SweepResult | None:
        """Sweep once; log and return None when another node is sweeping or the sweep failed."""
        try:
            connection = await asyncpg.connect(self.url, timeout=10)
        except TRANSIENT_ERRORS as error:
            log.warning("body store sweep skipped, database unavailable: %r", error)
            return None
        try:
            result = await sweep(connection, self.store, self.min_age)
        except SweepBusy:
            return None
        except (StoreError, *TRANSIENT_ERRORS) as error:
            log.warning("body store sweep failed, trying again in %.0f s: %s", self.interval, error)
            return None
        finally:
            await connection.close()
        log.info("body store sweep: %d objects listed, %d orphaned, %d deleted, %d failed to delete, "
                 "%d abandoned writes removed", result.listed, result.orphaned, result.deleted, result.failed,
                 result.abandoned)
        return result
