"""Sending a large body in pieces: dot-stuffing across cuts, and a body streamed from the store over SMTP."""

from __future__ import annotations

import asyncio
import secrets

import uvloop

from mta.delivery.body import WHOLE_MAX, MessageBody
from mta.delivery.connections import ConnectionCache
from mta.delivery.resolve import Target
from mta.delivery.smtp import ClientSettings, CrlfSMTP, SmtpDeliverer, Transaction
from mta.delivery.sources import SourceAddresses
from mta.delivery.tls_policy import TlsPolicies, TlsRequirement
from mta.delivery.stored_body import load_body
from mta.smtp.dotstuff import DotStuffer
from mta.storage import stream
from mta.storage.local import LocalStore

# Periods at the start, after a CRLF, doubled and alone on a line, and a last line without CRLF.
TRICKY = b".first\r\n..two\r\n.\r\nmid.dle\r\n\r\n.\r\n\r.\r\n.last"


def stuff_whole(message: bytes) -> bytes:
    """Dot-stuff and terminate a message held whole, as the client did before it sent pieces."""
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + (b".\r\n" if not stuffed or stuffed.endswith(b"\r\n") else b"\r\n.\r\n")


def stuff_pieces(pieces: list[bytes]) -> bytes:
    stuffer = DotStuffer()
    return b"".join([stuffer.feed(piece) for piece in pieces] + [stuffer.end()])


def unstuff(data: bytes) -> bytes:
    """Undo dot-stuffing as a receiver does and drop the end of data."""
    assert data.endswith(b"\r\n.\r\n") or data == b".\r\n"
    lines = data[:-3].split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def test_dotstuffer_every_cut():
    expected = stuff_whole(TRICKY)
    for first in range(len(TRICKY) + 1):
        for second in range(first, len(TRICKY) + 1):
            pieces = [TRICKY[:first], TRICKY[first:second], TRICKY[second:]]
            assert stuff_pieces(pieces) == expected, (first, second)


def test_dotstuffer_single_octets():
    assert stuff_pieces([bytes([octet]) for octet in TRICKY]) == stuff_whole(TRICKY)
    assert unstuff(stuff_whole(TRICKY)) == TRICKY + b"\r\n"


def test_dotstuffer_empty_and_crlf_ends():
    assert stuff_pieces([]) == b".\r\n"
    assert stuff_pieces([b"", b""]) == b".\r\n"
    assert stuff_pieces([b"a\r", b"\n"]) == b"a\r\n.\r\n"
    assert stuff_pieces([b"a\r"]) == b"a\r\r\n.\r\n"


def large_message(size: int) -> bytes:
    """Return a CRLF message of about size octets whose dot lines fall on every offset of the 64 KiB chunks."""
    lines = [b"Subject: large", b"", b".starts with a period"]
    length = 0
    while length < size:
        # Line lengths cycle through 1 to 97 octets, so line starts drift across chunk boundaries.
        line = b"." * (1 + len(lines) % 3) + secrets.token_hex(len(lines) % 48).encode()
        lines.append(line)
        length += len(line) + 2
    return b"\r\n".join(lines) + b"\r\n.final line without CRLF"


async def serve_sink(received: list[bytes]) -> asyncio.Server:
    """Start an SMTP server on loopback that records each message as sent, still dot-stuffed."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink\r\n")
        while line := await reader.readline():
            if line.startswith(b"EHLO"):
                writer.write(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif line.startswith(b"DATA"):
                writer.write(b"354 go ahead\r\n")
                data = bytearray()
                while (chunk := await reader.readline()) not in (b".\r\n", b""):
                    data += chunk
                if not chunk:
                    return
                received.append(bytes(data + b".\r\n"))
                writer.write(b"250 2.0.0 stored\r\n")
            elif line.startswith(b"QUIT"):
                writer.write(b"221 bye\r\n")
                return
            else:
                writer.write(b"250 2.0.0 ok\r\n")
            await writer.drain()

    return await asyncio.start_server(handle, "127.0.0.1", 0, limit=2**20)


async def send(body: MessageBody) -> tuple[Transaction, list[bytes]]:
    """Send body in one transaction to a new sink; return the transaction and what the sink recorded."""
    received: list[bytes] = []
    server = await serve_sink(received)
    try:
        client = CrlfSMTP(hostname="127.0.0.1", port=server.sockets[0].getsockname()[1], timeout=5,
                          start_tls=False)
        await client.connect()
        transaction = Transaction("scripted", ["rcpt@example.net"])
        await asyncio.wait_for(transaction.run(client, "sender@example.net", body, 5), 20)
        client.close()
    finally:
        server.close()
    return transaction, received


async def stored(tmp_path, message: bytes) -> tuple[LocalStore, bytes]:
    store = LocalStore(tmp_path)
    await store.start()
    key = secrets.token_bytes(32)
    await store.put("QSTREAM", stream.encrypt_bytes(message, key, "data-key-1", "QSTREAM"))
    return store, key


def test_streamed_body_arrives_whole(tmp_path):
    message = large_message(3 * 2**20)

    async def scenario():
        store, key = await stored(tmp_path, message)
        body = await load_body(store, "QSTREAM", key, "QSTREAM")
        return body, *await send(body)

    body, transaction, received = uvloop.run(scenario())
    assert body.streamed
    assert body.size == len(message)
    assert body.header == b"Subject: large\r\n"
    assert transaction.outcome.delivered == [("rcpt@example.net", transaction.outcome.delivered[0][1])]
    assert len(received) == 1
    assert received[0] == stuff_whole(message)
    assert unstuff(received[0]) == message + b"\r\n"


def test_small_stored_body_held_whole(tmp_path):
    message = b"Subject: small\r\n\r\n" + b"x" * (WHOLE_MAX - 18)

    async def scenario():
        store, key = await stored(tmp_path, message)
        return await load_body(store, "QSTREAM", key, "QSTREAM")

    body = uvloop.run(scenario())
    assert not body.streamed
    assert body.size == len(message)


def test_body_changed_before_send_ends_no_data(tmp_path):
    message = large_message(2 * 2**20)

    async def scenario():
        store, key = await stored(tmp_path, message)
        body = await load_body(store, "QSTREAM", key, "QSTREAM")
        # The object is cut short between the checking pass and the send.
        object_path = next(path for path in tmp_path.rglob("*") if path.is_file() and "QSTREAM" in path.name)
        object_path.write_bytes(object_path.read_bytes()[:-100])
        return await send(body)

    transaction, received = uvloop.run(scenario())
    assert received == []
    assert transaction.outcome.delivered == []
    assert [recipient for recipient, _ in transaction.outcome.deferred] == ["rcpt@example.net"]
    assert transaction.outcome.deferred[0][1].enhanced == "4.3.0"
    assert not transaction.clean


async def serve_one_per_transaction(received: list[bytes], after_data, quits: list[bool]) -> asyncio.Server:
    """Start an SMTP server on loopback without 8BITMIME that takes one RCPT per transaction.

    after_data runs once each message has arrived, before the server replies 250 to it.
    """
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink\r\n")
        recipients = 0
        while line := await reader.readline():
            if line.startswith(b"EHLO"):
                writer.write(b"250 sink\r\n")
            elif line.startswith((b"MAIL", b"RSET")):
                recipients = 0
                writer.write(b"250 2.0.0 ok\r\n")
            elif line.startswith(b"RCPT"):
                recipients += 1
                writer.write(b"250 2.1.5 ok\r\n" if recipients == 1 else b"452 4.5.3 too many recipients\r\n")
            elif line.startswith(b"DATA"):
                writer.write(b"354 go ahead\r\n")
                data = bytearray()
                while (chunk := await reader.readline()) not in (b".\r\n", b""):
                    data += chunk
                received.append(bytes(data))
                after_data()
                writer.write(b"250 2.0.0 stored\r\n")
            elif line.startswith(b"QUIT"):
                quits.append(True)
                writer.write(b"221 bye\r\n")
                return
            await writer.drain()

    return await asyncio.start_server(handle, "127.0.0.1", 0, limit=2**20)


def test_body_gone_keeps_earlier_transaction(tmp_path):
    # 8-bit text makes the client convert the body, reading it again, for a server without 8BITMIME.
    message = large_message(WHOLE_MAX + 4096) + "\r\ncafé".encode()
    received: list[bytes] = []
    quits: list[bool] = []

    async def scenario():
        store, key = await stored(tmp_path, message)
        body = await load_body(store, "QSTREAM", key, "QSTREAM")
        object_path = next(path for path in tmp_path.rglob("*") if path.is_file() and "QSTREAM" in path.name)
        server = await serve_one_per_transaction(received, object_path.unlink, quits)
        cache = ConnectionCache(30.0, 100)
        deliverer = SmtpDeliverer(ClientSettings(SourceAddresses.from_list([], "mta.test"), 5, 20), cache,
                                  TlsPolicies("none", {}))
        target = Target("sink.test", "127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            outcome = await asyncio.wait_for(deliverer.deliver(
                "sender@example.net", ["first@example.net", "second@example.net"], body, [target],
                TlsRequirement("none")), 20)
            await cache.close()
        finally:
            server.close()
        return body, outcome

    body, outcome = uvloop.run(scenario())
    assert body.streamed
    assert len(received) == 1
    assert [recipient for recipient, _ in outcome.delivered] == ["first@example.net"]
    assert [recipient for recipient, _ in outcome.deferred] == ["second@example.net"]
    assert outcome.deferred[0][1].enhanced == "4.3.0"
    assert quits == [True]
