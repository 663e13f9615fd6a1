"""A fast scripted SMTP sink that plays the remote MX hosts in a load test.

It is an asyncio Protocol that reads in bulk and finds the end of data with
one search per read, because aiosmtpd's line-by-line DATA loop cannot keep
up with thousands of messages per second on one core. It speaks just enough
ESMTP for a sink: EHLO, HELO, MAIL, RCPT, DATA, RSET, NOOP and QUIT, with
PIPELINING and several transactions per connection, but no STARTTLS or AUTH.

It listens only on loopback addresses and records each accepted message as
an Arrival. SinkBehaviour makes it slow, or makes it fail or lose a chosen
share of messages, from a seeded random generator.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from loadtest.results import content_digest, loadtest_id_of

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_SIZE = 64 * 2**20
HOSTNAME = "sink.loadtest.invalid"
LISTEN_BACKLOG = 1024
# Attempts to find a port that is free on every address when port 0 is given.
PORT_ATTEMPTS = 20
# Maximum length of a command line, CRLF included. RFC 5321 section 4.5.3.1.4
# allows 512 octets, and extensions such as SIZE and BODY make it longer.
MAX_COMMAND_LINE = 4096
MAX_RECIPIENTS = 1000
# Reading pauses while this much input waits behind a delayed reply.
MAX_PENDING_INPUT = 1 * 2**20

_MAIL = re.compile(rb"MAIL FROM:[ \t]*<([^<>]*)>(.*)", re.IGNORECASE)
_RCPT = re.compile(rb"RCPT TO:[ \t]*<([^<>]+)>(.*)", re.IGNORECASE)
_SIZE_PARAMETER = re.compile(rb"(?:^|[ \t])SIZE=([0-9]{1,20})(?:[ \t]|$)", re.IGNORECASE)
_END_OF_DATA = b"\r\n.\r\n"


@dataclass(frozen=True)
class SinkBehaviour:
    """Delays and failures of a LoadSink. Each rate is a probability from 0 to 1."""

    latency: float = 0.0  # seconds added before each reply to RCPT and to end of data
    tempfail_rate: float = 0.0  # share of messages rejected with 451 4.3.0 at end of data
    permfail_rate: float = 0.0  # share of recipients rejected with 550 5.1.1 at RCPT
    # Share of messages after whose final dot the sink closes the connection
    # without replying and without recording the message, so the sender must
    # retry it.
    disconnect_after_data_rate: float = 0.0
    # Share of messages accepted with 250 but not recorded, as by a sink that
    # loses mail, so that the loss check can be shown to fail.
    drop_rate: float = 0.0
    seed: int = 1

    def __post_init__(self) -> None:
        if not (self.latency >= 0 and self.latency != float("inf")):
            raise ValueError(f"latency must be a finite number of seconds >= 0, got {self.latency}")
        for name in ("tempfail_rate", "permfail_rate", "disconnect_after_data_rate", "drop_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {rate}")


@dataclass
class Arrival:
    """A message that the sink accepted with 250 and recorded."""

    loadtest_id: str | None  # from the X-Loadtest-Id field, None if absent
    sha256: str  # content_digest of the message as received, after undoing dot-stuffing
    recipients: tuple[str, ...]
    peer: str  # IP address of the client
    at: float  # time.monotonic() when the 250 was sent
    sender: str = ""  # reverse-path of MAIL FROM, "" for a bounce


@dataclass
class _Transaction:
    sender: str
    recipients: list[str] = field(default_factory=list)


class LoadSink:
    """SMTP sink listening on one port on several loopback addresses.

    Messages over max_message_size octets, after undoing dot-stuffing, get
    552 at end of data, and input beyond that is discarded while it is read.
    The counters are connections, transactions (ends of data reached),
    tempfails, permfails (one per recipient), disconnects, drops and oversize.
    The first ``sample_count`` recorded messages are also kept whole in
    ``samples``, for checks of what a relay added, such as a DKIM signature.
    """

    def __init__(self, addresses: list[str], port: int = 0, behaviour: SinkBehaviour = SinkBehaviour(),
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, sample_count: int = 0):
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {port}")
        if max_message_size <= 0:
            raise ValueError(f"max_message_size must be positive, got {max_message_size}")
        self.addresses = list(addresses)
        self.port = port
        self.behaviour = behaviour
        self.max_message_size = max_message_size
        self.arrivals: list[Arrival] = []
        self.sample_count = sample_count
        self.samples: list[bytes] = []
        self.counters: dict[str, int] = dict.fromkeys(
            ("connections", "transactions", "tempfails", "permfails", "disconnects", "drops", "oversize"), 0)
        self.random = random.Random(behaviour.seed)
        self._servers: list[asyncio.Server] = []
        self._connections: set[_SinkProtocol] = set()

    async def start(self) -> None:
        """Listen on every address on the same port.

        Raises ValueError, before listening anywhere, when an address is not
        an IP address in 127.0.0.0/8 or ::1. With port 0 it picks a port
        that is free on all addresses and stores it in self.port.
        """
        if self._servers:
            raise RuntimeError("the sink is already listening")
        if not self.addresses:
            raise ValueError("the sink needs at least one address to listen on")
        addresses = [_loopback_address(address) for address in self.addresses]

        loop = asyncio.get_running_loop()
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = self.port
            servers: list[asyncio.Server] = []
            try:
                for address in addresses:
                    server = await loop.create_server(lambda: _SinkProtocol(self), host=address, port=port,
                                                      backlog=LISTEN_BACKLOG)
                    servers.append(server)
                    port = server.sockets[0].getsockname()[1]
            except OSError as error:
                for server in servers:
                    server.close()
                # Another program may hold the port picked on the first
                # address on one of the others, so pick again.
                if self.port != 0 or error.errno != errno.EADDRINUSE or attempt == PORT_ATTEMPTS:
                    raise
                continue
            self._servers = servers
            self.port = port
            logger.info("sink listening on port %d of %s", port, ", ".join(addresses))
            return

    async def stop(self) -> None:
        """Stop listening and close every open connection."""
        for server in self._servers:
            server.close()
        for connection in list(self._connections):
            connection.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers = []
        logger.info("sink stopped: %s, %d arrivals", self.counters, len(self.arrivals))

    async def __aenter__(self) -> LoadSink:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def _loopback_address(address: str) -> str:
    """Return the address in canonical form, or raise ValueError unless it is 127.0.0.0/8 or ::1."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"invalid sink address {address!r}: expected an IP address in 127.0.0.0/8 or ::1") from None
    # Checked by hand because is_loopback of an IPv4-mapped IPv6 address
    # differs between Python versions.
    if ip.version == 4 and ip in ipaddress.ip_network("127.0.0.0/8"):
        return str(ip)
    if ip == ipaddress.IPv6Address("::1"):
        return str(ip)
    raise ValueError(f"sink address {address} is not a loopback address: use one in 127.0.0.0/8 or ::1")


class _SinkProtocol(asyncio.Protocol):
    """One SMTP session, served from a byte buffer.

    Commands are handled in order as they arrive, so pipelined commands get
    their replies in order. Replies produced by one read are written
    together. A delayed reply stops the processing of later input until the
    reply is sent.
    """

    def __init__(self, sink: LoadSink):
        self.sink = sink
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.buffer = bytearray()
        self.output: list[bytes] = []
        self.transaction: _Transaction | None = None
        self.in_data = False
        self.data_scan_from = 0
        self.data_discarded = 0  # octets of an oversize message already thrown away
        self.delayed: asyncio.TimerHandle | None = None
        self.writing_paused = False
        self.reading_paused = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        self.peer = peername[0] if peername else ""
        self.sink.counters["connections"] += 1
        self.sink._connections.add(self)
        transport.write(f"220 {HOSTNAME} ESMTP load-test sink\r\n".encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.delayed is not None:
            self.delayed.cancel()
        self.sink._connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.buffer += data
        if self.delayed is None:
            self.process()
        self.update_reading()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.update_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.update_reading()

    def update_reading(self) -> None:
        """Pause reading while the client does not read its replies or input piles up behind a delay."""
        if self.closed or self.transport is None:
            return
        pause = self.writing_paused or (self.delayed is not None and len(self.buffer) > MAX_PENDING_INPUT)
        if pause and not self.reading_paused:
            self.transport.pause_reading()
        elif not pause and self.reading_paused:
            self.transport.resume_reading()
        self.reading_paused = pause

    def close(self) -> None:
        self.flush()
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def flush(self) -> None:
        if self.output and self.transport is not None and not self.closed:
            self.transport.write(b"".join(self.output))
        self.output.clear()

    def process(self) -> None:
        """Handle every complete command and message in the buffer, then write the replies."""
        while not self.closed and self.delayed is None:
            if self.in_data:
                if not self.take_message():
                    break
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                if len(self.buffer) > MAX_COMMAND_LINE:
                    logger.warning("closing connection from %s: command line longer than %d octets",
                                   self.peer, MAX_COMMAND_LINE)
                    self.output.append(b"500 5.5.2 Line too long\r\n")
                    self.close()
                break
            line = bytes(self.buffer[:end])
            del self.buffer[:end + 2]
            self.handle_command(line)
        self.flush()

    def reply_later(self, reply: bytes, action: Callable[[], None] | None = None) -> None:
        """Queue reply after the behaviour's latency, running action just before it is sent."""
        latency = self.sink.behaviour.latency
        if latency <= 0:
            if action is not None:
                action()
            self.output.append(reply)
            return
        loop = asyncio.get_running_loop()
        self.delayed = loop.call_later(latency, self.send_delayed, reply, action)

    def send_delayed(self, reply: bytes, action: Callable[[], None] | None) -> None:
        self.delayed = None
        if self.closed:
            return
        if action is not None:
            action()
        self.output.append(reply)
        self.process()
        self.update_reading()

    def handle_command(self, line: bytes) -> None:
        verb = line[:4].upper()
        rest = line[4:]
        if verb == b"EHLO" and rest.startswith(b" ") and rest.strip():
            self.transaction = None
            self.output.append(f"250-{HOSTNAME}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n"
                               f"250 SIZE {self.sink.max_message_size}\r\n".encode())
        elif verb == b"HELO" and rest.startswith(b" ") and rest.strip():
            self.transaction = None
            self.output.append(f"250 {HOSTNAME}\r\n".encode())
        elif verb in (b"EHLO", b"HELO"):
            self.output.append(b"501 5.5.4 Domain name required\r\n")
        elif verb == b"MAIL":
            self.handle_mail(line)
        elif verb == b"RCPT":
            self.handle_rcpt(line)
        elif verb == b"DATA" and not rest.strip():
            self.handle_data()
        elif verb == b"RSET" and not rest.strip():
            self.transaction = None
            self.output.append(b"250 2.0.0 OK\r\n")
        elif verb == b"NOOP":
            self.output.append(b"250 2.0.0 OK\r\n")
        elif verb == b"QUIT" and not rest.strip():
            self.output.append(b"221 2.0.0 Bye\r\n")
            self.close()
        elif verb in (b"DATA", b"RSET", b"QUIT"):
            self.output.append(b"501 5.5.4 Syntax error: no parameters allowed\r\n")
        else:
            logger.debug("unrecognized command from %s: %r", self.peer, line[:80])
            self.output.append(b"500 5.5.2 Command not recognized\r\n")

    def handle_mail(self, line: bytes) -> None:
        if self.transaction is not None:
            self.output.append(b"503 5.5.1 Nested MAIL command\r\n")
            return
        match = _MAIL.fullmatch(line)
        if match is None:
            self.output.append(b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n")
            return
        # Other parameters are accepted without a check, because a sink
        # should take what the MTA under test sends.
        size = _SIZE_PARAMETER.search(match.group(2))
        if size is not None and int(size.group(1)) > self.sink.max_message_size:
            self.output.append(b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")
            return
        self.transaction = _Transaction(sender=match.group(1).decode("utf-8", "surrogateescape"))
        self.output.append(b"250 2.1.0 OK\r\n")

    def handle_rcpt(self, line: bytes) -> None:
        if self.transaction is None:
            self.output.append(b"503 5.5.1 Need MAIL command\r\n")
            return
        match = _RCPT.fullmatch(line)
        if match is None:
            self.output.append(b"501 5.5.4 Syntax: RCPT TO:<address>\r\n")
            return
        if len(self.transaction.recipients) >= MAX_RECIPIENTS:
            self.output.append(b"452 4.5.3 Too many recipients\r\n")
            return
        sink = self.sink
        if sink.random.random() < sink.behaviour.permfail_rate:
            sink.counters["permfails"] += 1
            self.reply_later(b"550 5.1.1 Mailbox unavailable\r\n")
            return
        self.transaction.recipients.append(match.group(1).decode("utf-8", "surrogateescape"))
        self.reply_later(b"250 2.1.5 OK\r\n")

    def handle_data(self) -> None:
        if self.transaction is None:
            self.output.append(b"503 5.5.1 Need MAIL command\r\n")
            return
        if not self.transaction.recipients:
            self.output.append(b"554 5.5.1 No valid recipients\r\n")
            return
        self.in_data = True
        self.data_scan_from = 0
        self.data_discarded = 0
        self.output.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")

    def take_message(self) -> bool:
        """Take a complete message off the buffer and handle it. Return False when more input is needed."""
        buffer = self.buffer
        if not self.data_discarded and buffer.startswith(b".\r\n"):
            end = 0
            raw = b""
            consumed = 3
        else:
            end = buffer.find(_END_OF_DATA, self.data_scan_from)
            if end < 0:
                self.discard_oversize_input()
                return False
            raw = bytes(buffer[:end + 2])
            consumed = end + len(_END_OF_DATA)
        del buffer[:consumed]
        self.in_data = False
        self.data_scan_from = 0

        # Dot-stuffing (RFC 5321 section 4.5.2) doubled the dot at the start of
        # each line that began with one.
        if raw.startswith(b"."):
            raw = raw[1:]
        message = raw.replace(b"\r\n.", b"\r\n")
        size = self.data_discarded + len(message)
        self.data_discarded = 0
        self.end_of_data(message, size)
        return True

    def discard_oversize_input(self) -> None:
        """Note where to resume the search, and drop input once the message is too large to accept."""
        buffer = self.buffer
        # Keep what could be the start of a terminator split across reads.
        keep = len(_END_OF_DATA) - 1
        self.data_scan_from = max(0, len(buffer) - keep)
        # Dot-stuffing adds at most one octet to every three (".\r\n" becomes
        # "..\r\n"), so beyond this bound the message is surely too large.
        if len(buffer) > self.sink.max_message_size * 4 // 3 + keep:
            self.data_discarded += len(buffer) - keep
            del buffer[:-keep]
            self.data_scan_from = 0

    def end_of_data(self, message: bytes, size: int) -> None:
        sink = self.sink
        transaction = self.transaction
        assert transaction is not None
        self.transaction = None
        sink.counters["transactions"] += 1

        # Draw every number for every message, so that one seed gives the
        # same sequence whatever the rates.
        disconnect = sink.random.random() < sink.behaviour.disconnect_after_data_rate
        tempfail = sink.random.random() < sink.behaviour.tempfail_rate
        drop = sink.random.random() < sink.behaviour.drop_rate

        if size > sink.max_message_size:
            sink.counters["oversize"] += 1
            self.reply_later(b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")
        elif disconnect:
            sink.counters["disconnects"] += 1
            self.close()
        elif tempfail:
            sink.counters["tempfails"] += 1
            self.reply_later(b"451 4.3.0 Temporary failure, try again later\r\n")
        elif drop:
            sink.counters["drops"] += 1
            self.reply_later(b"250 2.0.0 OK\r\n")
        else:
            def record() -> None:
                sink.arrivals.append(Arrival(
                    loadtest_id=loadtest_id_of(message),
                    sha256=content_digest(message),
                    recipients=tuple(transaction.recipients),
                    peer=self.peer,
                    at=time.monotonic(),
                    sender=transaction.sender,
                ))
                if len(sink.samples) < sink.sample_count:
                    sink.samples.append(message)
            self.reply_later(b"250 2.0.0 OK\r\n", record)
