"""Drive one load run: the MTA under test, the sink, the clients, samples and results.

Open-loop modes send each event at its scheduled time whatever the MTA's
replies, so a slow MTA shows as growing latency and backlog. The closed
loop keeps K sessions busy to find the maximum rate. Every run ends with
the loss check: each message that got 250 must reach the sink for each of
its remote recipients, and nothing may arrive that was not sent.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from loadtest import model as traffic
from loadtest.clients import ClientPool, ClientSettings
from loadtest.faults import Fault, run_faults
from loadtest.messages import build_message, unique_id
from loadtest.results import (Progress, ProcessSampler, Sample, Sent, content_digest, summarize, write_json,
                              write_plots)
from loadtest.sink import LoadSink, SinkBehaviour
from loadtest.target import LOOPBACK, PASSWORD, MtaUnderTest

# In-flight transactions beyond the open sessions: events queue up here when
# the MTA falls behind, so memory stays bounded while the backlog shows.
IN_FLIGHT_PER_SESSION = 4


@dataclass
class RunOptions:
    mode: str = "open"
    rate: float = 50.0
    duration: float = 30.0
    time_scale: float = 1.0
    minutes: float = 10.0
    concurrency: int = 20
    count: int = 1000
    max_messages: int = 1_000_000
    workers: int = 1
    lease_seconds: float = 30.0
    auth_users: int = 200
    max_sessions: int = 50
    messages_per_connection: int = 10
    drain_timeout: float = 300.0
    seed: int = 1
    output: Path = Path("loadtest/results")
    behaviour: SinkBehaviour = field(default_factory=SinkBehaviour)
    faults: list[Fault] = field(default_factory=list)
    plots: bool = True


def events_for(model: traffic.TrafficModel, options: RunOptions) -> Iterator[traffic.Event]:
    if options.mode == "open":
        events = traffic.open_loop(model, options.rate, options.duration, options.seed)
    elif options.mode == "peak-hour":
        events = traffic.peak_hour(model, options.seed, options.time_scale)
    elif options.mode == "day":
        events = traffic.compressed_day(model, options.minutes, options.seed)
    elif options.mode == "closed":
        events = traffic.closed_loop_events(model, options.count, options.seed)
    else:
        raise ValueError(f"unknown mode {options.mode!r}: use open, peak-hour, day or closed")

    # A hard bound on every run, whatever the model generates.
    for number, event in enumerate(events):
        if number >= options.max_messages:
            return
        yield event


class LoadRun:
    def __init__(self, model: traffic.TrafficModel, options: RunOptions, target: MtaUnderTest, sink: LoadSink):
        self.model = model
        self.options = options
        self.target = target
        self.sink = sink
        self.run_id = unique_id(f"r{options.seed}", int(time.time()))
        self.sent: list[Sent] = []
        self.samples: list[Sample] = []
        self.offered = 0
        self.rng = random.Random(options.seed)
        self.pool = ClientPool(ClientSettings(
            host=LOOPBACK, mx_port=target.mx_port, submission_port=target.submission_port,
            max_sessions=options.max_sessions, messages_per_connection=options.messages_per_connection),
            password_for=lambda _: PASSWORD)

    def sender_for(self, event: traffic.Event) -> str:
        """Map a submission sender onto one of the accounts that can log in."""
        if event.kind != "submission":
            return event.sender
        local, _, domain = event.sender.partition("@")
        number = int(local.removeprefix("user") or 0)
        return f"user{number % self.options.auth_users}@{domain}"

    async def send(self, event: traffic.Event, number: int) -> None:
        loadtest_id = unique_id(self.run_id, number)
        sender = self.sender_for(event)
        event = traffic.Event(event.at, event.kind, sender, event.recipients, event.body_size,
                              event.attachment_sizes)
        message = build_message(event, loadtest_id, self.rng)
        remote = tuple(r for r in event.recipients if r.rpartition("@")[2] != self.model.domain)
        record = Sent(loadtest_id=loadtest_id, kind=event.kind, offered_at=time.monotonic(), replied_at=None,
                      reply_code=None, sha256=content_digest(message), remote_recipients=remote)
        self.sent.append(record)

        outcome = await self.pool.send(event.kind, sender, list(event.recipients), message)
        record.replied_at = outcome.replied_at
        record.reply_code = outcome.code

    async def drive(self) -> float:
        """Send every event; return the seconds the sending took."""
        started = time.monotonic()
        if self.options.mode == "closed":
            await self._closed_loop()
        else:
            await self._open_loop(started)
        await self.pool.close()
        return time.monotonic() - started

    async def _open_loop(self, started: float) -> None:
        in_flight = asyncio.Semaphore(self.options.max_sessions * IN_FLIGHT_PER_SESSION)
        tasks: set[asyncio.Task] = set()
        for number, event in enumerate(events_for(self.model, self.options)):
            delay = started + event.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await in_flight.acquire()
            self.offered += 1
            task = asyncio.create_task(self.send(event, number))
            tasks.add(task)
            task.add_done_callback(lambda done: (tasks.discard(done), in_flight.release()))
        await asyncio.gather(*tasks)

    async def _closed_loop(self) -> None:
        events = enumerate(events_for(self.model, self.options))

        async def session() -> None:
            for number, event in events:
                self.offered += 1
                await self.send(event, number)

        await asyncio.gather(*(session() for _ in range(self.options.concurrency)))

    async def sample(self, sampler: ProcessSampler | None, postgres: ProcessSampler | None,
                     progress: Progress) -> None:
        while True:
            await asyncio.sleep(1.0)
            cpu, rss = sampler.sample() if sampler else (None, None)
            if postgres is not None:
                pg_cpu, pg_rss = postgres.sample()
                cpu, rss = (cpu or 0.0) + pg_cpu, (rss or 0) + pg_rss
            accepted = sum(1 for record in self.sent if record.reply_code == 250)
            depth = await asyncio.to_thread(self.target.queue_depth)
            self.samples.append(Sample(at=time.monotonic(), offered=self.offered, accepted=accepted,
                                       arrived=len(self.sink.arrivals), queue_depth=depth,
                                       cpu_percent=cpu, rss_bytes=rss))
            progress.update(self.offered, accepted, len(self.sink.arrivals))

    async def drain(self) -> None:
        """Wait until every accepted message's remote recipients have arrived, or the timeout passes."""
        expected = sum(len(record.remote_recipients) for record in self.sent
                       if record.reply_code == 250 and record.remote_recipients)
        deadline = time.monotonic() + self.options.drain_timeout
        while time.monotonic() < deadline:
            received = sum(len(arrival.recipients) for arrival in self.sink.arrivals)
            if received >= expected:
                return
            await asyncio.sleep(0.5)


async def run(model: traffic.TrafficModel, options: RunOptions) -> dict:
    """Run the whole load test and return its summary; results go to ``options.output``."""
    model.validate()
    addresses = [f"127.0.0.{2 + index}" for index in range(len(model.remote_domains))]
    sink = LoadSink(addresses, 0, options.behaviour)
    await sink.start()
    routes = {domain: f"{address}:{sink.port}" for domain, address in zip(model.remote_domains, addresses)}
    target = MtaUnderTest(options.workers, model.domain, routes, model.users, options.auth_users,
                          options.lease_seconds)

    try:
        await asyncio.to_thread(target.start)
        load = LoadRun(model, options, target, sink)
        sampler = ProcessSampler(target.process.pid)
        postmaster = target.postmaster_pid()
        postgres = ProcessSampler(postmaster) if postmaster else None
        progress = Progress(total=None)
        sampling = asyncio.create_task(load.sample(sampler, postgres, progress))
        faults = asyncio.create_task(run_faults(options.faults, target))

        duration = await load.drive()
        await load.drain()
        sampling.cancel()
        faults.cancel()
        await asyncio.gather(sampling, faults, return_exceptions=True)
        progress.finish()
    finally:
        await asyncio.to_thread(target.stop)
        await sink.stop()

    summary = summarize(load.sent, sink.arrivals, load.samples, duration)
    summary["sink_counters"] = dict(sink.counters)
    summary["mta_log_tail"] = target.log_tail(20) if not summary["loss"]["passed"] else ""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    directory = options.output / f"run-{stamp}"
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "result.json", summary, load.samples, _describe(model, options))
    if options.plots:
        write_plots(directory, load.samples, load.sent, sink.arrivals)
    summary["directory"] = str(directory)
    return summary


def _describe(model: traffic.TrafficModel, options: RunOptions) -> dict:
    from dataclasses import asdict

    described = asdict(options)
    described["output"] = str(options.output)
    described["faults"] = [str(fault) for fault in options.faults]
    described["model"] = asdict(model)
    return described
