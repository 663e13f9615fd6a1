"""Results of a load test: the loss check, statistics, JSON and PNG plots.

All times are ``time.monotonic()`` values in seconds. On Linux that clock is
system-wide, so times taken by the load client and by a sink in another
process on the same machine can be compared.

Sender and sink identify a message by its X-Loadtest-Id header field and
check its content with :func:`content_digest`, which both sides compute with
the same rule.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import psutil

if TYPE_CHECKING:
    from loadtest.sink import Arrival

LOADTEST_ID_FIELD = "X-Loadtest-Id"

# Maximum number of ids of each kind that LossReport.to_dict lists, so that the JSON of
# a run that lost everything stays readable. The counts are always complete.
REPORTED_IDS_LIMIT = 1000

_LINE_ENDING = re.compile(rb"\r\n|\r|\n")
_LOADTEST_ID_VALUE = re.compile(rb"^x-loadtest-id[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


def content_digest(message: bytes) -> str:
    """Return the SHA-256 hex digest of the message body, the part that relays leave alone.

    The body is everything after the first empty line. A relay prepends header
    fields (Received, DKIM-Signature, and Date or Message-ID when missing), so
    only the body can be compared between sender and sink. A message without
    an empty line has an empty body.

    Line endings are normalized to CRLF and a non-empty body gets a final CRLF
    when it lacks one, because an SMTP client does both when it sends the data
    (aiosmtplib 5.1 does). So the sender may pass the message as it built it
    and the sink the message as received, after undoing dot-stuffing.
    """
    crlf_count = message.count(b"\r\n")
    if message.count(b"\r") != crlf_count or message.count(b"\n") != crlf_count:
        message = _LINE_ENDING.sub(b"\r\n", message)

    if message.startswith(b"\r\n"):
        body = message[2:]
    else:
        end = message.find(b"\r\n\r\n")
        body = b"" if end < 0 else message[end + 4:]

    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return hashlib.sha256(body).hexdigest()


def loadtest_id_of(message: bytes) -> str | None:
    """Return the value of the first X-Loadtest-Id field in the header section, or None.

    Only the header section counts, so that a bounce quoting the original
    header fields in its body carries no id. Folded values are not unfolded,
    because the harness writes ids as one short token.
    """
    end = message.find(b"\r\n\r\n")
    headers = message if end < 0 else message[:end + 2]
    match = _LOADTEST_ID_VALUE.search(headers)
    if match is None:
        return None
    return match.group(1).decode("utf-8", "replace")


@dataclass
class Sent:
    """One message as the load client offered it, with the reply it got."""

    loadtest_id: str
    kind: str                  # "submission" or "mx"
    offered_at: float          # when the client began the transaction
    replied_at: float | None   # when the final reply came, None without one
    reply_code: int | None     # final reply code, 250 when accepted
    sha256: str                # content_digest of the message
    remote_recipients: tuple[str, ...]  # recipients expected at the sink, local ones excluded


@dataclass
class LossReport:
    """Comparison of the messages accepted by the MTA with those that arrived at the sinks."""

    accepted: int   # ids that got 250 and have remote recipients
    arrived: int    # accepted ids with at least one arrival
    arrivals: int   # arrival records of every kind, duplicates included
    missing: list[str] = field(default_factory=list)  # accepted ids without any arrival
    duplicates: dict[str, int] = field(default_factory=dict)  # id -> extra copies
    unexpected: list[str] = field(default_factory=list)  # ids never sent, and markers for arrivals without id
    corrupted: list[str] = field(default_factory=list)  # ids that arrived with a digest never sent
    missing_recipients: dict[str, list[str]] = field(default_factory=dict)  # id -> recipients never seen
    unexpected_recipients: dict[str, list[str]] = field(default_factory=dict)  # id -> recipients never sent to

    @property
    def passed(self) -> bool:
        """True when nothing was lost, misdirected or altered.

        A recipient that never got an arrived message counts as loss, and a
        recipient that was never addressed as misdirection. Duplicates are
        allowed because SMTP delivery is at-least-once: a relay that loses the
        250 after end of data must send the message again.
        """
        return not (self.missing or self.unexpected or self.corrupted
                    or self.missing_recipients or self.unexpected_recipients)

    def to_dict(self, limit: int = REPORTED_IDS_LIMIT) -> dict[str, Any]:
        """Return the report for JSON, with complete counts and at most limit ids per list."""
        return {
            "passed": self.passed,
            "accepted": self.accepted,
            "arrived": self.arrived,
            "arrivals": self.arrivals,
            "missing_count": len(self.missing),
            "missing": self.missing[:limit],
            "duplicate_count": len(self.duplicates),
            "duplicate_extra_copies": sum(self.duplicates.values()),
            "duplicates": dict(list(self.duplicates.items())[:limit]),
            "unexpected_count": len(self.unexpected),
            "unexpected": self.unexpected[:limit],
            "corrupted_count": len(self.corrupted),
            "corrupted": self.corrupted[:limit],
            "missing_recipients_count": len(self.missing_recipients),
            "missing_recipients": dict(list(self.missing_recipients.items())[:limit]),
            "unexpected_recipients_count": len(self.unexpected_recipients),
            "unexpected_recipients": dict(list(self.unexpected_recipients.items())[:limit]),
        }


def normalize_address(address: str) -> str:
    """Lower-case the domain of an address, which is case-insensitive unlike the local part."""
    local, at, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}" if at else address


def loss_check(sent: Iterable[Sent], arrivals: Iterable[Arrival]) -> LossReport:
    """Compare what the MTA accepted with what arrived at the sinks.

    An id may appear in several Sent records, for example when the client
    retried after a timeout. It is expected at the sink when any of them got
    250, and an arrival matches when its digest equals that of any of them.
    Arrivals of ids that were sent but never accepted are not unexpected:
    the MTA may have queued a message whose reply was lost.

    A message may arrive as several transactions, one per recipient domain or
    per recipient, so copies are counted per recipient: a message's extra
    copies are the most times one recipient got it, minus one. Bounces and
    other arrivals without an id count as unexpected, so route the senders'
    domains away from the sinks.
    """
    digests: dict[str, set[str]] = defaultdict(set)
    expected_recipients: dict[str, set[str]] = {}
    for record in sent:
        digests[record.loadtest_id].add(record.sha256)
        if record.reply_code == 250 and record.remote_recipients:
            recipients = expected_recipients.setdefault(record.loadtest_id, set())
            recipients.update(normalize_address(address) for address in record.remote_recipients)

    deliveries: dict[str, Counter[str]] = defaultdict(Counter)
    unexpected: list[str] = []
    corrupted: dict[str, None] = {}
    arrival_count = 0
    for arrival in arrivals:
        arrival_count += 1
        if arrival.loadtest_id is None:
            unexpected.append(f"<no {LOADTEST_ID_FIELD}: from {arrival.peer}, sha256 {arrival.sha256[:16]}>")
            continue
        if arrival.loadtest_id not in digests:
            unexpected.append(arrival.loadtest_id)
            continue
        if arrival.sha256 not in digests[arrival.loadtest_id]:
            corrupted[arrival.loadtest_id] = None
        # Indexing the defaultdict records the id as arrived even without recipients.
        deliveries[arrival.loadtest_id].update(normalize_address(address) for address in arrival.recipients)

    report = LossReport(accepted=len(expected_recipients), arrived=0, arrivals=arrival_count,
                        unexpected=unexpected, corrupted=list(corrupted))
    for loadtest_id, expected in expected_recipients.items():
        seen = deliveries.get(loadtest_id)
        if seen is None:
            report.missing.append(loadtest_id)
            continue
        report.arrived += 1
        not_seen = expected - seen.keys()
        if not_seen:
            report.missing_recipients[loadtest_id] = sorted(not_seen)

    for loadtest_id, seen in deliveries.items():
        extra_copies = max(seen.values(), default=1) - 1
        if extra_copies > 0:
            report.duplicates[loadtest_id] = extra_copies
        # Ids that were sent but not accepted have no expected set, so any
        # recipient of theirs is one the client addressed in some attempt.
        expected = expected_recipients.get(loadtest_id)
        if expected is not None:
            never_sent_to = seen.keys() - expected
            if never_sent_to:
                report.unexpected_recipients[loadtest_id] = sorted(never_sent_to)
    return report


def percentiles(values: Sequence[float], points: Sequence[float] = (50, 95, 99, 100)) -> dict[str, float | None]:
    """Return nearest-rank percentiles keyed "p50", "p99.9" and so on, with "max" for 100 and "min" for 0.

    The nearest-rank percentile p is the smallest value with at least p % of
    the values at or below it, so every result is one of the values. Each
    result is None when values is empty.
    """
    ordered = sorted(values)
    result: dict[str, float | None] = {}
    for point in points:
        if not 0 <= point <= 100:
            raise ValueError(f"percentile {point} is outside 0..100")
        if point == 100:
            key = "max"
        elif point == 0:
            key = "min"
        else:
            key = f"p{point:g}"
        if not ordered:
            result[key] = None
            continue
        rank = max(1, math.ceil(point / 100 * len(ordered)))
        result[key] = ordered[rank - 1]
    return result


@dataclass
class Sample:
    """One point of the time series taken during a run. The counts are totals since the start."""

    at: float
    offered: int
    accepted: int
    arrived: int
    queue_depth: int | None
    cpu_percent: float | None
    rss_bytes: int | None


class ProcessSampler:
    """CPU and memory use of a process and all its descendants, measured with psutil.

    Call sample() once per sampling interval. CPU used by a descendant that
    started and exited between two calls is not counted, and RSS counts
    pages shared between processes once per process, so it overstates use.
    """

    def __init__(self, root_pid: int):
        self._root = psutil.Process(root_pid)
        self._cpu_seconds: dict[tuple[int, float], float] = {}
        self._last_at = time.monotonic()
        self._measure()

    def sample(self) -> tuple[float, int]:
        """Return (CPU percent since the last call, summed RSS in bytes).

        CPU percent is CPU time over wall time, so it exceeds 100 when the
        processes use more than one core. Raises psutil.NoSuchProcess when
        the root process has exited.
        """
        previous = self._cpu_seconds
        rss, current = self._measure()
        now = time.monotonic()
        elapsed = now - self._last_at
        self._last_at = now

        # A process first seen now started after the last call, or was
        # missed by it, so all its CPU time falls in this interval.
        used = sum(seconds - previous.get(key, 0.0) for key, seconds in current.items())
        cpu_percent = 100.0 * used / elapsed if elapsed > 0 else 0.0
        return cpu_percent, rss

    def _measure(self) -> tuple[int, dict[tuple[int, float], float]]:
        processes = [self._root]
        try:
            processes += self._root.children(recursive=True)
        except psutil.NoSuchProcess:
            pass

        rss = 0
        cpu_seconds: dict[tuple[int, float], float] = {}
        for process in processes:
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    rss += process.memory_info().rss
                    # The creation time distinguishes a reused pid from the old process.
                    cpu_seconds[(process.pid, process.create_time())] = times.user + times.system
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                if process is self._root and not self._root.is_running():
                    raise
        self._cpu_seconds = cpu_seconds
        return rss, cpu_seconds


def summarize(sent: Sequence[Sent], arrivals: Sequence[Arrival], samples: Sequence[Sample],
              duration: float) -> dict[str, Any]:
    """Compute the figures of a run: rates, latencies, reply codes, the loss check and resource use.

    duration is the run's length in seconds, used for every rate. Time to 250
    runs from offered_at to replied_at. Accept to arrival runs from the first
    250 for an id to its first arrival, and can be slightly negative because
    the sink may record a message before the client reads the 250.
    """
    if duration <= 0:
        raise ValueError(f"duration must be positive, got {duration}")

    report = loss_check(sent, arrivals)

    accepted = [record for record in sent if record.reply_code == 250]
    time_to_250 = [record.replied_at - record.offered_at for record in accepted if record.replied_at is not None]
    accepted_at: dict[str, float] = {}
    for record in accepted:
        if record.replied_at is not None:
            earliest = accepted_at.get(record.loadtest_id, record.replied_at)
            accepted_at[record.loadtest_id] = min(earliest, record.replied_at)
    first_arrival_at: dict[str, float] = {}
    for arrival in arrivals:
        if arrival.loadtest_id is not None:
            earliest = first_arrival_at.get(arrival.loadtest_id, arrival.at)
            first_arrival_at[arrival.loadtest_id] = min(earliest, arrival.at)
    accept_to_arrival = [first_arrival_at[loadtest_id] - replied_at
                         for loadtest_id, replied_at in accepted_at.items() if loadtest_id in first_arrival_at]

    reply_codes = Counter("none" if record.reply_code is None else str(record.reply_code) for record in sent)
    queue_depths = [sample.queue_depth for sample in samples if sample.queue_depth is not None]
    rss_values = [sample.rss_bytes for sample in samples if sample.rss_bytes is not None]
    cpu_values = [sample.cpu_percent for sample in samples if sample.cpu_percent is not None]

    return {
        "duration_s": duration,
        "offered": len(sent),
        "offered_by_kind": dict(Counter(record.kind for record in sent)),
        "accepted": len(accepted),
        "arrived": report.arrived,
        "offered_per_s": len(sent) / duration,
        "accepted_per_s": len(accepted) / duration,
        "arrived_per_s": report.arrived / duration,
        "time_to_250_s": percentiles(time_to_250),
        "accept_to_arrival_s": percentiles(accept_to_arrival),
        "reply_codes": dict(sorted(reply_codes.items())),
        "loss": report.to_dict(),
        "peak_queue_depth": max(queue_depths, default=None),
        "peak_rss_bytes": max(rss_values, default=None),
        "mean_cpu_percent": sum(cpu_values) / len(cpu_values) if cpu_values else None,
    }


def write_json(path: Path, summary: dict[str, Any], samples: Sequence[Sample], config: dict[str, Any]) -> None:
    """Write config, summary and samples to path as one JSON document.

    The file is written under a temporary name and renamed, so a reader never
    sees half a file. NaN and infinity raise ValueError because JSON has no
    such numbers.
    """
    document = {"config": config, "summary": summary, "samples": [asdict(sample) for sample in samples]}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as file:
        json.dump(document, file, indent=2, allow_nan=False)
        file.write("\n")
    os.replace(temporary, path)


def write_plots(directory: Path, samples: Sequence[Sample], sent: Sequence[Sent],
                arrivals: Sequence[Arrival]) -> list[Path]:
    """Draw the run as PNG files in directory and return their paths.

    throughput.png: offered, accepted and arrived messages per second.
    latency.png: percentiles of time to 250 and of accept to arrival, per
    bucket of offer time. queue_depth.png: queue depth from the samples.
    resources.png: CPU and RSS from the samples. Buckets are 1 s wide, or 5 s
    for runs over 5 minutes. Time 0 is chosen by _time_origins.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    directory.mkdir(parents=True, exist_ok=True)
    start, sample_start = _time_origins(samples, sent, arrivals)
    ends = ([record.offered_at for record in sent] + [arrival.at for arrival in arrivals]
            + [record.replied_at for record in sent if record.replied_at is not None])
    span = max(ends, default=start) - start
    bucket = 1.0 if span <= 300 else 5.0

    def save(figure: Figure, name: str) -> Path:
        FigureCanvasAgg(figure)
        path = directory / name
        figure.savefig(path, dpi=100)
        return path

    paths = [
        save(_throughput_figure(Figure(figsize=(10, 5), layout="tight"), sent, arrivals, start, bucket),
             "throughput.png"),
        save(_latency_figure(Figure(figsize=(10, 7), layout="tight"), sent, arrivals, start, bucket),
             "latency.png"),
        save(_queue_figure(Figure(figsize=(10, 4), layout="tight"), samples, sample_start), "queue_depth.png"),
        save(_resources_figure(Figure(figsize=(10, 6), layout="tight"), samples, sample_start), "resources.png"),
    ]
    return paths


def _time_origins(samples: Sequence[Sample], sent: Sequence[Sent],
                  arrivals: Sequence[Arrival]) -> tuple[float, float]:
    """Return the times drawn as 0 for messages and for samples.

    Sample.at may be monotonic time, like the message times, or seconds since
    sampling began. When the samples' range overlaps the messages' range they
    are taken to share the clock and the earliest time of either is 0.
    Otherwise each starts at its own earliest time.
    NOTE: seconds since sampling began look like monotonic time when the
    machine booted less than a run's length ago, and then the two curves
    are shifted against each other by the uptime at the start.
    """
    event_times = ([record.offered_at for record in sent] + [arrival.at for arrival in arrivals]
                   + [record.replied_at for record in sent if record.replied_at is not None])
    sample_times = [sample.at for sample in samples]
    if not event_times or not sample_times:
        only = min(event_times or sample_times, default=0.0)
        return only, only
    if min(sample_times) <= max(event_times) and min(event_times) <= max(sample_times):
        shared = min(min(event_times), min(sample_times))
        return shared, shared
    return min(event_times), min(sample_times)


def _rate_series(times: Iterable[float], start: float, bucket: float) -> tuple[list[float], list[float]]:
    """Count events per bucket and return (bucket start times, events per second)."""
    counts = Counter(int((at - start) // bucket) for at in times)
    if not counts:
        return [], []
    indexes = range(min(0, min(counts)), max(counts) + 1)
    return [index * bucket for index in indexes], [counts.get(index, 0) / bucket for index in indexes]


def _throughput_figure(figure: Any, sent: Sequence[Sent], arrivals: Sequence[Arrival],
                       start: float, bucket: float) -> Any:
    axes = figure.add_subplot()
    series = {
        "offered": [record.offered_at for record in sent],
        "accepted (250)": [record.replied_at for record in sent
                           if record.reply_code == 250 and record.replied_at is not None],
        "arrived": [arrival.at for arrival in arrivals],
    }
    for label, times in series.items():
        x, y = _rate_series(times, start, bucket)
        if x:
            # Repeat the last value at the bucket's end so that its step has a width.
            x.append(x[-1] + bucket)
            y.append(y[-1])
        axes.step(x, y, where="post", label=label)
    axes.set_ylim(bottom=0)
    axes.set_title(f"Throughput ({bucket:g} s buckets)")
    axes.set_xlabel("time since start (s)")
    axes.set_ylabel("messages per second")
    axes.legend()
    axes.grid(True, alpha=0.3)
    return figure


def _percentile_series(pairs: Iterable[tuple[float, float]], start: float,
                       bucket: float) -> tuple[list[float], dict[str, list[float]]]:
    """Group (time, value) pairs by bucket of time and return the p50, p95 and p99 of each bucket."""
    groups: dict[int, list[float]] = defaultdict(list)
    for at, value in pairs:
        groups[int((at - start) // bucket)].append(value)
    x = [index * bucket for index in sorted(groups)]
    series: dict[str, list[float]] = {"p50": [], "p95": [], "p99": []}
    for index in sorted(groups):
        values = percentiles(groups[index], (50, 95, 99))
        for key in series:
            series[key].append(values[key])
    return x, series


def _latency_figure(figure: Any, sent: Sequence[Sent], arrivals: Sequence[Arrival],
                    start: float, bucket: float) -> Any:
    first_arrival_at: dict[str, float] = {}
    for arrival in arrivals:
        if arrival.loadtest_id is not None:
            first_arrival_at[arrival.loadtest_id] = min(first_arrival_at.get(arrival.loadtest_id, arrival.at),
                                                        arrival.at)
    accepted = [record for record in sent if record.reply_code == 250 and record.replied_at is not None]
    panels = [
        ("Time to 250", [(record.offered_at, record.replied_at - record.offered_at) for record in accepted]),
        ("Accept to arrival", [(record.offered_at, first_arrival_at[record.loadtest_id] - record.replied_at)
                               for record in accepted if record.loadtest_id in first_arrival_at]),
    ]
    for position, (title, pairs) in enumerate(panels, start=1):
        axes = figure.add_subplot(2, 1, position)
        x, series = _percentile_series(pairs, start, bucket)
        for label, values in series.items():
            axes.plot(x, values, marker=".", label=label)
        axes.set_title(f"{title} by offer time ({bucket:g} s buckets)")
        axes.set_xlabel("offer time since start (s)")
        axes.set_ylabel("seconds")
        if x:
            axes.legend()
        else:
            _mark_empty(axes)
        axes.grid(True, alpha=0.3)
    return figure


def _queue_figure(figure: Any, samples: Sequence[Sample], start: float) -> Any:
    axes = figure.add_subplot()
    points = [(sample.at - start, sample.queue_depth) for sample in samples if sample.queue_depth is not None]
    if points:
        axes.plot([x for x, _ in points], [y for _, y in points])
    else:
        _mark_empty(axes)
    axes.set_title("Queue depth")
    axes.set_xlabel("time since start (s)")
    axes.set_ylabel("messages in queue")
    axes.grid(True, alpha=0.3)
    return figure


def _resources_figure(figure: Any, samples: Sequence[Sample], start: float) -> Any:
    cpu_axes = figure.add_subplot(2, 1, 1)
    cpu = [(sample.at - start, sample.cpu_percent) for sample in samples if sample.cpu_percent is not None]
    if cpu:
        cpu_axes.plot([x for x, _ in cpu], [y for _, y in cpu])
    else:
        _mark_empty(cpu_axes)
    cpu_axes.set_title("CPU of the MTA's processes (100 % is one core)")
    cpu_axes.set_ylabel("percent")
    cpu_axes.grid(True, alpha=0.3)

    rss_axes = figure.add_subplot(2, 1, 2)
    rss = [(sample.at - start, sample.rss_bytes / 2**20) for sample in samples if sample.rss_bytes is not None]
    if rss:
        rss_axes.plot([x for x, _ in rss], [y for _, y in rss])
    else:
        _mark_empty(rss_axes)
    rss_axes.set_title("Summed RSS of the MTA's processes")
    rss_axes.set_xlabel("time since start (s)")
    rss_axes.set_ylabel("MiB")
    rss_axes.grid(True, alpha=0.3)
    return figure


def _mark_empty(axes: Any) -> None:
    axes.text(0.5, 0.5, "no data", transform=axes.transAxes, ha="center", va="center")


class Progress:
    """A one-line progress display on a terminal, redrawn in place with a carriage return.

    total is the number of messages to send, or None when it is not known in
    advance. The line is redrawn at most every interval seconds, and always
    when done reaches total.
    """

    def __init__(self, total: int | None, stream: TextIO | None = None, interval: float = 0.2):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self._started_at = time.monotonic()
        self._drawn_at = -math.inf
        self._width = 0

    def update(self, done: int, accepted: int, arrived: int) -> None:
        """Redraw the line with counts that are totals since the start."""
        now = time.monotonic()
        finished = self.total is not None and done >= self.total
        if now - self._drawn_at < self.interval and not finished:
            return
        self._drawn_at = now
        elapsed = now - self._started_at
        rate = done / elapsed if elapsed > 0 else 0.0
        progress = f"{done}/{self.total}" if self.total is not None else f"{done}"
        line = f"{progress} sent  {rate:,.0f} msg/s  accepted {accepted}  arrived {arrived}"
        # Spaces clear what a longer previous line left behind.
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def finish(self) -> None:
        """End the line so that later output starts on a new one."""
        if self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
