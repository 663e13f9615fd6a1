"""Measure the delivery side alone: a pre-filled queue drained by the MTA to loopback sinks.

    python -m loadtest delivery [--messages 3000] [--size 5120] [--sites 1,10,100]
                                [--reuse on,off] [--repeat 3]

For each run a new database in one private PostgreSQL gets ``--messages``
messages through the MTA's spool code, spread evenly over ``--sites``
recipient domains, and held (see loadtest/delivery_queue.py). Then
``mta serve`` starts with a static route from each domain to its own
loopback address on one sink port (see loadtest/delivery_mta.py). Once it
listens for the queue's NOTIFY, the messages are released, and the run is
timed from the release until the sink has every message and the queue is
empty. Connection reuse is on with the default ``[delivery]`` settings, and
off with ``connection_cache_seconds = 0``.

Each repetition runs every site count with reuse on and then off, so the
two runs of each ratio follow each other. The sink offers no STARTTLS, so
deliveries are in plain text. Every address is on loopback. The MTA's
nameserver is 127.0.0.1, but the static routes name addresses, so it
looks nothing up.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil

from loadtest import delivery_queue
from loadtest.baseline import busy_cpu_seconds
from loadtest.delivery_mta import REUSE_OFF, REUSE_ON, DeliveryMta, Reuse
from loadtest.delivery_report import print_table, summarize, write_results
from loadtest.queue_bench import start_embedded, stop_postmaster, tree_cpu
from loadtest.results import content_digest
from loadtest.sink import LoadSink
from mta import db

MAX_MESSAGES = 20_000
MAX_SITES = 250
MAX_REPEAT = 10
POLL_INTERVAL = 0.01
LISTEN_TIMEOUT = 30.0


@dataclass(frozen=True)
class Options:
    messages: int = 3000
    size: int = 5120
    sites: tuple[int, ...] = (1, 10, 100)
    reuse: tuple[Reuse, ...] = (REUSE_ON, REUSE_OFF)
    repeat: int = 3
    # Seconds one run may take from the release until the queue is empty.
    timeout: float = 300.0
    output: Path = Path("loadtest/results")
    keep_temp: bool = False
    # An older checkout run after each run of this one, labelled "<reuse>-before".
    before_tree: Path | None = None


@dataclass
class RunResult:
    sites: int
    reuse: str
    messages: int
    seconds: float | None = None
    messages_per_second: float | None = None
    mta_cpu_seconds: float | None = None
    postgres_cpu_seconds: float | None = None
    # The sink, the polling and this script's PostgreSQL queries.
    bench_cpu_seconds: float | None = None
    # All other busy CPU time on the machine during the run, an estimate that shows other load.
    other_cpu_seconds: float | None = None
    connections: int = 0
    transactions: int = 0
    arrived: int = 0
    missing: int = 0
    duplicates: int = 0
    altered: int = 0
    events: dict[str, int] = field(default_factory=dict)
    warning_lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def site_address(index: int) -> str:
    """Return the loopback address of site index: 127.0.2.1 and up."""
    return f"127.0.2.{index + 1}"


def database_url(server_url: str, name: str) -> str:
    """Return the URL of database name on the server of server_url, which names the database postgres."""
    prefix, separator, query = server_url.partition("?")
    return f"{prefix.rsplit('/', 1)[0]}/{name}{separator}{query}"


class Cluster:
    """The private PostgreSQL of one invocation, with a new database for every run."""

    def __init__(self, directory: Path):
        self.url, self.postmaster = start_embedded(directory)
        self.created = 0

    async def create_database(self) -> str:
        self.created += 1
        name = f"delivery_bench_{self.created}"
        connection = await asyncpg.connect(self.url)
        try:
            await connection.execute(f"CREATE DATABASE {name}")
        finally:
            await connection.close()
        url = database_url(self.url, name)
        connection = await asyncpg.connect(url)
        try:
            await db.migrate(connection)
        finally:
            await connection.close()
        return url

    async def drop_database(self, url: str) -> None:
        name = url.partition("?")[0].rsplit("/", 1)[1]
        connection = await asyncpg.connect(self.url)
        try:
            await connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await connection.close()

    def stop(self) -> None:
        stop_postmaster(self.postmaster)


class DeliveryRun:
    """One run: fill and hold the queue, start the MTA, release, and wait for the queue to drain."""

    def __init__(self, options: Options, cluster: Cluster, sites: int, reuse: Reuse, number: int,
                 tree: Path | None = None):
        self.options = options
        self.cluster = cluster
        self.reuse = reuse
        self.tree = tree
        label = reuse.name if tree is None else f"{reuse.name}-before"
        self.result = RunResult(sites=sites, reuse=label, messages=options.messages)
        self.directory = Path(tempfile.mkdtemp(prefix="delivery-bench-"))
        self.sink = LoadSink([site_address(index) for index in range(sites)])
        self.messages = delivery_queue.build_messages(options.messages, options.size, sites, f"run{number}")

    async def run(self) -> RunResult:
        url = await self.cluster.create_database()
        await self.sink.start()
        routes = {delivery_queue.site_domain(index): f"{site_address(index)}:{self.sink.port}"
                  for index in range(self.result.sites)}
        mta = DeliveryMta(self.directory, url, routes, self.reuse, *([self.tree] if self.tree else []))
        try:
            config = mta.write_config()
            queue_ids = await delivery_queue.fill(config, url, self.messages)
            await asyncio.to_thread(mta.start)
            await self._measure(mta, url, queue_ids)
        except (OSError, RuntimeError, TimeoutError, asyncpg.PostgresError) as error:
            self.result.failures.append(f"{type(error).__name__}: {error}")
        finally:
            await self._finish(mta, url)
        return self.result

    async def _measure(self, mta: DeliveryMta, url: str, queue_ids: list[str]) -> None:
        connection = await asyncpg.connect(url)
        try:
            await delivery_queue.wait_for_listener(connection, LISTEN_TIMEOUT)
            before = self._cpu_counters(mta)
            started = time.monotonic()
            await delivery_queue.release(connection, queue_ids)
            await self._wait_drained(mta, connection, started + self.options.timeout)
            seconds = time.monotonic() - started
            after = self._cpu_counters(mta)
            self.result.events = await delivery_queue.delivery_events(connection)
        finally:
            await connection.close()

        self._record_time(seconds, before, after)

    async def _wait_drained(self, mta: DeliveryMta, connection: asyncpg.Connection, deadline: float) -> None:
        # The sink's count is free to read, so the database is asked only once the count is complete.
        while True:
            if len(self.sink.arrivals) >= self.options.messages:
                if await delivery_queue.queued_deliveries(connection) == 0:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {self.options.timeout:.0f} s: {len(self.sink.arrivals)} of "
                                   f"{self.options.messages} messages arrived (raise --timeout or lower --messages)")
            mta.check_running()
            await asyncio.sleep(POLL_INTERVAL)

    def _cpu_counters(self, mta: DeliveryMta) -> dict[str, float]:
        return {"mta": mta.cpu_seconds(), "postgres": tree_cpu(self.cluster.postmaster),
                "bench": time.process_time(), "busy": busy_cpu_seconds()}

    def _record_time(self, seconds: float, before: dict[str, float], after: dict[str, float]) -> None:
        used = {name: after[name] - before[name] for name in before}
        result = self.result
        result.seconds = round(seconds, 3)
        result.messages_per_second = round(result.messages / seconds, 1)
        result.mta_cpu_seconds = round(used["mta"], 3)
        result.postgres_cpu_seconds = round(used["postgres"], 3)
        result.bench_cpu_seconds = round(used["bench"], 3)
        result.other_cpu_seconds = round(used["busy"] - used["mta"] - used["postgres"] - used["bench"], 3)

    async def _finish(self, mta: DeliveryMta, url: str) -> None:
        await asyncio.to_thread(mta.stop)
        await self.sink.stop()
        self._check_arrivals()
        if mta.log_path.exists():
            self._check_log(mta)
        await self.cluster.drop_database(url)
        if self.options.keep_temp:
            print(f"kept {self.directory}", file=sys.stderr)
        else:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _check_arrivals(self) -> None:
        """Count missing, duplicated and altered messages at the sink, and the connections it accepted."""
        result = self.result
        result.connections = self.sink.counters["connections"]
        result.transactions = self.sink.counters["transactions"]
        result.arrived = len(self.sink.arrivals)
        seen = {arrival.loadtest_id for arrival in self.sink.arrivals}
        result.missing = len(set(self.messages) - seen)
        result.duplicates = result.arrived - len(seen)
        digests = {loadtest_id: content_digest(message) for loadtest_id, (_, message) in self.messages.items()}
        result.altered = sum(1 for arrival in self.sink.arrivals if digests.get(arrival.loadtest_id) != arrival.sha256)
        if result.missing or result.duplicates or result.altered:
            result.failures.append(f"sink check failed: {result.missing} missing, {result.duplicates} duplicated, "
                                   f"{result.altered} altered or unknown")
        if result.events and result.events != {"delivered": result.messages}:
            result.failures.append(f"queue check failed: delivery events {result.events}, expected "
                                   f"{result.messages} delivered")

    def _check_log(self, mta: DeliveryMta) -> None:
        warnings, errors = mta.problems()
        self.result.warning_lines = warnings[:20]
        if errors:
            self.result.failures.append(f"{len(errors)} error line(s) in the MTA's log, the first: {errors[0]}")


async def run_benchmark(options: Options) -> list[RunResult]:
    """Run every site count with reuse on and off, options.repeat times, and return every run."""
    with tempfile.TemporaryDirectory(prefix="delivery-bench-pg-") as temp:
        cluster = Cluster(Path(temp))
        results = []
        try:
            for repetition in range(options.repeat):
                for sites in options.sites:
                    for reuse in options.reuse:
                        for tree in (None, options.before_tree) if options.before_tree else (None,):
                            number = len(results) + 1
                            result = await DeliveryRun(options, cluster, sites, reuse, number, tree).run()
                            report_run(result)
                            results.append(result)
        finally:
            cluster.stop()
    return results


def report_run(result: RunResult) -> None:
    status = "ok" if result.ok else "FAILED: " + "; ".join(result.failures)
    print(f"sites {result.sites}, reuse {result.reuse}: {result.messages_per_second} msg/s, "
          f"{result.connections} connections, MTA CPU {result.mta_cpu_seconds} s, {status}", flush=True)


def parse_arguments(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m loadtest delivery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=Options.messages,
                        help=f"messages per run, at most {MAX_MESSAGES} (default %(default)s)")
    parser.add_argument("--size", type=int, default=Options.size,
                        help="text body of each message in octets, below about 300 octets of header "
                             "(default %(default)s)")
    parser.add_argument("--sites", default="1,10,100",
                        help=f"comma-separated numbers of destination sites, each 1 to {MAX_SITES} "
                             "(default %(default)s)")
    parser.add_argument("--reuse", default="on,off", help="connection reuse settings to run (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=Options.repeat,
                        help=f"runs of each setting, at most {MAX_REPEAT}. The table shows medians "
                             "(default %(default)s)")
    parser.add_argument("--timeout", type=float, default=Options.timeout,
                        help="seconds one run may take from the release (default %(default)s)")
    parser.add_argument("--output", type=Path, default=Options.output, help="folder for the JSON results")
    parser.add_argument("--keep-temp", action="store_true", help="keep each run's folder with the MTA's log")
    parser.add_argument("--before-tree", type=Path,
                        help="an older checkout (git worktree add DIR COMMIT) run after each run of this one, "
                             "for before/after ratios measured in one invocation")
    args = parser.parse_args(argv)
    if args.before_tree is not None and not (args.before_tree / "mta" / "__main__.py").is_file():
        parser.error(f"--before-tree {args.before_tree} is not a checkout of this project")

    if not 1 <= args.messages <= MAX_MESSAGES:
        parser.error(f"--messages must be between 1 and {MAX_MESSAGES}, got {args.messages}")
    if not 1 <= args.size <= 10 * 2**20:
        parser.error(f"--size must be between 1 and {10 * 2**20} octets, got {args.size}")
    if not 1 <= args.repeat <= MAX_REPEAT:
        parser.error(f"--repeat must be between 1 and {MAX_REPEAT}, got {args.repeat}")
    if not 0 < args.timeout <= 3600:
        parser.error(f"--timeout must be more than 0 and at most 3600 seconds, got {args.timeout}")
    try:
        sites = tuple(int(text) for text in args.sites.split(","))
    except ValueError:
        parser.error(f"--sites must be comma-separated whole numbers, got {args.sites!r}")
    if not all(1 <= count <= MAX_SITES for count in sites):
        parser.error(f"--sites must be between 1 and {MAX_SITES} each, got {args.sites}")
    settings = {"on": REUSE_ON, "off": REUSE_OFF}
    names = [name.strip() for name in args.reuse.split(",")]
    if not names or set(names) - set(settings):
        parser.error(f"--reuse must name on and/or off, got {args.reuse!r}")
    return Options(messages=args.messages, size=args.size, sites=sites, reuse=tuple(settings[n] for n in names),
                   repeat=args.repeat, timeout=args.timeout, output=args.output, keep_temp=args.keep_temp,
                   before_tree=args.before_tree.resolve() if args.before_tree else None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options = parse_arguments(argv)
    print(f"machine: {psutil.cpu_count()} CPUs; {options}", flush=True)
    results = asyncio.run(run_benchmark(options))
    summary = summarize(results)
    print_table(summary)
    path = write_results(options, argv, results, summary)
    print(f"\nresults written to {path}")
    return 0 if all(result.ok for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
