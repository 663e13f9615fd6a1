"""Measure the queue layer alone: enqueue, claim and settle, without SMTP.

    python -m loadtest queue-bench [--nodes 2] [--messages 20000]

A node here is one process with what a worker of ``mta serve`` has for the
queue: a connection pool, the spool writer, the scheduler and the settle
writer. Its delivery step settles every job as delivered at once, so what
is measured is PostgreSQL and the queue code. Two phases run in turn:

- fast path: producer tasks enqueue messages with 5 KB bodies, kept inline
  in PostgreSQL. Their rows go straight to the accepting node's ready queue,
  and the rate counts messages enqueued and settled;
- claims: the same number of due rows is inserted beforehand, unleased, as
  retries would be; the nodes claim them in batches and settle them.

With ``--nodes 2`` two such processes share the database and split the
work. The database is a private PostgreSQL (pgserver) in a temporary
directory unless ``--database-url`` names one, which must be on loopback.
Nothing leaves the machine: there is no network traffic but to PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import asyncpg
import psutil

from mta import db
from mta.config import Config
from mta.delivery.body import MessageBody
from mta.delivery.outcome import Outcome, Reply
from mta.ids import new_queue_id
from mta.spool.enqueue import Job, NewMessage, Spool
from mta.spool.scheduler import Scheduler
from mta.spool.settle import MessageInfo, Settler
from mta.storage.bodies import BodyCodec
from mta.storage.keyring import Keyring
from mta.storage.master_key import MasterKey, MasterKeys
from mta.storage.local import LocalStore

# About 5 KB: a header section and 64 lines of 78 octets.
BODY = (b"From: bench@example.net\r\nTo: user@remote.example\r\nSubject: queue benchmark\r\n\r\n"
        + (b"x" * 76 + b"\r\n") * 64)
DELIVERED = Reply(250, "2.0.0 OK")
LEASE_SECONDS = 60.0
PHASE_TIMEOUT = 600.0
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost", "")


# --- one node ------------------------------------------------------------------


class Node:
    def __init__(self, url: str, node_id: str, expected: int, producers: int, concurrency: int, work_dir: Path):
        self.url = url
        self.node_id = node_id
        self.expected = expected
        self.producers = producers
        self.concurrency = concurrency
        self.work_dir = work_dir
        self.settled = 0
        self.done = asyncio.Event()

    async def run(self, phase: str) -> dict:
        pool = await db.create_pool(self.url, Config())
        bodies = BodyCodec(Keyring(pool, MasterKeys(MasterKey.from_bytes(os.urandom(32)))))
        scheduler = Scheduler(pool, self.url, self.node_id, self.concurrency, LEASE_SECONDS, 0.05,
                              execute=self._deliver)
        spool = Spool(pool, LocalStore(self.work_dir / self.node_id), bodies, 65536, self.node_id, LEASE_SECONDS,
                      on_ready=scheduler.submit)
        self.settler = Settler(pool, spool, self.node_id, "bench.invalid", [60.0], 86400.0)
        spool.start()
        self.settler.start()

        print("ready", flush=True)
        sys.stdin.readline()
        cpu_before = time.process_time()
        started = time.time()
        scheduler.start()
        if phase == "fast":
            await asyncio.gather(*(self._produce(spool, self.expected // self.producers
                                                 + (number < self.expected % self.producers))
                                   for number in range(self.producers)))
        await asyncio.wait_for(self.done.wait(), PHASE_TIMEOUT)
        finished = time.time()
        cpu = time.process_time() - cpu_before

        await scheduler.stop(settle_handed_over=self.settler.stop)
        await spool.stop()
        await pool.close()
        return {"node": self.node_id, "phase": phase, "settled": self.settled, "started": started,
                "finished": finished, "cpu_seconds": cpu,
                "spool_batches": spool.writer.batches, "spool_items": spool.writer.items,
                "settle_batches": self.settler.writer.batches, "settle_items": self.settler.writer.items}

    async def _produce(self, spool: Spool, count: int) -> None:
        for _ in range(count):
            await spool.enqueue(NewMessage(sender="bench@example.net", recipients=["user@remote.example"],
                                           body=BODY, origin="bench", session_id="bench"))

    async def _deliver(self, job: Job, slot: object) -> None:
        outcome = Outcome(relay="bench")
        outcome.add_all(job.recipients, DELIVERED)
        message = MessageInfo(job.message_id, "bench@example.net", datetime.now(UTC))
        await self.settler.settle(job, message, outcome, MessageBody.whole(b""))
        self.settled += 1
        if self.settled >= self.expected:
            self.done.set()


# --- the coordinator ---------------------------------------------------------


async def prepare_database(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await db.migrate(connection)
        await connection.execute("TRUNCATE delivery, delivery_event, message_body, message CASCADE")
    finally:
        await connection.close()


async def insert_due_rows(url: str, count: int) -> None:
    """Insert count messages with one unleased, due delivery row each, as retries waiting for a claim."""
    queue_ids = [new_queue_id() for _ in range(count)]
    connection = await asyncpg.connect(url)
    try:
        async with connection.transaction():
            await connection.execute(
                "INSERT INTO message (id, sender, size, body_key, wrapped_key, origin, session_id)"
                " SELECT id, 'bench@example.net', 10, NULL, '', 'bench', 'bench' FROM unnest($1::text[]) AS t (id)",
                queue_ids)
            await connection.execute(
                "INSERT INTO delivery (message_id, domain, recipients, attempts)"
                " SELECT id, 'remote.example', ARRAY['user@remote.example'], 1 FROM unnest($1::text[]) AS t (id)",
                queue_ids)
    finally:
        await connection.close()


def run_phase(phase: str, url: str, nodes: int, messages: int, args: argparse.Namespace,
              postmaster: psutil.Process | None) -> dict:
    if phase == "claims":
        asyncio.run(insert_due_rows(url, messages))

    processes = []
    for number in range(nodes):
        share = messages // nodes + (number < messages % nodes)
        # In the claim phase a node cannot know its share in advance: it stops when the table is empty.
        expected = share if phase == "fast" else messages
        command = [sys.executable, "-m", "loadtest.queue_bench", "--node", f"bench-{number}", "--phase", phase,
                   "--database-url", url, "--messages", str(expected), "--producers", str(args.producers),
                   "--concurrency", str(args.concurrency), "--work-dir", str(args.work_dir)]
        processes.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for process in processes:
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"a {phase} node failed to start (exit status {process.poll()})")

    postgres_before = tree_cpu(postmaster)
    nodes_before = sum(tree_cpu(psutil.Process(process.pid)) for process in processes)
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    if phase == "claims":
        results = [asyncio.run(wait_until_empty(url, processes, nodes_before))]
    else:
        results = [json.loads(process.communicate(timeout=PHASE_TIMEOUT)[0].splitlines()[-1])
                   for process in processes]
    summary = summarize(phase, results, messages, tree_cpu(postmaster) - postgres_before)
    asyncio.run(check_all_settled(url, messages))
    return summary


async def check_all_settled(url: str, messages: int) -> None:
    """Raise unless every message of the phase was settled once: completed, with no row left."""
    connection = await asyncpg.connect(url)
    try:
        left = await connection.fetchval("SELECT count(*) FROM delivery")
        completed = await connection.fetchval("SELECT count(*) FROM message WHERE completed_at IS NOT NULL")
        events = await connection.fetchval("SELECT count(*) FROM delivery_event")
    finally:
        await connection.close()
    if left or completed != messages or events != messages:
        raise RuntimeError(f"queue check failed: {left} delivery rows left, {completed} of {messages} messages "
                           f"completed, {events} delivery events")


async def wait_until_empty(url: str, processes: list[subprocess.Popen], nodes_before: float) -> dict:
    """Claim phase: time from the start until no delivery row is left, then stop the nodes."""
    started = time.time()
    deadline = time.monotonic() + PHASE_TIMEOUT
    connection = await asyncpg.connect(url)
    try:
        while await connection.fetchval("SELECT count(*) FROM delivery") > 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"claims phase did not finish within {PHASE_TIMEOUT:.0f} s")
            await asyncio.sleep(0.02)
    finally:
        await connection.close()
    finished = time.time()

    cpu = sum(tree_cpu(psutil.Process(process.pid)) for process in processes) - nodes_before
    for process in processes:
        process.terminate()
        process.wait(30)
    return {"started": started, "finished": finished, "cpu_seconds": cpu, "spool_batches": 0, "spool_items": 0,
            "settle_batches": 0, "settle_items": 0}


def summarize(phase: str, results: list[dict], messages: int, postgres_cpu: float) -> dict:
    seconds = max(result["finished"] for result in results) - min(result["started"] for result in results)
    spool_batches = sum(result["spool_batches"] for result in results)
    settle_batches = sum(result["settle_batches"] for result in results)
    return {
        "phase": phase,
        "messages": messages,
        "seconds": round(seconds, 3),
        "messages_per_second": round(messages / seconds, 1),
        "node_cpu_seconds": round(sum(result["cpu_seconds"] for result in results), 2),
        "postgres_cpu_seconds": round(postgres_cpu, 2),
        "mean_commit_batch": round(sum(r["spool_items"] for r in results) / spool_batches, 1) if spool_batches else None,
        "mean_settle_batch": round(sum(r["settle_items"] for r in results) / settle_batches, 1)
        if settle_batches else None,
    }


def tree_cpu(process: psutil.Process | None) -> float:
    """Return CPU seconds of process and its descendants, the exited ones included.

    PostgreSQL backends end with their connection; their time then counts in
    the postmaster's children times, as it reaps them.
    """
    if process is None:
        return 0.0
    times = process.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for member in process.children(recursive=True):
        try:
            times = member.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def stop_postmaster(postmaster: psutil.Process) -> None:
    """Stop the private PostgreSQL before its directory is removed, which pgserver's own clean-up needs."""
    # SIGINT is PostgreSQL's fast shutdown.
    postmaster.send_signal(signal.SIGINT)
    try:
        postmaster.wait(30)
    except psutil.TimeoutExpired:
        postmaster.kill()


def start_embedded(directory: Path) -> tuple[str, psutil.Process]:
    config = Config()
    config.server.data_dir = str(directory)
    server = db.embedded_server(config)
    pid = int((directory / "pg" / "postmaster.pid").read_text().split()[0])
    return server.get_uri(), psutil.Process(pid)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest queue-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1, choices=(1, 2), help="node processes (default %(default)s)")
    parser.add_argument("--messages", type=int, default=20_000, help="messages per phase (default %(default)s)")
    parser.add_argument("--producers", type=int, default=100, help="enqueueing tasks per node (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=100,
                        help="deliveries in flight per node, [delivery] concurrency (default %(default)s)")
    parser.add_argument("--phases", default="fast,claims", help="phases to run (default %(default)s)")
    parser.add_argument("--database-url", default="", help="a PostgreSQL on loopback; default: a private one")
    parser.add_argument("--work-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--node", default="", help=argparse.SUPPRESS)
    parser.add_argument("--phase", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if not 1 <= args.messages <= 1_000_000:
        parser.error("--messages must be between 1 and 1000000")
    if not 1 <= args.producers <= 10_000 or not 1 <= args.concurrency <= 10_000:
        parser.error("--producers and --concurrency must be between 1 and 10000")
    args.phases = [phase.strip() for phase in args.phases.split(",") if phase.strip()]
    if not args.phases or set(args.phases) - {"fast", "claims"}:
        parser.error(f"--phases must name fast and/or claims, got {args.phases}")
    if args.database_url and (urlparse(args.database_url).hostname or "") not in LOOPBACK_HOSTS:
        parser.error("--database-url must point at loopback (127.0.0.1, ::1 or a UNIX socket)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    if args.node:
        node = Node(args.database_url, args.node, args.messages, args.producers, args.concurrency, args.work_dir)
        print(json.dumps(asyncio.run(node.run(args.phase))), flush=True)
        return 0

    with tempfile.TemporaryDirectory(prefix="queue-bench-") as temp:
        args.work_dir = Path(temp)
        postmaster = None
        url = args.database_url
        if not url:
            url, postmaster = start_embedded(Path(temp))
        summaries = []
        try:
            for phase in args.phases:
                asyncio.run(prepare_database(url))
                summary = run_phase(phase, url, args.nodes, args.messages, args, postmaster)
                summaries.append(summary)
                print(json.dumps(summary), flush=True)
        finally:
            if postmaster is not None:
                stop_postmaster(postmaster)
    print(f"\n{'phase':<8}{'nodes':>6}{'msg/s':>10}{'node CPU s':>12}{'PG CPU s':>10}{'commit batch':>14}"
          f"{'settle batch':>14}")
    for summary in summaries:
        print(f"{summary['phase']:<8}{args.nodes:>6}{summary['messages_per_second']:>10}"
              f"{summary['node_cpu_seconds']:>12}{summary['postgres_cpu_seconds']:>10}"
              f"{summary['mean_commit_batch'] or '-':>14}{summary['mean_settle_batch'] or '-':>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
