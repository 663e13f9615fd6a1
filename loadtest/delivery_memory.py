"""Measure the peak memory of the MTA while it delivers one large message.

    python -m loadtest.delivery_memory [--size-mb 50] [--paths smtp,local,lmtp] [--before-tree DIR]

For each delivery path a new database in one private PostgreSQL gets one
message of about ``--size-mb`` MB (a text part and a base64 attachment)
through the MTA's spool code, held (see loadtest/delivery_queue.py). Then
``mta serve`` starts with one worker, which is the process measured:

- smtp: a static route to a loopback SMTP sink (loadtest/sink.py);
- local: a local mailbox, whose account is made with ``mta user import``;
- lmtp: ``[delivery.lmtp]`` to a loopback LMTP server (loadtest/lmtp_sink.py).

Once the MTA listens for the queue's NOTIFY and has been idle for a moment,
its peak resident set (VmHWM) is reset through /proc/PID/clear_refs and its
resident set read as the idle figure. The message is then released, and
after its delivery event is recorded the peak is read again. The report
gives the peak minus the idle figure in MB, and that divided by the message
size: the number of body-sized copies held at once. Every address is on
loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from loadtest import delivery_queue
from loadtest.delivery_bench import Cluster, site_address
from loadtest.delivery_mta import REPOSITORY, REUSE_ON, DeliveryMta
from loadtest.lmtp_sink import LmtpSink
from loadtest.messages import build_message, unique_id
from loadtest.model import Event
from loadtest.results import content_digest
from loadtest.sink import LoadSink

PATHS = ("smtp", "local", "lmtp")
MAX_SIZE_MB = 200
# base64 turns 57 octets into a 76-character line and its CRLF.
BASE64_RATIO = 57 / 78
# Seconds the MTA runs after it LISTENs, before the idle figure is read, so start-up work is over.
IDLE_SECONDS = 2.0
POLL_INTERVAL = 0.02
LISTEN_TIMEOUT = 30.0
DELIVERY_TIMEOUT = 300.0
MB = 10**6


@dataclass
class MemoryResult:
    path: str
    tree: str
    size: int
    idle_mb: float | None = None
    peak_extra_mb: float | None = None
    seconds: float | None = None
    mta_cpu_seconds: float | None = None
    failure: str = ""

    @property
    def copies(self) -> float | None:
        return None if self.peak_extra_mb is None else self.peak_extra_mb * MB / self.size


def build_large_message(size: int, recipient: str) -> bytes:
    """Return a message of about size octets: a short text part and one base64 attachment."""
    event = Event(0.0, "submission", delivery_queue.SENDER, (recipient,), 2000, (int(size * BASE64_RATIO),))
    return build_message(event, unique_id("memory", 0), random.Random(size))


def read_status_kb(pid: int, field: str) -> int:
    """Return a field of /proc/PID/status in kB, such as VmRSS or VmHWM."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field} field")


def reset_peak(pid: int) -> None:
    # Writing 5 resets VmHWM to the current resident set (Linux 4.0 and later, proc(5)).
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class MemoryRun:
    """One delivery of the large message on one path, by the MTA of one checkout."""

    def __init__(self, cluster: Cluster, path: str, size: int, tree: Path | None):
        self.cluster = cluster
        self.path = path
        self.tree = tree or REPOSITORY
        self.result = MemoryResult(path, "before" if tree else "this", size)
        self.directory = Path(tempfile.mkdtemp(prefix="delivery-memory-"))
        self.sink = LoadSink([site_address(0)])
        self.lmtp = LmtpSink()
        local = path != "smtp"
        self.recipient = f"reader@{delivery_queue.SENDER_DOMAIN}" if local else f"user@{delivery_queue.site_domain(0)}"
        self.message = build_large_message(size, self.recipient)

    async def run(self) -> MemoryResult:
        url = await self.cluster.create_database()
        await self.sink.start()
        await self.lmtp.start()
        routes = {delivery_queue.site_domain(0): f"{site_address(0)}:{self.sink.port}"}
        extra = ""
        if self.path == "lmtp":
            extra = f'[delivery.lmtp]\n"{delivery_queue.SENDER_DOMAIN}" = "127.0.0.1:{self.lmtp.port}"\n'
        mta = DeliveryMta(self.directory, url, routes, REUSE_ON, self.tree, extra_config=extra)
        try:
            config = mta.write_config()
            queue_ids = await delivery_queue.fill(config, url, {"memory": (self.recipient, self.message)})
            if self.path == "local":
                self._add_account(mta)
            await asyncio.to_thread(mta.start)
            await self._measure(mta, url, queue_ids)
            await self._check_delivered(url)
        except (OSError, RuntimeError, TimeoutError, asyncpg.PostgresError, subprocess.CalledProcessError) as error:
            self.result.failure = f"{type(error).__name__}: {error}"
        finally:
            await asyncio.to_thread(mta.stop)
            await self.sink.stop()
            await self.lmtp.stop()
            await self.cluster.drop_database(url)
            shutil.rmtree(self.directory, ignore_errors=True)
        return self.result

    def _add_account(self, mta: DeliveryMta) -> None:
        accounts = self.directory / "accounts.txt"
        accounts.write_text(self.recipient + "\n")
        environment = {**os.environ, "PYTHONPATH": str(self.tree), "MTA_MIGRATIONS_DIR": str(self.tree / "queue")}
        subprocess.run([sys.executable, "-m", "mta", "--config", str(mta.config_path), "user", "import",
                        str(accounts)], cwd=self.directory, env=environment, check=True, capture_output=True)

    async def _measure(self, mta: DeliveryMta, url: str, queue_ids: list[str]) -> None:
        pid = mta.process.pid
        connection = await asyncpg.connect(url)
        try:
            await delivery_queue.wait_for_listener(connection, LISTEN_TIMEOUT)
            await asyncio.sleep(IDLE_SECONDS)
            reset_peak(pid)
            idle_kb = read_status_kb(pid, "VmRSS")
            cpu_before = mta.cpu_seconds()
            started = time.monotonic()
            await delivery_queue.release(connection, queue_ids)
            await self._wait_delivered(mta, connection, started + DELIVERY_TIMEOUT)
            self.result.seconds = round(time.monotonic() - started, 2)
            peak_kb = read_status_kb(pid, "VmHWM")
            self.result.mta_cpu_seconds = round(mta.cpu_seconds() - cpu_before, 2)
        finally:
            await connection.close()
        self.result.idle_mb = round(idle_kb * 1024 / MB, 1)
        self.result.peak_extra_mb = round((peak_kb - idle_kb) * 1024 / MB, 1)

    async def _wait_delivered(self, mta: DeliveryMta, connection: asyncpg.Connection, deadline: float) -> None:
        while True:
            events = await delivery_queue.delivery_events(connection)
            if events:
                if events != {"delivered": 1}:
                    raise RuntimeError(f"delivery events {events}, expected one delivered; see {mta.log_path}")
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the message was not delivered within {DELIVERY_TIMEOUT:.0f} s")
            mta.check_running()
            await asyncio.sleep(POLL_INTERVAL)

    async def _check_delivered(self, url: str) -> None:
        """Check that the message arrived whole where its path leads."""
        if self.path == "smtp":
            arrived = [arrival.sha256 for arrival in self.sink.arrivals]
            if arrived != [content_digest(self.message)]:
                raise RuntimeError(f"the sink has {len(arrived)} message(s), expected this one unchanged")
        elif self.path == "lmtp":
            if self.lmtp.digests != [hashlib.sha256(self.message).hexdigest()]:
                raise RuntimeError(f"the LMTP server has {len(self.lmtp.digests)} message(s), "
                                   "expected this one unchanged")
        else:
            connection = await asyncpg.connect(url)
            try:
                sizes = await connection.fetch("SELECT size FROM mailbox_message")
            finally:
                await connection.close()
            if [row["size"] for row in sizes] != [len(self.message)]:
                raise RuntimeError(f"mailbox sizes {[row['size'] for row in sizes]}, expected [{len(self.message)}]")


async def run_all(paths: list[str], size: int, before_tree: Path | None) -> list[MemoryResult]:
    with tempfile.TemporaryDirectory(prefix="delivery-memory-pg-") as temp:
        cluster = Cluster(Path(temp))
        results = []
        try:
            for path in paths:
                for tree in (None, before_tree) if before_tree else (None,):
                    result = await MemoryRun(cluster, path, size, tree).run()
                    report(result)
                    results.append(result)
        finally:
            cluster.stop()
    return results


def report(result: MemoryResult) -> None:
    if result.failure:
        print(f"{result.path:6} {result.tree:7} FAILED: {result.failure}", flush=True)
        return
    print(f"{result.path:6} {result.tree:7} message {result.size / MB:.1f} MB, idle {result.idle_mb} MB, "
          f"peak extra {result.peak_extra_mb} MB = {result.copies:.2f} body sizes, "
          f"{result.seconds} s, MTA CPU {result.mta_cpu_seconds} s", flush=True)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.delivery_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=50.0,
                        help=f"message size in MB (10^6 octets), at most {MAX_SIZE_MB} (default %(default)s)")
    parser.add_argument("--paths", default=",".join(PATHS),
                        help="comma-separated delivery paths: smtp, local, lmtp (default %(default)s)")
    parser.add_argument("--before-tree", type=Path,
                        help="an older checkout (git worktree add DIR COMMIT) measured after each path of this one")
    args = parser.parse_args(argv)
    if not 0 < args.size_mb <= MAX_SIZE_MB:
        parser.error(f"--size-mb must be more than 0 and at most {MAX_SIZE_MB}, got {args.size_mb}")
    args.paths = [name.strip() for name in args.paths.split(",")]
    if not args.paths or set(args.paths) - set(PATHS):
        parser.error(f"--paths must name smtp, local and/or lmtp, got {','.join(args.paths)!r}")
    if args.before_tree is not None and not (args.before_tree / "mta" / "__main__.py").is_file():
        parser.error(f"--before-tree {args.before_tree} is not a checkout of this project")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    before = args.before_tree.resolve() if args.before_tree else None
    results = asyncio.run(run_all(args.paths, int(args.size_mb * MB), before))
    return 0 if not any(result.failure for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
