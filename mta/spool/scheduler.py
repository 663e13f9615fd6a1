"""The delivery loop of one node: ready queue, claims, leases and waking.

Jobs reach the ready queue two ways: straight from the spool writer (rows
inserted already leased to this node), and from claims of due rows or rows
whose lease expired because their node died. A claim is one statement with
``FOR UPDATE SKIP LOCKED``, so nodes sharing the database never take the same
row. ``mta queue flush`` sends one NOTIFY to wake idle nodes; otherwise a slow
poll finds retries as they fall due. Leases are renewed for all of this
node's rows in one statement.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from mta import metrics
from mta.db import TRANSIENT_ERRORS
from mta.listen import listen_forever
from mta.spool.enqueue import Job
from mta.storage.local import StoreError

log = logging.getLogger("mta.scheduler")

NOTIFY_CHANNEL = "mta_delivery"

# Rows one claim takes at most.
CLAIM_LIMIT = 500

_CLAIM = """
WITH ready AS (
    SELECT id FROM delivery
    WHERE lease_owner IS NULL AND NOT held AND due_at <= now()
      AND NOT EXISTS (SELECT 1 FROM site s WHERE s.key = delivery.site AND s.suspended_until > now())
      AND (delivery.site IS NULL OR delivery.site <> ALL ($4::text[]))
    -- NOTE: a row learns its site at its first attempt, so rows never tried are claimed whatever their site.
    ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED
), expired AS (
    SELECT id FROM delivery
    WHERE lease_owner IS NOT NULL AND NOT held AND lease_until < now()
    ORDER BY lease_until LIMIT $3 FOR UPDATE SKIP LOCKED
)
UPDATE delivery AS d
SET lease_owner = $1, lease_until = now() + make_interval(secs => $2), attempts = d.attempts + 1
WHERE d.id IN (SELECT id FROM ready UNION ALL SELECT id FROM expired)
RETURNING d.id, d.message_id, d.domain, d.recipients, d.attempts
"""

_RENEW = """
UPDATE delivery SET lease_until = now() + make_interval(secs => $2)
WHERE lease_owner = $1 AND id = ANY($3::bigint[])
"""

_RELEASE = """
UPDATE delivery SET lease_owner = NULL, lease_until = NULL, attempts = attempts - 1
WHERE lease_owner = $1 AND id = ANY($2::bigint[])
"""


class Slot:
    """A delivery's place among the node's ``concurrency``, which it can give back before it ends.

    A delivery that waits for its destination site to have room gives the
    place back, so deliveries to other sites go on meanwhile. Its row stays
    leased to this node, and its lease renewed, until the delivery ends.
    """

    def __init__(self, scheduler: "Scheduler"):
        self._scheduler = scheduler
        self._occupied = True

    def give_back(self) -> None:
        """Free the place while waiting for the site; call waited() when the wait ends."""
        if self._occupied:
            self._occupied = False
            self._scheduler._slots.release()
            self._scheduler._waiting += 1
            # A place is free: a claim may find work for it.
            self._scheduler._wake.set()

    def waited(self) -> None:
        self._scheduler._waiting -= 1

    def release(self) -> None:
        if self._occupied:
            self._occupied = False
            self._scheduler._slots.release()


class Scheduler:
    def __init__(self, pool: asyncpg.Pool, url: str, node_id: str, concurrency: int,
                 lease_seconds: float, poll_interval: float,
                 execute: Callable[[Job, Slot], Awaitable[None]],
                 busy_sites: Callable[[], list[str]] = list):
        self.pool = pool
        self.url = url
        self.node_id = node_id
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.execute = execute
        # Sites with deliveries of this node waiting for room: claims leave their rows to other nodes.
        self.busy_sites = busy_sites
        self.ready: asyncio.Queue[Job] = asyncio.Queue()
        self.running: set[asyncio.Task] = set()
        # Rows this node is working on or about to: only their leases are
        # renewed, so a row whose attempt failed midway expires and is retried.
        self.held: set[int] = set()
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        # Set while the last claim came back full, so more rows are likely due:
        # the poll then runs again as soon as work drains, not after poll_interval.
        self._backlog = False
        self._waiting = 0
        self._tasks: list[asyncio.Task] = []

    def submit(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.held.add(job.delivery_id)
            self.ready.put_nowait(job)

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        for name, loop in (("dispatch", self._dispatch_loop), ("poll", self._poll_loop),
                           ("renew", self._renew_loop), ("listen", self._listen_loop)):
            self._tasks.append(asyncio.create_task(loop(), name=f"scheduler-{name}"))

    @property
    def tasks(self) -> list[asyncio.Task]:
        return list(self._tasks)

    async def stop(self, grace: float = 30.0, settle_handed_over: Callable[[], Awaitable[None]] | None = None) -> None:
        """Stop taking work, let running deliveries finish for up to grace seconds, cancel and release the rest.

        A cancelled attempt may have sent the whole message already, with
        the remote reply not yet read, so the retry can deliver it twice.
        settle_handed_over (Settler.stop) is awaited after the attempts end
        and before the leases are released. A cancelled attempt may already
        have handed its outcome to the settle writer, and the writer settles
        a row only while this node holds its lease, so releasing first would
        discard replies the remote server already gave.
        """
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

        if self.running:
            await asyncio.wait(self.running, timeout=grace)
        unfinished = list(self.running)
        if unfinished:
            log.warning("cancelling %d delivery attempt(s) still running after %g s", len(unfinished), grace)
        # Taken before the cancelled tasks forget their rows: the running rows and those still in the ready queue.
        leased = set(self.held)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        if settle_handed_over is not None:
            await settle_handed_over()
            # Notifications queued by the last settlements were leased to this node too.
            leased |= self.held

        # Rows settled meanwhile no longer have this node as lease owner, so the release leaves them alone.
        if leased:
            try:
                await self.pool.execute(_RELEASE, self.node_id, sorted(leased))
            except TRANSIENT_ERRORS as error:
                log.warning("failed to release %d leases at stop, they expire on their own: %s",
                            len(leased), error)

    async def claim(self, limit: int) -> list[Job]:
        rows = await self.pool.fetch(_CLAIM, self.node_id, self.lease_seconds, limit, self.busy_sites())
        return [Job(row["id"], row["message_id"], row["domain"], list(row["recipients"]), row["attempts"])
                for row in rows]

    async def _dispatch_loop(self) -> None:
        while True:
            job = await self.ready.get()
            await self._slots.acquire()
            task = asyncio.create_task(self._run(job), name=f"deliver-{job.message_id}")
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _run(self, job: Job) -> None:
        # On failure the lease is left to expire, and a later claim retries the row.
        slot = Slot(self)
        try:
            await self.execute(job, slot)
        except (*TRANSIENT_ERRORS, StoreError) as error:
            if isinstance(error, StoreError):
                # The attempt read the body, or deleted it once every recipient was done.
                metrics.STORE_ERRORS.labels(operation="delivery").inc()
            log.warning("%s: delivery attempt %d failed, retried when its lease expires: %r",
                        job.message_id, job.attempt, error)
        except Exception:
            log.exception("%s: delivery attempt %d failed unexpectedly", job.message_id, job.attempt)
        finally:
            self.held.discard(job.delivery_id)
            slot.release()
            if self._backlog and self.ready.qsize() < self.concurrency:
                self._wake.set()

    async def _poll_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

            # Claim only what this node can start soon, so idle nodes get the rest.
            # Deliveries waiting for their site gave their place back and do not count.
            spare = 2 * self.concurrency - self.ready.qsize() - len(self.running) + self._waiting
            if spare <= 0:
                continue
            try:
                jobs = await self.claim(min(spare, CLAIM_LIMIT))
            except TRANSIENT_ERRORS as error:
                log.warning("queue claim failed, retrying in %.0fs: %s", self.poll_interval, error)
                continue
            self._backlog = len(jobs) >= min(spare, CLAIM_LIMIT)
            if jobs:
                log.debug("claimed %d deliveries", len(jobs))
                self.submit(jobs)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            if not self.held:
                continue
            try:
                await self.pool.execute(_RENEW, self.node_id, self.lease_seconds, list(self.held))
            except TRANSIENT_ERRORS as error:
                log.warning("lease renewal failed: %s", error)

    async def _listen_loop(self) -> None:
        await listen_forever(self.url, NOTIFY_CHANNEL, self._wake.set, self.poll_interval)
