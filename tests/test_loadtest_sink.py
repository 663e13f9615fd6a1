"""The load-test sink (loadtest.sink) and the loss check and reports (loadtest.results).

The sink runs in the test's event loop on 127.0.0.1 and 127.0.0.2. Clients
are aiosmtplib, or a raw stream where the test needs pipelining or exact
bytes on the wire. Every connection goes to loopback.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from collections.abc import AsyncIterator, Callable

import aiosmtplib
import pytest

from loadtest.results import (
    LossReport,
    ProcessSampler,
    Progress,
    Sample,
    Sent,
    _time_origins,
    content_digest,
    loadtest_id_of,
    loss_check,
    percentiles,
    summarize,
    write_json,
    write_plots,
)
from loadtest.sink import Arrival, LoadSink, SinkBehaviour

ADDRESSES = ["127.0.0.1", "127.0.0.2"]
CLIENT_ADDRESS = "127.0.0.3"
SENDER = "load@example.com"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIMEOUT = 5.0


def build_message(loadtest_id: str | None, body: str = "Hello from the load test.\r\n") -> bytes:
    header = f"X-Loadtest-Id: {loadtest_id}\r\n" if loadtest_id is not None else ""
    return (f"{header}From: <{SENDER}>\r\nTo: <user@example.net>\r\nSubject: load {loadtest_id}\r\n\r\n"
            f"{body}").encode()


@pytest.fixture
async def make_sink() -> AsyncIterator[Callable[..., LoadSink]]:
    """Start sinks on ADDRESSES with the given behaviour, and stop them after the test."""
    sinks: list[LoadSink] = []

    async def start(max_message_size: int | None = None, **behaviour) -> LoadSink:
        extra = {} if max_message_size is None else {"max_message_size": max_message_size}
        sink = LoadSink(ADDRESSES, behaviour=SinkBehaviour(**behaviour), **extra)
        await sink.start()
        sinks.append(sink)
        return sink

    yield start
    for sink in sinks:
        await sink.stop()


async def smtp_client(sink: LoadSink, address: str = "127.0.0.2") -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(hostname=address, port=sink.port, timeout=TIMEOUT,
                             source_address=(CLIENT_ADDRESS, 0), start_tls=False)
    await client.connect()
    return client


class RawSession:
    """A plain SMTP connection for pipelining and exact bytes, with a timeout on every read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, sink: LoadSink, address: str = "127.0.0.1") -> RawSession:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address, sink.port), TIMEOUT)
        session = cls(reader, writer)
        greeting = await session.replies(1)
        assert greeting[0].startswith("220 ")
        return session

    async def replies(self, count: int) -> list[str]:
        """Read count replies and return the last line of each, multiline ones included."""
        result = []
        while len(result) < count:
            line = await asyncio.wait_for(self.reader.readline(), TIMEOUT)
            assert line.endswith(b"\r\n"), f"connection closed after {result}, read {line!r}"
            if line[3:4] != b"-":
                result.append(line.decode().rstrip("\r\n"))
        return result

    async def send(self, data: bytes, count: int) -> list[str]:
        self.writer.write(data)
        return await self.replies(count)

    async def read_eof(self) -> bytes:
        return await asyncio.wait_for(self.reader.read(), TIMEOUT)

    def close(self) -> None:
        self.writer.close()


def codes(replies: list[str]) -> list[int]:
    return [int(reply[:3]) for reply in replies]


# The sink


async def test_sink_records_messages_over_one_connection(make_sink):
    sink = await make_sink()
    messages = {f"one-{i}": build_message(f"one-{i}", f"Message number {i}.\r\n") for i in range(5)}
    recipients = ["a@example.net", "b@example.org"]

    client = await smtp_client(sink)
    for message in messages.values():
        errors, _ = await client.sendmail(SENDER, recipients, message)
        assert errors == {}
    await client.quit()

    assert [arrival.loadtest_id for arrival in sink.arrivals] == list(messages)
    for arrival in sink.arrivals:
        assert arrival.sha256 == content_digest(messages[arrival.loadtest_id])
        assert arrival.recipients == tuple(recipients)
        assert arrival.peer == CLIENT_ADDRESS
        assert arrival.sender == SENDER
    assert len({arrival.sha256 for arrival in sink.arrivals}) == 5
    assert sink.counters["connections"] == 1
    assert sink.counters["transactions"] == 5


async def test_sink_keeps_first_messages_as_samples():
    sink = LoadSink(ADDRESSES, sample_count=2)
    await sink.start()
    try:
        client = await smtp_client(sink)
        messages = [build_message(f"sample-{i}") for i in range(3)]
        for message in messages:
            await client.sendmail(SENDER, ["a@example.net"], message)
        await client.quit()
    finally:
        await sink.stop()

    assert sink.samples == messages[:2]
    assert len(sink.arrivals) == 3


async def test_sink_listens_on_every_address(make_sink):
    sink = await make_sink()

    for address in ADDRESSES:
        client = await smtp_client(sink, address)
        await client.sendmail(SENDER, ["user@example.net"], build_message(f"via-{address}"))
        await client.quit()

    assert [arrival.loadtest_id for arrival in sink.arrivals] == ["via-127.0.0.1", "via-127.0.0.2"]
    assert sink.counters["connections"] == 2


async def test_sink_answers_pipelined_commands_in_order(make_sink):
    sink = await make_sink()
    session = await RawSession.open(sink)

    ehlo = await session.send(b"EHLO client.example\r\n", 1)
    assert ehlo == [f"250 SIZE {64 * 2**20}"]

    first = build_message("piped-1")
    second = build_message("piped-2", "Second body.\r\n")
    replies = await session.send(b"MAIL FROM:<load@example.com>\r\nRCPT TO:<a@example.net>\r\n"
                                 b"RCPT TO:<b@example.net>\r\nDATA\r\n", 4)
    assert codes(replies) == [250, 250, 250, 354]

    # End of data, the next transaction and NOOP, all in one write.
    replies = await session.send(first + b".\r\nMAIL FROM:<>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n", 4)
    assert codes(replies) == [250, 250, 250, 354]
    replies = await session.send(second + b".\r\nNOOP\r\nRSET\r\nVRFY x\r\nQUIT\r\n", 5)
    assert codes(replies) == [250, 250, 250, 500, 221]
    assert await session.read_eof() == b""
    session.close()

    assert [arrival.loadtest_id for arrival in sink.arrivals] == ["piped-1", "piped-2"]
    assert sink.arrivals[0].recipients == ("a@example.net", "b@example.net")
    assert sink.arrivals[1].recipients == ("c@example.net",)
    assert sink.arrivals[1].sender == ""
    assert sink.arrivals[1].sha256 == content_digest(second)


async def test_sink_advertises_extensions(make_sink):
    sink = await make_sink()
    client = await smtp_client(sink)

    await client.ehlo()

    assert client.supports_extension("pipelining")
    assert client.supports_extension("8bitmime")
    assert client.esmtp_extensions["size"] == str(64 * 2**20)
    await client.quit()


async def test_sink_rejects_commands_out_of_sequence(make_sink):
    sink = await make_sink()
    session = await RawSession.open(sink)

    replies = await session.send(b"RCPT TO:<a@example.net>\r\nDATA\r\nHELO\r\nHELO client.example\r\n"
                                 b"MAIL FROM:<a@example.com>\r\nMAIL FROM:<b@example.com>\r\nDATA\r\n"
                                 b"RSET\r\nMAIL TO:<x>\r\nQUIT now\r\n", 10)

    assert codes(replies) == [503, 503, 501, 250, 250, 503, 554, 250, 501, 501]
    session.close()
    assert sink.arrivals == []


async def test_sink_undoes_dot_stuffing(make_sink):
    sink = await make_sink()
    body = ".leading dot\r\n..two dots\r\n.\r\nafter a lone dot\r\n"
    message = build_message("dots", body)

    # aiosmtplib stuffs the dots, and the digest shows whether the sink removed them.
    client = await smtp_client(sink)
    await client.sendmail(SENDER, ["user@example.net"], message)
    await client.quit()

    # The same lines stuffed by hand, the first line of the data included.
    session = await RawSession.open(sink)
    stuffed = (b".Subject: first line starts with a dot\r\nX-Loadtest-Id: raw-dots\r\n\r\n"
               b"..leading dot\r\n...two dots\r\n..\r\nafter a lone dot\r\n.\r\n")
    replies = await session.send(b"HELO client.example\r\nMAIL FROM:<a@example.com>\r\n"
                                 b"RCPT TO:<b@example.net>\r\nDATA\r\n", 4)
    assert codes(replies) == [250, 250, 250, 354]
    assert codes(await session.send(stuffed, 1)) == [250]
    session.close()

    assert [arrival.loadtest_id for arrival in sink.arrivals] == ["dots", "raw-dots"]
    assert sink.arrivals[0].sha256 == content_digest(message)
    assert sink.arrivals[1].sha256 == content_digest(b"Subject: x\r\n\r\n" + body.encode())


async def test_sink_accepts_empty_message(make_sink):
    sink = await make_sink()
    session = await RawSession.open(sink)

    replies = await session.send(b"HELO client.example\r\nMAIL FROM:<a@example.com>\r\n"
                                 b"RCPT TO:<b@example.net>\r\nDATA\r\n", 4)
    assert codes(replies) == [250, 250, 250, 354]
    assert codes(await session.send(b".\r\n", 1)) == [250]
    session.close()

    assert len(sink.arrivals) == 1
    assert sink.arrivals[0].loadtest_id is None
    assert sink.arrivals[0].sha256 == content_digest(b"")


async def test_sink_handles_end_of_data_split_across_writes(make_sink):
    sink = await make_sink()
    session = await RawSession.open(sink)
    await session.send(b"HELO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n", 4)

    message = build_message("split")
    pieces = [message + b"\r", b"\n.", b"\r", b"\n"]
    for piece in pieces[:-1]:
        session.writer.write(piece)
        await session.writer.drain()
        await asyncio.sleep(0.01)
    replies = await session.send(pieces[-1], 1)
    session.close()

    assert codes(replies) == [250]
    assert sink.arrivals[0].sha256 == content_digest(message + b"\r\n")


async def test_sink_tempfails_at_end_of_data(make_sink):
    sink = await make_sink(tempfail_rate=1.0)
    client = await smtp_client(sink)

    with pytest.raises(aiosmtplib.SMTPDataError) as raised:
        await client.sendmail(SENDER, ["user@example.net"], build_message("temp"))
    await client.quit()

    assert raised.value.code == 451
    assert "4.3.0" in raised.value.message
    assert sink.arrivals == []
    assert sink.counters["tempfails"] == 1
    assert sink.counters["transactions"] == 1


async def test_sink_permfails_each_recipient(make_sink):
    sink = await make_sink(permfail_rate=1.0)
    client = await smtp_client(sink)

    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as raised:
        await client.sendmail(SENDER, ["a@example.net", "b@example.net"], build_message("perm"))
    await client.quit()

    assert [error.code for error in raised.value.recipients] == [550, 550]
    assert all("5.1.1" in error.message for error in raised.value.recipients)
    assert sink.arrivals == []
    assert sink.counters["permfails"] == 2
    assert sink.counters["transactions"] == 0


async def test_sink_disconnects_after_data(make_sink):
    sink = await make_sink(disconnect_after_data_rate=1.0)
    session = await RawSession.open(sink)
    replies = await session.send(b"HELO client.example\r\nMAIL FROM:<a@example.com>\r\n"
                                 b"RCPT TO:<b@example.net>\r\nDATA\r\n", 4)
    assert codes(replies) == [250, 250, 250, 354]

    session.writer.write(build_message("cut") + b".\r\n")

    assert await session.read_eof() == b""
    session.close()
    assert sink.arrivals == []
    assert sink.counters["disconnects"] == 1


async def test_sink_drops_after_250(make_sink):
    sink = await make_sink(drop_rate=1.0)
    client = await smtp_client(sink)

    errors, _ = await client.sendmail(SENDER, ["user@example.net"], build_message("lost"))
    await client.quit()

    assert errors == {}
    assert sink.arrivals == []
    assert sink.counters["drops"] == 1


async def test_sink_delays_rcpt_and_data_replies(make_sink):
    latency = 0.2
    sink = await make_sink(latency=latency)
    client = await smtp_client(sink)

    started = time.monotonic()
    await client.sendmail(SENDER, ["user@example.net"], build_message("slow"))
    elapsed = time.monotonic() - started
    await client.quit()

    # One RCPT and one end of data, each delayed.
    assert elapsed >= 2 * latency
    assert len(sink.arrivals) == 1
    assert sink.arrivals[0].at - started >= 2 * latency


async def test_sink_keeps_pipelined_order_with_latency(make_sink):
    sink = await make_sink(latency=0.05)
    session = await RawSession.open(sink)

    replies = await session.send(b"HELO client.example\r\nMAIL FROM:<a@example.com>\r\n"
                                 b"RCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\nNOOP\r\nDATA\r\n", 6)
    assert codes(replies) == [250, 250, 250, 250, 250, 354]
    replies = await session.send(build_message("slow-piped") + b".\r\nNOOP\r\n", 2)
    session.close()

    assert codes(replies) == [250, 250]
    assert sink.arrivals[0].recipients == ("a@example.net", "b@example.net")


async def test_sink_rejects_non_loopback_addresses():
    for address in ("10.0.0.1", "192.0.2.1", "0.0.0.0", "::", "::ffff:127.0.0.1", "localhost", ""):
        sink = LoadSink(["127.0.0.1", address])
        with pytest.raises(ValueError):
            await sink.start()
        assert sink.port == 0


async def test_sink_rejects_invalid_behaviour():
    with pytest.raises(ValueError):
        SinkBehaviour(drop_rate=1.5)
    with pytest.raises(ValueError):
        SinkBehaviour(latency=-1)


async def test_sink_rejects_oversize_message_with_552(make_sink):
    limit = 1000
    sink = await make_sink(max_message_size=limit)
    session = await RawSession.open(sink)
    await session.send(b"HELO client.example\r\n", 1)
    transaction = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"

    # Just over the limit: buffered whole, rejected at end of data.
    just_over = build_message("over", "x" * (limit - 50) + "\r\n")
    assert len(just_over) > limit
    assert codes(await session.send(transaction, 3)) == [250, 250, 354]
    assert codes(await session.send(just_over + b".\r\n", 1)) == [552]

    # Far over the limit, in many writes: discarded while it is read.
    assert codes(await session.send(transaction, 3)) == [250, 250, 354]
    session.writer.write(build_message("far-over"))
    for _ in range(50):
        session.writer.write(b"y" * 998 + b"\r\n")
        await session.writer.drain()
    assert codes(await session.send(b".\r\n", 1)) == [552]

    # The connection stays usable.
    fits = build_message("fits")
    assert codes(await session.send(transaction, 3)) == [250, 250, 354]
    assert codes(await session.send(fits + b".\r\n", 1)) == [250]

    # SIZE announced over the limit is rejected at MAIL.
    assert codes(await session.send(f"MAIL FROM:<a@example.com> SIZE={limit + 1}\r\n".encode(), 1)) == [552]
    session.close()

    assert [arrival.loadtest_id for arrival in sink.arrivals] == ["fits"]
    assert sink.counters["oversize"] == 2


async def test_sink_counts_dot_stuffing_against_size_limit(make_sink):
    # A message of lone dots doubles in size on the wire but fits the limit.
    limit = 3000
    sink = await make_sink(max_message_size=limit)
    session = await RawSession.open(sink)
    message = b"Subject: dots\r\n\r\n" + b".\r\n" * 900
    stuffed = b"Subject: dots\r\n\r\n" + b"..\r\n" * 900
    assert len(message) <= limit < len(stuffed)

    await session.send(b"HELO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n", 4)
    assert codes(await session.send(stuffed + b".\r\n", 1)) == [250]
    session.close()

    assert sink.arrivals[0].sha256 == content_digest(message)


async def test_sink_picks_given_port(make_sink):
    first = await make_sink()
    second = LoadSink(["127.0.0.1"], port=first.port)

    with pytest.raises(OSError):
        await second.start()


# content_digest and ids


def test_content_digest_ignores_headers_and_line_endings():
    message = b"X-Loadtest-Id: a\r\nSubject: s\r\n\r\nline one\r\nline two\r\n"
    relayed = b"Received: from x\r\n\tby y; date\r\nDKIM-Signature: v=1\r\n" + message

    assert content_digest(relayed) == content_digest(message)
    assert content_digest(message.replace(b"\r\n", b"\n")) == content_digest(message)
    assert content_digest(message.rstrip(b"\r\n")) == content_digest(message)
    assert content_digest(message + b"tail\r\n") != content_digest(message)


def test_content_digest_without_header_section():
    assert content_digest(b"\r\nbody only\r\n") == content_digest(b"Subject: s\r\n\r\nbody only\r\n")
    assert content_digest(b"Subject: no body\r\n") == content_digest(b"")


def test_loadtest_id_only_from_header_section():
    assert loadtest_id_of(b"x-loadtest-id:  abc \r\nSubject: s\r\n\r\nbody\r\n") == "abc"
    assert loadtest_id_of(b"Subject: bounce\r\n\r\nX-Loadtest-Id: quoted\r\n") is None


# loss_check


def sent_record(loadtest_id: str, recipients: tuple[str, ...] = ("user@example.net",), code: int | None = 250,
                body: str = "Hello from the load test.\r\n") -> Sent:
    return Sent(loadtest_id=loadtest_id, kind="mx", offered_at=10.0, replied_at=10.5, reply_code=code,
                sha256=content_digest(build_message(loadtest_id, body)), remote_recipients=recipients)


def arrival_record(loadtest_id: str | None, recipients: tuple[str, ...] = ("user@example.net",),
                   body: str = "Hello from the load test.\r\n", at: float = 11.0) -> Arrival:
    return Arrival(loadtest_id=loadtest_id, sha256=content_digest(build_message(loadtest_id, body)),
                   recipients=recipients, peer=CLIENT_ADDRESS, at=at)


async def send_through_sink(sink: LoadSink, loadtest_ids: list[str]) -> list[Sent]:
    sent = []
    client = await smtp_client(sink)
    for loadtest_id in loadtest_ids:
        message = build_message(loadtest_id)
        offered_at = time.monotonic()
        await client.mail(SENDER)
        await client.rcpt("user@example.net")
        response = await client.data(message)
        sent.append(Sent(loadtest_id=loadtest_id, kind="mx", offered_at=offered_at, replied_at=time.monotonic(),
                         reply_code=response.code, sha256=content_digest(message),
                         remote_recipients=("user@example.net",)))
    await client.quit()
    return sent


async def test_loss_check_passes_clean_run(make_sink):
    sink = await make_sink()
    sent = await send_through_sink(sink, [f"clean-{i}" for i in range(10)])

    report = loss_check(sent, sink.arrivals)

    assert report.passed
    assert report.accepted == 10
    assert report.arrived == 10
    assert report.missing == []
    assert report.duplicates == {}


async def test_loss_check_fails_on_dropped_message(make_sink):
    clean_sink = await make_sink()
    dropping_sink = await make_sink(drop_rate=1.0)
    sent = await send_through_sink(clean_sink, ["kept-1", "kept-2"])
    sent += await send_through_sink(dropping_sink, ["dropped"])

    report = loss_check(sent, clean_sink.arrivals + dropping_sink.arrivals)

    assert [record.reply_code for record in sent] == [250, 250, 250]
    assert not report.passed
    assert report.missing == ["dropped"]
    assert report.accepted == 3
    assert report.arrived == 2


def test_loss_check_allows_duplicates():
    sent = [sent_record("dup"), sent_record("single")]
    arrivals = [arrival_record("dup"), arrival_record("dup"), arrival_record("dup"), arrival_record("single")]

    report = loss_check(sent, arrivals)

    assert report.passed
    assert report.duplicates == {"dup": 2}
    assert report.arrivals == 4


def test_loss_check_counts_copies_per_recipient():
    recipients = ("a@example.net", "b@example.org")
    sent = [sent_record("split", recipients)]
    arrivals = [arrival_record("split", ("a@example.net",)), arrival_record("split", ("b@EXAMPLE.org",))]

    report = loss_check(sent, arrivals)

    assert report.passed
    assert report.duplicates == {}


def test_loss_check_flags_missing_recipient():
    sent = [sent_record("partial", ("a@example.net", "b@example.org"))]

    report = loss_check(sent, [arrival_record("partial", ("a@example.net",))])

    assert not report.passed
    assert report.missing == []
    assert report.missing_recipients == {"partial": ["b@example.org"]}


def test_loss_check_flags_unexpected_recipient():
    report = loss_check([sent_record("misrouted")], [arrival_record("misrouted", ("other@example.net",))])

    assert not report.passed
    assert report.unexpected_recipients == {"misrouted": ["other@example.net"]}


def test_loss_check_flags_unexpected_arrivals():
    arrivals = [arrival_record("known"), arrival_record("never-sent"), arrival_record(None)]

    report = loss_check([sent_record("known")], arrivals)

    assert not report.passed
    assert len(report.unexpected) == 2
    assert report.unexpected[0] == "never-sent"
    assert report.unexpected[1].startswith("<no X-Loadtest-Id")


def test_loss_check_flags_corrupted_arrival():
    arrivals = [arrival_record("altered", body="Hello from the load tesT.\r\n")]

    report = loss_check([sent_record("altered")], arrivals)

    assert not report.passed
    assert report.corrupted == ["altered"]


def test_loss_check_ignores_rejected_messages():
    sent = [sent_record("rejected", code=451), sent_record("timed-out", code=None), sent_record("local", ())]

    report = loss_check(sent, [arrival_record("timed-out")])

    assert report.passed
    assert report.accepted == 0
    assert report.unexpected == []


def test_loss_check_accepts_retry_with_new_digest():
    # A client that retried an id after a timeout may have sent other content.
    sent = [sent_record("retried", code=None, body="first try\r\n"), sent_record("retried", body="second try\r\n")]

    report = loss_check(sent, [arrival_record("retried", body="first try\r\n")])

    assert report.passed


def test_loss_report_to_dict_limits_ids():
    report = LossReport(accepted=5, arrived=0, arrivals=0, missing=[f"m{i}" for i in range(5)])

    summary = report.to_dict(limit=2)

    assert summary["passed"] is False
    assert summary["missing_count"] == 5
    assert summary["missing"] == ["m0", "m1"]


# Statistics and output


def test_percentiles_known_data():
    values = [float(value) for value in range(100, 0, -1)]

    assert percentiles(values) == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    assert percentiles(values, (0, 99.9)) == {"min": 1.0, "p99.9": 100.0}
    assert percentiles([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0, "max": 7.0}
    assert percentiles([1.0, 2.0, 3.0, 4.0], (25, 50, 75)) == {"p25": 1.0, "p50": 2.0, "p75": 3.0}


def test_percentiles_empty_and_invalid():
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None, "max": None}
    with pytest.raises(ValueError):
        percentiles([1.0], (101,))


def run_data() -> tuple[list[Sent], list[Arrival], list[Sample]]:
    sent, arrivals, samples = [], [], []
    for i in range(300):
        offered_at = 100.0 + i * 0.02
        record = sent_record(f"run-{i}")
        record.offered_at = offered_at
        record.replied_at = offered_at + 0.01 + (i % 10) * 0.001
        record.reply_code = 250 if i % 30 else 451
        sent.append(record)
        if record.reply_code == 250:
            arrivals.append(arrival_record(record.loadtest_id, at=record.replied_at + 0.05))
    for second in range(7):
        samples.append(Sample(at=100.0 + second, offered=min(300, 50 * second), accepted=0, arrived=0,
                              queue_depth=second * 3, cpu_percent=40.0 + second, rss_bytes=(50 + second) * 2**20))
    return sent, arrivals, samples


def test_summarize_run():
    sent, arrivals, samples = run_data()

    summary = summarize(sent, arrivals, samples, duration=6.0)

    assert summary["offered"] == 300
    assert summary["accepted"] == 290
    assert summary["offered_per_s"] == pytest.approx(50.0)
    assert summary["reply_codes"] == {"250": 290, "451": 10}
    assert summary["time_to_250_s"]["max"] == pytest.approx(0.019)
    assert summary["accept_to_arrival_s"]["p50"] == pytest.approx(0.05)
    assert summary["loss"]["passed"] is True
    assert summary["peak_queue_depth"] == 18
    assert summary["peak_rss_bytes"] == 56 * 2**20
    assert summary["mean_cpu_percent"] == pytest.approx(43.0)


def test_write_json_round_trip(tmp_path):
    sent, arrivals, samples = run_data()
    summary = summarize(sent, arrivals, samples, duration=6.0)
    path = tmp_path / "results" / "run.json"

    write_json(path, summary, samples, {"messages": 300})

    document = json.loads(path.read_text())
    assert document["config"] == {"messages": 300}
    assert document["summary"]["accepted"] == 290
    assert len(document["samples"]) == 7
    assert document["samples"][2]["queue_depth"] == 6


def test_write_plots_produces_png_files(tmp_path):
    sent, arrivals, samples = run_data()

    paths = write_plots(tmp_path, samples, sent, arrivals)

    assert {path.name for path in paths} >= {"throughput.png", "latency.png", "queue_depth.png"}
    for path in paths:
        assert path.parent == tmp_path
        assert path.read_bytes().startswith(PNG_SIGNATURE)
        assert path.stat().st_size > 1000


def test_time_origins_for_relative_samples():
    sent, arrivals, samples = run_data()
    relative = [Sample(at=sample.at - 100.0 + 1.0, offered=0, accepted=0, arrived=0, queue_depth=None,
                       cpu_percent=None, rss_bytes=None) for sample in samples]

    assert _time_origins(samples, sent, arrivals) == (100.0, 100.0)
    assert _time_origins(relative, sent, arrivals) == (100.0, 1.0)


def test_write_plots_without_data(tmp_path):
    paths = write_plots(tmp_path, [], [], [])

    for path in paths:
        assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_process_sampler_measures_own_process():
    sampler = ProcessSampler(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass

    cpu_percent, rss = sampler.sample()

    assert cpu_percent > 0
    assert rss > 10 * 2**20


def test_progress_draws_one_line():
    stream = io.StringIO()
    progress = Progress(total=10, stream=stream, interval=60)

    progress.update(5, accepted=4, arrived=3)
    progress.update(6, accepted=5, arrived=4)
    progress.update(10, accepted=9, arrived=8)
    progress.finish()

    output = stream.getvalue()
    # The second update falls within the interval, but the last one completes the total.
    assert output.count("\r") == 2
    assert output.endswith("\n")
    assert "10/10 sent" in output
    assert "accepted 9" in output
    assert "arrived 8" in output


def test_progress_without_total():
    stream = io.StringIO()
    progress = Progress(total=None, stream=stream, interval=0)

    progress.update(7, accepted=6, arrived=5)
    progress.finish()

    assert stream.getvalue().startswith("\r7 sent")
