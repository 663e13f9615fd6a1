"""The queue side of the delivery benchmark: fill it while no node delivers, hold it, release it.

Messages go in through the MTA's own spool code (encrypted bodies, inline
in PostgreSQL when small, one delivery row per message), so the rows and
bodies are those a real node writes. The spool leases new rows to the node
that accepted them. Here they are unleased, as by a node that stops before
the attempt, and then held with the code of ``mta queue hold``. The timed
part starts with the code of ``mta queue release``, whose NOTIFY wakes the
MTA.
"""

from __future__ import annotations

import asyncio
import random
import time

import asyncpg

from loadtest.messages import build_message, unique_id
from loadtest.model import Event
from mta import db
from mta.config import Config
from mta.spool.admin import QueueAdmin
from mta.spool.enqueue import NewMessage, Spool
from mta.spool.scheduler import NOTIFY_CHANNEL
from mta.storage.bodies import BodyCodec
from mta.storage.keyring import Keyring
from mta.storage.master_key import create_master_key, read_master_keys
from mta.storage.local import LocalStore

SENDER_DOMAIN = "bench.example"
SENDER = f"sender@{SENDER_DOMAIN}"
ACTOR = "delivery-bench"
# Parallel enqueue calls while filling, so the spool writer commits in full batches.
PRODUCERS = 100
FILL_NODE = "delivery-bench-fill"

# Undoes the spool's lease and its count of the first attempt, as the
# scheduler's _RELEASE does for jobs a stopping node had not started.
_UNLEASE = """
UPDATE delivery SET lease_owner = NULL, lease_until = NULL, attempts = attempts - 1
WHERE lease_owner = $1
"""


def site_domain(index: int) -> str:
    return f"site-{index}.example"


def build_messages(count: int, size: int, sites: int, run: str) -> dict[str, tuple[str, bytes]]:
    """Return loadtest id -> (recipient, message) for count messages spread evenly over the sites.

    Each message has a text body of size octets below about 300 octets of header fields.
    """
    rng = random.Random(count * 1000 + sites)
    messages = {}
    for number in range(count):
        recipient = f"user{number}@{site_domain(number % sites)}"
        loadtest_id = unique_id(run, number)
        event = Event(0.0, "submission", SENDER, (recipient,), size, ())
        messages[loadtest_id] = (recipient, build_message(event, loadtest_id, rng))
    return messages


async def fill(config: Config, url: str, messages: dict[str, tuple[str, bytes]]) -> list[str]:
    """Enqueue every message through the spool, hold it, and return the queue ids.

    The MTA must not be running, because the rows are due and unleased for a
    moment between the unlease and the hold.
    """
    pool = await db.create_pool(url, config)
    masters = read_master_keys(config) or create_master_key(config)
    spool = Spool(pool, LocalStore(config.data_path(config.storage.path)), BodyCodec(Keyring(pool, masters)),
                  config.storage.inline_max_size, FILL_NODE, config.delivery.lease_seconds,
                  on_ready=lambda jobs: None)
    spool.start()
    try:
        queue_ids = await _enqueue_all(spool, list(messages.values()))
    finally:
        await spool.stop()

    try:
        async with pool.acquire() as connection:
            await connection.execute(_UNLEASE, FILL_NODE)
            result = await QueueAdmin(connection, ACTOR).hold(queue_ids)
    finally:
        await pool.close()
    if len(result.done) != len(queue_ids):
        raise RuntimeError(f"hold failed: {len(result.done)} of {len(queue_ids)} queued messages held")
    return queue_ids


async def _enqueue_all(spool: Spool, messages: list[tuple[str, bytes]]) -> list[str]:
    queue_ids: list[str] = []
    pending = iter(messages)

    async def produce() -> None:
        for recipient, body in pending:
            queue_ids.append(await spool.enqueue(NewMessage(
                sender=SENDER, recipients=[recipient], body=body, origin="submission", session_id=ACTOR)))

    await asyncio.gather(*(produce() for _ in range(PRODUCERS)))
    return queue_ids


async def wait_for_listener(connection: asyncpg.Connection, timeout: float) -> None:
    """Wait until a session of the MTA listens for the queue's NOTIFY, so the release wakes it at once.

    Without it, a release sent before the MTA's LISTEN would wait for the
    next poll (``delivery.poll_interval``, 5 s by default).
    """
    deadline = time.monotonic() + timeout
    while not await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE $1",
            f"LISTEN%{NOTIFY_CHANNEL}%"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the MTA did not LISTEN on {NOTIFY_CHANNEL} within {timeout:.0f} s")
        await asyncio.sleep(0.05)


async def release(connection: asyncpg.Connection, queue_ids: list[str]) -> None:
    result = await QueueAdmin(connection, ACTOR).release(queue_ids)
    if len(result.done) != len(queue_ids):
        raise RuntimeError(f"release failed: {len(result.done)} of {len(queue_ids)} held messages released")


async def queued_deliveries(connection: asyncpg.Connection) -> int:
    return await connection.fetchval("SELECT count(*) FROM delivery")


async def delivery_events(connection: asyncpg.Connection) -> dict[str, int]:
    """Return the number of recorded attempts per recipient status (delivered, deferred, bounced)."""
    rows = await connection.fetch("SELECT status, count(*) AS n FROM delivery_event GROUP BY status")
    return {row["status"]: row["n"] for row in rows}
