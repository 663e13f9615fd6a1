"""A scripted SMTP sink that plays a remote MX on a loopback address.

It records every accepted message with the peer address of the connection,
so tests can check the MTA's bound source address. A script sets the replies
to RCPT or DATA, a delay before the first RCPT of successive connections and
a delay before the reply to successive end-of-data.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


class _LongLineSmtp(SMTP):
    # A receiver that takes lines over 998 octets, as RFC 5322 section 2.1.1 recommends.
    line_length_limit = 1024 * 1024


class _LongLineController(Controller):
    def factory(self) -> SMTP:
        return _LongLineSmtp(self.handler, **self.SMTP_kwargs)


@dataclass
class Received:
    peer: str
    # The client's port identifies the connection: one port, one connection.
    peer_port: int
    sender: str
    recipients: list[str]
    data: bytes
    at: float = field(default_factory=time.monotonic)
    # The name the client gave in EHLO or HELO.
    helo: str = ""


@dataclass
class Script:
    # Replies used in order for successive RCPT commands; then "250 OK".
    rcpt_replies: deque = field(default_factory=deque)
    # Replies used in order for successive end-of-data; then a 250.
    data_replies: deque = field(default_factory=deque)
    # Seconds to wait before replying to the first RCPT, for successive connections.
    rcpt_delays: deque = field(default_factory=deque)
    # Seconds to wait after successive end-of-data before replying. A client
    # that disconnects meanwhile cancels the wait, and nothing is recorded.
    data_delays: deque = field(default_factory=deque)


class _Handler:
    def __init__(self, sink: "Sink"):
        self.sink = sink

    async def handle_RCPT(self, server, session, envelope, address, options):
        script = self.sink.script
        if not envelope.rcpt_tos:
            self.sink.rcpt_seen.set()
            with self.sink.lock:
                self.sink.in_transaction += 1
                self.sink.max_in_transaction = max(self.sink.max_in_transaction, self.sink.in_transaction)
            with self.sink.lock:
                delay = script.rcpt_delays.popleft() if script.rcpt_delays else 0.0
            await asyncio.sleep(delay)
        with self.sink.lock:
            reply = script.rcpt_replies.popleft() if script.rcpt_replies else None
        if reply is not None and not reply.startswith("2"):
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.sink.data_seen.set()
        with self.sink.lock:
            delay = self.sink.script.data_delays.popleft() if self.sink.script.data_delays else 0.0
        await asyncio.sleep(delay)
        with self.sink.lock:
            self.sink.in_transaction -= 1
            reply = self.sink.script.data_replies.popleft() if self.sink.script.data_replies else None
            if reply is not None and not reply.startswith("2"):
                return reply
            self.sink.messages.append(Received(
                peer=session.peer[0], peer_port=session.peer[1], sender=envelope.mail_from, recipients=list(envelope.rcpt_tos),
                data=envelope.original_content, helo=session.host_name or ""))
            self.sink.arrived.set()
        return "250 2.0.0 OK stored"

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        with self.sink.lock:
            self.sink.ehlos += 1
        session.host_name = hostname
        if not self.sink.offer_8bitmime:
            responses = [line for line in responses if line[4:] != "8BITMIME"]
        if self.sink.offer_pipelining:
            # aiosmtpd reads pipelined commands in order but does not list the extension itself.
            responses = [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_QUIT(self, server, session, envelope):
        with self.sink.lock:
            self.sink.quits += 1
        return "221 2.0.0 Bye"


class Sink:
    def __init__(self, host: str, port: int, accept_long_lines: bool = False, offer_8bitmime: bool = True,
                 offer_pipelining: bool = True, **smtp_parameters):
        self.host = host
        self.port = port
        # Whether EHLO lists 8BITMIME. Without it the sink still takes 8-bit data, so tests can see what arrives.
        self.offer_8bitmime = offer_8bitmime
        self.offer_pipelining = offer_pipelining
        self.script = Script()
        self.messages: list[Received] = []
        # Without TLS each connection sends EHLO once, so this counts connections.
        self.ehlos = 0
        # Transactions between their first RCPT and DATA, now and at most: the
        # parallel deliveries the client ran. Only DATA ends a transaction here.
        self.in_transaction = 0
        self.max_in_transaction = 0
        self.quits = 0
        self.lock = threading.Lock()
        self.arrived = threading.Event()
        self.rcpt_seen = threading.Event()
        # Set when a whole message has arrived, before the reply to it.
        self.data_seen = threading.Event()
        controller = _LongLineController if accept_long_lines else Controller
        self._controller = controller(_Handler(self), hostname=host, port=port, ready_timeout=10, **smtp_parameters)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Wait until at least ``count`` messages arrived; return all of them."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        with self.lock:
            return list(self.messages)


@contextmanager
def sink_on(host: str, port: int, accept_long_lines: bool = False, offer_8bitmime: bool = True,
            offer_pipelining: bool = True, **smtp_parameters) -> Iterator[Sink]:
    """Run a sink for the length of a with block."""
    server = Sink(host, port, accept_long_lines, offer_8bitmime, offer_pipelining, **smtp_parameters)
    server.start()
    try:
        yield server
    finally:
        server.stop()
