"""Retention of mailbox messages: purge those older than their mailbox's retention, in bounded batches.

The retention of a mailbox is its entry in ``[retention] mailboxes``, else
its domain's in ``domains``, else ``mailbox_days``; 0 keeps mail for ever.
Age counts from delivery to the mailbox. Mailboxes under a legal hold are
skipped. Each batch is one transaction that first tries the GDPR advisory
lock, so one node at a time purges, and a node that finds the lock taken
leaves the work to the holder until its next round.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg

from mta.background import BackgroundTask
from mta.config import RetentionConfig
from mta.db import TRANSIENT_ERRORS
from mta.gdpr import GDPR_LOCK_ID
from mta.mailbox.removal import delete_queued_objects, remove_mailbox_rows
from mta.storage.store import BodyStore, StoreError

log = logging.getLogger("mta.retention")

# Batches one purge runs at most, so a large backlog is spread over several rounds.
MAX_BATCHES = 100

# $1, $2: mailbox overrides; $3, $4: domain overrides; $5: the default days.
_EXPIRED_FROM = """
FROM mailbox_message b
LEFT JOIN unnest($1::text[], $2::int[]) AS mb (address, days) ON mb.address = b.mailbox
LEFT JOIN unnest($3::text[], $4::int[]) AS dm (domain, days) ON dm.domain = substring(b.mailbox from '@([^@]*)$')
WHERE coalesce(mb.days, dm.days, $5) > 0
  AND b.delivered_at < now() - make_interval(days => coalesce(mb.days, dm.days, $5))
  AND NOT EXISTS (SELECT 1 FROM legal_hold h WHERE h.address = b.mailbox)
"""
_EXPIRED = "SELECT b.id " + _EXPIRED_FROM + " ORDER BY b.id LIMIT $6 FOR UPDATE OF b SKIP LOCKED"
_DRY_RUN = ("SELECT b.mailbox, count(*) AS messages, sum(b.size) AS octets, min(b.delivered_at) AS oldest "
            + _EXPIRED_FROM + " GROUP BY b.mailbox ORDER BY b.mailbox")


@dataclass
class Purge:
    """Counts of one purge, and whether another node had the lock."""

    messages: int = 0
    bodies: int = 0
    objects_deleted: int = 0
    objects_failed: int = 0
    busy: bool = False


def _parameters(settings: RetentionConfig) -> tuple:
    return (list(settings.mailboxes), list(settings.mailboxes.values()), list(settings.domains),
            list(settings.domains.values()), settings.mailbox_days)


async def expired_by_mailbox(connection: asyncpg.Connection, settings: RetentionConfig) -> list[asyncpg.Record]:
    """Return, per mailbox, the messages a purge would remove now: count, octets and the oldest delivery."""
    return await connection.fetch(_DRY_RUN, *_parameters(settings))


async def purge(connection: asyncpg.Connection, store: BodyStore, settings: RetentionConfig) -> Purge:
    """Remove expired mailbox messages batch by batch, then delete the objects queued for deletion."""
    result = Purge()
    for _ in range(MAX_BATCHES):
        async with connection.transaction():
            if not await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", GDPR_LOCK_ID):
                result.busy = True
                break
            row_ids = [row["id"] for row in await connection.fetch(_EXPIRED, *_parameters(settings),
                                                                     settings.batch_size)]
            removed = await remove_mailbox_rows(connection, row_ids)
        result.messages += removed.rows
        result.bodies += removed.bodies
        if len(row_ids) < settings.batch_size:
            break

    result.objects_deleted, result.objects_failed = await delete_queued_objects(connection, store)
    return result


class RetentionTask(BackgroundTask):
    """Purge expired mailbox messages every ``interval`` seconds, logging counts and failures."""

    task_name = "retention"

    def __init__(self, pool: asyncpg.Pool, store: BodyStore, settings: RetentionConfig):
        super().__init__()
        self.pool = pool
        self.store = store
        self.settings = settings

    async def _loop(self) -> None:
        while True:
            try:
                async with self.pool.acquire(timeout=30) as connection:
                    result = await purge(connection, self.store, self.settings)
            except (*TRANSIENT_ERRORS, StoreError) as error:
                log.warning("retention purge failed, trying again in %.0f s: %r", self.settings.interval, error)
            else:
                if result.messages or result.objects_deleted or result.objects_failed:
                    log.info("retention purged %d mailbox message(s) and %d body(ies); objects deleted: %d, "
                             "failed: %d", result.messages, result.bodies, result.objects_deleted,
                             result.objects_failed)
            await asyncio.sleep(self.settings.interval)
