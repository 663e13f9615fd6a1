"""Housekeeping of each node: its heartbeat, and the daily partitions of the delivery history.

Every ``HEARTBEAT_INTERVAL`` seconds the node updates its row in ``node``,
so operators and alerts see which nodes are alive (``mta nodes``). About once
an hour one node, whichever takes the advisory lock, creates the history
partitions of the next days and drops those older than
``delivery.history_days``, unless the message auditor has not yet read
their rows. Each node also deletes the AUTH failure counts
that have expired. A failure is logged and tried again next time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from datetime import UTC, date, datetime, timedelta

import asyncpg


from mta.auth import throttle
from mta.background import BackgroundTask
from mta.db import TRANSIENT_ERRORS
from mta.delivery import suppression

log = logging.getLogger("mta.housekeeping")

HEARTBEAT_INTERVAL = 10.0
PARTITION_INTERVAL = 3600.0
# Days ahead for which partitions exist, so that rows never land in the default partition.
DAYS_AHEAD = 3
# Any constant works: it only has to be the same on every node.
PARTITION_LOCK_ID = 0x6D7462

_PARTITION_NAME = re.compile(r"^delivery_event_(\d{8})$")

_HEARTBEAT = """
INSERT INTO node (id, hostname, pid) VALUES ($1, $2, $3)
ON CONFLICT (id) DO UPDATE SET seen_at = now()
"""


# Rows after the message auditor's cursor (mta/message_audit.py). Rows
# without xid were written before the auditor existed and are never audited.
_UNAUDITED = """
SELECT EXISTS (SELECT 1 FROM {table} e, audit_cursor c
               WHERE e.xid IS NOT NULL AND (e.xid, e.id) > (c.event_xid, c.event_id))
"""

_PRUNE_DEFAULT = """
DELETE FROM delivery_event_default e USING audit_cursor c
WHERE e.at < $1 AND (e.xid IS NULL OR (e.xid, e.id) <= (c.event_xid, c.event_id))
"""


def partition_name(day: date) -> str:
    return f"delivery_event_{day:%Y%m%d}"


async def maintain_partitions(connection: asyncpg.Connection, today: date, history_days: int) -> tuple[list, list]:
    """Create the partitions from tomorrow to DAYS_AHEAD days ahead; drop those older than history_days.

    Today's partition is not created here: rows of today may already sit in
    the default partition, which would make the creation fail. Returns the
    names created and dropped.
    """
    created, dropped = [], []
    async with connection.transaction():
        if not await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", PARTITION_LOCK_ID):
            return created, dropped
        existing = {row["relname"] for row in await connection.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'delivery_event'::regclass")}

        for offset in range(1, DAYS_AHEAD + 1):
            day = today + timedelta(days=offset)
            name = partition_name(day)
            if name not in existing:
                await connection.execute(
                    f"CREATE TABLE {name} PARTITION OF delivery_event"
                    f" FOR VALUES FROM ('{day.isoformat()}') TO ('{(day + timedelta(days=1)).isoformat()}')")
                created.append(name)

        oldest_kept = today - timedelta(days=history_days)
        for name in sorted(existing):
            match = _PARTITION_NAME.match(name)
            if not match or datetime.strptime(match.group(1), "%Y%m%d").date() >= oldest_kept:
                continue
            if await connection.fetchval(_UNAUDITED.format(table=name)):
                # The message auditor is behind: the rows stay until their entries are in the audit log.
                log.warning("history partition %s kept past delivery.history_days: not yet audited", name)
                continue
            await connection.execute(f"DROP TABLE {name}")
            dropped.append(name)
        await connection.execute(_PRUNE_DEFAULT, datetime.combine(oldest_kept, datetime.min.time(), UTC))
    return created, dropped


class Housekeeper(BackgroundTask):
    task_name = "housekeeping"

    def __init__(self, pool: asyncpg.Pool, node_id: str, history_days: int, auth_failure_window: float):
        super().__init__()
        self.pool = pool
        self.node_id = node_id
        self.history_days = history_days
        self.auth_failure_window = auth_failure_window

    async def stop(self) -> None:
        """Stop the heartbeat and remove this node's row, so others stop counting it at once."""
        await super().stop()
        try:
            await self.pool.execute("DELETE FROM node WHERE id = $1", self.node_id)
        except TRANSIENT_ERRORS as error:
            # The row then ages out like a lost node's.
            log.warning("removing node %s from the node table failed: %r", self.node_id, error)

    async def _loop(self) -> None:
        next_partitions = 0.0
        while True:
            try:
                await self.pool.execute(_HEARTBEAT, self.node_id, socket.gethostname(), os.getpid())
                if time.monotonic() >= next_partitions:
                    async with self.pool.acquire(timeout=30) as connection:
                        created, dropped = await maintain_partitions(connection, datetime.now(UTC).date(),
                                                                     self.history_days)
                    swept = await throttle.sweep(self.pool, self.auth_failure_window)
                    expired = await suppression.sweep(self.pool)
                    next_partitions = time.monotonic() + PARTITION_INTERVAL
                    if swept:
                        log.info("expired AUTH failure counts deleted: %d", swept)
                    if expired:
                        log.info("expired suppression entries deleted: %d", expired)
                    if created or dropped:
                        log.info("history partitions created: %s; dropped: %s", ", ".join(created) or "none",
                                 ", ".join(dropped) or "none")
            except TRANSIENT_ERRORS as error:
                log.warning("housekeeping failed, trying again in %.0f s: %r", HEARTBEAT_INTERVAL, error)
            await asyncio.sleep(HEARTBEAT_INTERVAL)

