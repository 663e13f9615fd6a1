"""The scheduler against a real PostgreSQL: claiming a backlog of due rows."""

from __future__ import annotations

import asyncio

import asyncpg

from mta import db
from mta.spool.enqueue import Job
from mta.spool.scheduler import Scheduler
from tests.conftest import create_database

DUE_ROWS = 300


async def _insert_due_rows(pool: asyncpg.Pool, count: int) -> None:
    queue_ids = [f"Q{number:05d}" for number in range(count)]
    await pool.execute("INSERT INTO message (id, sender, size, body_key, wrapped_key, origin, session_id)"
                       " SELECT id, 'a@example.net', 1, NULL, '', 'test', 'test' FROM unnest($1::text[]) AS t (id)",
                       queue_ids)
    await pool.execute("INSERT INTO delivery (message_id, domain, recipients, attempts)"
                       " SELECT id, 'example.org', ARRAY['b@example.org'], 1 FROM unnest($1::text[]) AS t (id)",
                       queue_ids)


def test_backlog_claimed_without_waiting_for_poll(pg):
    url = create_database(pg)

    async def run() -> set[int]:
        connection = await asyncpg.connect(url)
        await db.migrate(connection)
        await connection.close()
        pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
        await _insert_due_rows(pool, DUE_ROWS)
        executed: set[int] = set()

        async def execute(job: Job, slot: object) -> None:
            # Slow enough that every slot is busy when the claim loop looks again.
            await asyncio.sleep(0.05)
            # Finished as a settle would: the row leaves the table.
            await pool.execute("DELETE FROM delivery WHERE id = $1", job.delivery_id)
            executed.add(job.delivery_id)

        # A claim takes at most 2 x 10 rows, and the next poll is a minute away.
        scheduler = Scheduler(pool, url, "node-a", 10, 30.0, 60.0, execute=execute)
        scheduler.start()
        try:
            for _ in range(100):
                if len(executed) == DUE_ROWS:
                    break
                await asyncio.sleep(0.1)
        finally:
            await scheduler.stop()
            await pool.close()
        return executed

    assert len(asyncio.run(run())) == DUE_ROWS


def test_claim_skips_suspended_site(pg):
    url = create_database(pg)

    async def claims() -> tuple[int, int]:
        connection = await asyncpg.connect(url)
        await db.migrate(connection)
        await connection.close()
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        try:
            await _insert_due_rows(pool, 3)
            await pool.execute("UPDATE delivery SET site = 'mx.example.org:25'")
            await pool.execute("INSERT INTO site (key, suspended_until) VALUES ('mx.example.org:25', now() + interval '1 hour')")
            scheduler = Scheduler(pool, url, "node-a", 10, 30.0, 60.0, execute=None)
            while_suspended = len(await scheduler.claim(10))
            await pool.execute("UPDATE site SET suspended_until = now() - interval '1 second'")
            after = len(await scheduler.claim(10))
        finally:
            await pool.close()
        return while_suspended, after

    assert asyncio.run(claims()) == (0, 3)
