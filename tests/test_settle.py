"""Batched settling against a real PostgreSQL: leases, completion and notifications."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg

from mta import db
from mta.delivery.body import WHOLE_MAX, MessageBody
from mta.delivery.outcome import Outcome, Reply
from mta.delivery.stored_body import load_body
from mta.spool.enqueue import Job, Spool
from mta.spool.scheduler import Scheduler
from mta.spool.settle import MessageInfo, Settler
from mta.storage.bodies import BodyCodec
from mta.storage.keyring import Keyring
from mta.storage.master_key import MasterKey, MasterKeys
from mta.storage.local import LocalStore
from tests.conftest import create_database
from tests.test_delivery_stream import large_message, stored

EMPTY = MessageBody.whole(b"")

MESSAGES = 20
ROUNDS = 10
DELIVERED = Reply(250, "2.0.0 OK")


async def _with_settlers(url: str, tmp_path: Path, nodes: list[str],
                         body: Callable[[asyncpg.Pool, dict[str, Settler]], Awaitable[None]]) -> None:
    connection = await asyncpg.connect(url)
    await db.migrate(connection)
    await connection.close()

    pool = await asyncpg.create_pool(url, min_size=2, max_size=6)
    bodies = BodyCodec(Keyring(pool, MasterKeys(MasterKey.from_bytes(os.urandom(32)))))
    settlers = {}
    for node in nodes:
        spool = Spool(pool, LocalStore(tmp_path / node), bodies, 65536, node, 30.0, on_ready=lambda jobs: None)
        settlers[node] = Settler(pool, spool, node, "mta.test", [60.0], 86400.0, delay_notice_after=3600.0)
        settlers[node].start()
    try:
        await body(pool, settlers)
    finally:
        for settler in settlers.values():
            await settler.stop()
        await pool.close()


async def _add_message(pool: asyncpg.Pool, queue_id: str, leases: dict[str, str]) -> dict[str, Job]:
    """Insert a message with one delivery row per domain, leased to the given node; return the jobs."""
    await pool.execute("INSERT INTO message (id, sender, size, body_key, wrapped_key, origin, session_id)"
                       " VALUES ($1, 'sender@example.net', 10, NULL, '', 'test', 'test')", queue_id)
    jobs = {}
    for domain, node in leases.items():
        delivery_id = await pool.fetchval(
            "INSERT INTO delivery (message_id, domain, recipients, attempts, lease_owner, lease_until)"
            " VALUES ($1, $2, $3, 1, $4, now() + interval '30 seconds') RETURNING id",
            queue_id, domain, [f"user@{domain}"], node)
        jobs[domain] = Job(delivery_id, queue_id, domain, [f"user@{domain}"], 1)
    return jobs


def _info(queue_id: str, sender: str = "sender@example.net", age: float = 0.0) -> MessageInfo:
    return MessageInfo(queue_id, sender, datetime.now(timezone.utc) - timedelta(seconds=age))


def _outcome(recipients: list[str], reply: Reply) -> Outcome:
    outcome = Outcome(relay="test")
    outcome.add_all(recipients, reply)
    return outcome


def test_nodes_finishing_together_complete_message(pg, tmp_path):
    async def body(pool: asyncpg.Pool, settlers: dict[str, Settler]) -> None:
        # Whether the two batches overlap depends on timing, so several rounds
        # make a missed completion show up reliably when the locking is wrong.
        settlements = []
        for round_number in range(ROUNDS):
            attempts = []
            for number in range(MESSAGES):
                queue_id = f"Q{round_number:02d}{number:04d}"
                jobs = await _add_message(pool, queue_id, {"one.example": "node-a", "two.example": "node-b"})
                for domain, node in (("one.example", "node-a"), ("two.example", "node-b")):
                    job = jobs[domain]
                    attempts.append(settlers[node].settle(job, _info(queue_id), _outcome(job.recipients, DELIVERED),
                                                          EMPTY))
            settlements += await asyncio.gather(*attempts)

        assert all(settlement.applied for settlement in settlements)
        assert sum(settlement.body_unused for settlement in settlements) == ROUNDS * MESSAGES
        assert await pool.fetchval("SELECT count(*) FROM message WHERE completed_at IS NULL") == 0
        assert await pool.fetchval("SELECT count(*) FROM delivery") == 0

    asyncio.run(_with_settlers(create_database(pg), tmp_path, ["node-a", "node-b"], body))


def test_lost_lease_leaves_row_and_records_nothing(pg, tmp_path):
    async def body(pool: asyncpg.Pool, settlers: dict[str, Settler]) -> None:
        owned = await _add_message(pool, "QOWNED", {"one.example": "node-a"})
        lost = await _add_message(pool, "QLOST", {"one.example": "node-b"})

        failed = Reply(550, "5.1.1 no such user")
        settlements = await asyncio.gather(
            settlers["node-a"].settle(owned["one.example"], _info("QOWNED"), _outcome(["user@one.example"], failed), EMPTY),
            settlers["node-a"].settle(lost["one.example"], _info("QLOST"), _outcome(["user@one.example"], failed), EMPTY))

        assert [settlement.applied for settlement in settlements] == [True, False]
        assert settlements[0].notification is not None
        assert await pool.fetchval("SELECT count(*) FROM delivery WHERE message_id = 'QLOST'") == 1
        assert await pool.fetchval("SELECT count(*) FROM delivery_event WHERE message_id = 'QLOST'") == 0
        # The bounce for the owned attempt was queued in the same transaction, to the sender.
        assert await pool.fetchval("SELECT count(*) FROM message WHERE origin = 'bounce'") == 1

    asyncio.run(_with_settlers(create_database(pg), tmp_path, ["node-a", "node-b"], body))


def test_deferred_and_finished_settle_in_one_batch(pg, tmp_path):
    async def body(pool: asyncpg.Pool, settlers: dict[str, Settler]) -> None:
        jobs = await _add_message(pool, "QMIXED", {"one.example": "node-a", "two.example": "node-a"})
        greylisted = Reply(451, "4.7.1 try later")

        await asyncio.gather(
            settlers["node-a"].settle(jobs["one.example"], _info("QMIXED"),
                                      _outcome(["user@one.example"], DELIVERED), EMPTY),
            settlers["node-a"].settle(jobs["two.example"], _info("QMIXED"),
                                      _outcome(["user@two.example"], greylisted), EMPTY))

        row = await pool.fetchrow("SELECT domain, lease_owner, last_reply, due_at > now() AS later FROM delivery")
        assert dict(row) == {"domain": "two.example", "lease_owner": None, "last_reply": "451 4.7.1 try later",
                             "later": True}
        assert await pool.fetchval("SELECT completed_at FROM message WHERE id = 'QMIXED'") is None
        events = await pool.fetch("SELECT recipient, status FROM delivery_event ORDER BY recipient")
        assert [tuple(event) for event in events] == [("user@one.example", "delivered"),
                                                      ("user@two.example", "deferred")]

    asyncio.run(_with_settlers(create_database(pg), tmp_path, ["node-a"], body))


def test_deferred_message_gets_one_delay_notice(pg, tmp_path):
    async def body(pool: asyncpg.Pool, settlers: dict[str, Settler]) -> None:
        domains = {"one.example": "node-a", "two.example": "node-a", "three.example": "node-b"}
        jobs = await _add_message(pool, "QDELAYED", domains)
        greylisted = Reply(451, "4.7.1 try later")
        two_hours = 7200.0

        settlements = await asyncio.gather(*(
            settlers[node].settle(jobs[domain], _info("QDELAYED", age=two_hours),
                                  _outcome(jobs[domain].recipients, greylisted), MessageBody.whole(b"Subject: hi\r\n\r\nbody\r\n"))
            for domain, node in domains.items()))

        assert sum(settlement.notification is not None for settlement in settlements) == 1
        assert await pool.fetchval("SELECT count(*) FROM message WHERE origin = 'bounce'") == 1
        assert await pool.fetchval("SELECT delay_notified_at IS NOT NULL FROM message WHERE id = 'QDELAYED'")

    asyncio.run(_with_settlers(create_database(pg), tmp_path, ["node-a", "node-b"], body))


def test_unreadable_body_notice_returns_header(pg, tmp_path):
    message = large_message(WHOLE_MAX + 4096)

    async def body(pool: asyncpg.Pool, settlers: dict[str, Settler]) -> None:
        store, key = await stored(tmp_path / "queue", message)
        stored_body = await load_body(store, "QSTREAM", key, "QSTREAM")
        # The object is gone after the remote replies came and before the RET=FULL notice reads it again.
        object_path = next(path for path in (tmp_path / "queue").rglob("*") if path.is_file())
        object_path.unlink()
        job = (await _add_message(pool, "QSTREAM", {"one.example": "node-a"}))["one.example"]
        outcome = _outcome(["user@one.example"], DELIVERED)
        outcome.add("other@one.example", Reply(550, "5.1.1 no such user"))
        info = MessageInfo("QSTREAM", "sender@example.net", datetime.now(timezone.utc), dsn={"ret": "FULL"})

        settlement = await settlers["node-a"].settle(job, info, outcome, stored_body)

        assert stored_body.streamed
        assert settlement.applied
        events = await pool.fetch("SELECT recipient, status FROM delivery_event ORDER BY recipient")
        assert [tuple(event) for event in events] == [("other@one.example", "bounced"),
                                                      ("user@one.example", "delivered")]
        assert await pool.fetchval("SELECT count(*) FROM delivery WHERE message_id = 'QSTREAM'") == 0
        notice = settlement.notification.message.body
        assert b"text/rfc822-headers" in notice
        assert b"Subject: large" in notice
        assert b".starts with a period" not in notice

    asyncio.run(_with_settlers(create_database(pg), tmp_path, ["node-a"], body))


def test_unstorable_full_notice_returns_header(pg, tmp_path):
    # Larger than the 65536 octets the test spools keep inline, so the RET=FULL notification goes to the store.
    message = b"Subject: whole\r\n\r\n" + b"line of the body\r\n" * 8192

    async def body(pool: asyncpg.Pool, settlers: dict[str, Settler]) -> None:
        # Replacing the spool's store directory with a file makes every write to the store fail.
        shutil.rmtree(tmp_path / "node-a", ignore_errors=True)
        (tmp_path / "node-a").write_bytes(b"")
        job = (await _add_message(pool, "QWHOLE", {"one.example": "node-a"}))["one.example"]
        outcome = _outcome(["user@one.example"], DELIVERED)
        outcome.add("other@one.example", Reply(550, "5.1.1 no such user"))
        info = MessageInfo("QWHOLE", "sender@example.net", datetime.now(timezone.utc), dsn={"ret": "FULL"})

        settlement = await settlers["node-a"].settle(job, info, outcome, MessageBody.whole(message))

        assert settlement.applied
        assert await pool.fetchval("SELECT count(*) FROM delivery_event WHERE status = 'delivered'") == 1
        notice = settlement.notification.message.body
        assert b"text/rfc822-headers" in notice
        assert b"line of the body" not in notice
        assert settlement.notification.inline_data is not None

    asyncio.run(_with_settlers(create_database(pg), tmp_path, ["node-a"], body))


def test_stop_settles_handed_over_outcome(pg, tmp_path):
    url = create_database(pg)

    async def body(pool: asyncpg.Pool, settlers: dict[str, Settler]) -> None:
        settler = settlers["node-a"]
        job = (await _add_message(pool, "QSTOP", {"one.example": "node-a"}))["one.example"]
        handed_over = asyncio.Event()

        async def execute(job: Job, slot: object) -> None:
            handed_over.set()
            # settle() does not suspend before it hands the outcome over, so the writer has it when the test resumes.
            await settler.settle(job, _info("QSTOP"), _outcome(job.recipients, DELIVERED), EMPTY)

        # A KEY SHARE lock holds back the writer's DELETE of the row, but not the UPDATE that releases its lease.
        blocker = await pool.acquire()
        holding = blocker.transaction()
        await holding.start()
        await blocker.execute("SELECT 1 FROM delivery WHERE id = $1 FOR KEY SHARE", job.delivery_id)

        scheduler = Scheduler(pool, url, "node-a", 1, 30.0, 60.0, execute=execute)
        scheduler.start()
        scheduler.submit([job])
        await asyncio.wait_for(handed_over.wait(), 10)
        stopping = asyncio.create_task(scheduler.stop(grace=0.0, settle_handed_over=settler.stop))
        # Releasing the lease first lets stop() return while the writer is blocked. Settling first makes stop()
        # wait in Settler.stop, so the lock is dropped once either has happened.
        for _ in range(1000):
            if stopping.done() or settler.writer.stopping:
                break
            await asyncio.sleep(0.01)
        await holding.rollback()
        await pool.release(blocker)
        await asyncio.wait_for(stopping, 10)
        await settler.stop()

        assert await pool.fetchval("SELECT count(*) FROM delivery") == 0
        events = await pool.fetch("SELECT recipient, status FROM delivery_event")
        assert [tuple(event) for event in events] == [("user@one.example", "delivered")]

    asyncio.run(_with_settlers(url, tmp_path, ["node-a"], body))
