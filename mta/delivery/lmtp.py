"""Delivery to a mailbox server over LMTP (RFC 2033), such as Dovecot's lmtp service.

LMTP is SMTP without queueing on the server side: LHLO replaces EHLO, and
after the final dot the server sends one reply per accepted recipient, so
each recipient's delivery succeeds or fails on its own. A connection lost
after the final dot defers the recipients without a reply yet, because the
server may have stored the message for some of them.

aiosmtplib reads one reply after DATA, so this short client speaks the
protocol on asyncio streams itself. The server is the operator's own, on
loopback or a UNIX socket, so each attempt opens its own connection.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from mta.delivery.body import BodyReadError, MessageBody
from mta.delivery.outcome import Outcome, Reply
from mta.smtp.dotstuff import DotStuffer

# Stream buffer limit. RFC 5321 section 4.5.3.1.5 sets 512 octets per reply line, so a longer line is an error.
_MAX_LINE = 4096
_MAX_REPLY_LINES = 100
_REPLY_LINE = re.compile(rb"^([2-5]\d\d)([ -])(.*)$")


@dataclass(frozen=True)
class LmtpDestination:
    """The address of an LMTP server: a UNIX socket path, or a host and port."""

    text: str
    path: str = ""
    host: str = ""
    port: int = 0


def parse_destination(text: str) -> LmtpDestination:
    """Parse ``unix:/path``, ``host:port`` or ``[ipv6]:port``; raise ValueError naming the form expected."""
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path.startswith("/"):
            raise ValueError(f"expected unix:/absolute/path, got {text!r}")
        return LmtpDestination(text, path=path)

    host, separator, port_text = text.rpartition(":")
    if not separator or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"expected 'unix:/path', 'host:port' or '[ipv6]:port', got {text!r}")
    return LmtpDestination(text, host=host.strip("[]"), port=int(port_text))


class LmtpError(Exception):
    """The session broke off or the server sent something that is not an LMTP reply."""


@dataclass(frozen=True)
class LmtpSettings:
    helo_name: str
    connect_timeout: float
    command_timeout: float
    data_timeout: float


class LmtpSession:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, settings: LmtpSettings):
        self.reader = reader
        self.writer = writer
        self.settings = settings
        self.extensions: set[str] = set()

    async def reply(self, timeout: float) -> Reply:
        lines = []
        while len(lines) < _MAX_REPLY_LINES:
            try:
                raw = await asyncio.wait_for(self.reader.readuntil(b"\n"), timeout)
            except TimeoutError:
                raise LmtpError(f"no reply within {timeout:g} s") from None
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as error:
                raise LmtpError(f"connection lost: {error!r}") from None
            match = _REPLY_LINE.match(raw.rstrip(b"\r\n"))
            if match is None:
                raise LmtpError(f"malformed reply line {raw[:80]!r}")
            lines.append(match.group(3).decode("utf-8", "replace"))
            if match.group(2) == b" ":
                return Reply(int(match.group(1)), "\n".join(lines))
        raise LmtpError(f"reply longer than {_MAX_REPLY_LINES} lines")

    async def _drain(self) -> None:
        try:
            await asyncio.wait_for(self.writer.drain(), self.settings.data_timeout)
        except TimeoutError:
            raise LmtpError(f"the server took no data for {self.settings.data_timeout:g} s") from None
        except ConnectionError as error:
            raise LmtpError(f"connection lost while sending data: {error!r}") from None

    async def command(self, line: str, encoding: str = "ascii") -> Reply:
        self.writer.write(line.encode(encoding) + b"\r\n")
        return await self.reply(self.settings.command_timeout)

    async def greet(self) -> Reply | None:
        """Read the greeting and send LHLO; return the refusal, or None when the session is ready."""
        greeting = await self.reply(self.settings.command_timeout)
        if greeting.code != 220:
            return greeting
        hello = await self.command(f"LHLO {self.settings.helo_name}")
        if hello.code != 250:
            return hello
        self.extensions = {line.split(" ", 1)[0].upper() for line in hello.text.split("\n")[1:]}
        return None

    async def send_data(self, body: MessageBody, accepted: list[str], outcome: Outcome) -> None:
        """Send DATA and the body, then record the one reply per accepted recipient."""
        start = await self.command("DATA")
        if start.code != 354:
            outcome.add_all(accepted, start)
            return

        stuffer = DotStuffer()
        async for piece in body.chunks():
            self.writer.write(stuffer.feed(piece))
            await self._drain()
        self.writer.write(stuffer.end())

        for index, recipient in enumerate(accepted):
            try:
                outcome.add(recipient, await self.reply(self.settings.data_timeout))
            except LmtpError as error:
                # Some recipients may already hold the message: only the unanswered ones are retried.
                outcome.add_all(accepted[index:], Reply(451, f"4.4.2 LMTP reply missing after data: {error}"))
                raise


async def deliver_lmtp(destination: LmtpDestination, settings: LmtpSettings, sender: str,
                       recipients: list[str], body: MessageBody) -> Outcome:
    """Deliver one message to recipients of a local domain through the LMTP server at destination."""
    outcome = Outcome(relay=f"lmtp[{destination.text}]")
    try:
        session = await _open(destination, settings)
    except (TimeoutError, OSError) as error:
        outcome.add_all(recipients, Reply(451, f"4.4.1 connection to LMTP server {destination.text} failed: "
                                               f"{error!r}"))
        outcome.connection_failed = True
        return outcome

    try:
        await _transaction(session, sender, recipients, body, outcome)
    except LmtpError as error:
        _defer_unanswered(outcome, recipients, Reply(451, f"4.4.2 LMTP session with {destination.text} failed: "
                                                          f"{error}"))
    except BodyReadError as error:
        # The session is closed below before the end of data, so nothing was delivered.
        _defer_unanswered(outcome, recipients, Reply(451, f"4.3.0 reading the queued message failed: {error}"))
    finally:
        session.writer.close()
    return outcome


async def _open(destination: LmtpDestination, settings: LmtpSettings) -> LmtpSession:
    if destination.path:
        opening = asyncio.open_unix_connection(destination.path, limit=_MAX_LINE)
    else:
        opening = asyncio.open_connection(destination.host, destination.port, limit=_MAX_LINE)
    reader, writer = await asyncio.wait_for(opening, settings.connect_timeout)
    return LmtpSession(reader, writer, settings)


def _defer_unanswered(outcome: Outcome, recipients: list[str], reply: Reply) -> None:
    answered = {recipient for recipient, _ in outcome.delivered + outcome.deferred + outcome.failed}
    outcome.add_all([r for r in recipients if r not in answered], reply)


async def _transaction(session: LmtpSession, sender: str, recipients: list[str], body: MessageBody,
                       outcome: Outcome) -> None:
    refusal = await session.greet()
    if refusal is not None:
        outcome.add_all(recipients, _temporary(refusal))
        return

    options = _mail_options(session, sender, recipients, body)
    if options is None:
        outcome.add_all(recipients, Reply(553, "5.6.7 the LMTP server does not support SMTPUTF8, which the "
                                               "UTF-8 addresses need"))
        return
    encoding = "utf-8" if "SMTPUTF8" in options else "ascii"

    mail = await session.command(f"MAIL FROM:<{sender}>{options}", encoding)
    if mail.code != 250:
        outcome.add_all(recipients, mail)
        return

    accepted = []
    for recipient in recipients:
        reply = await session.command(f"RCPT TO:<{recipient}>", encoding)
        if reply.code == 250:
            accepted.append(recipient)
        else:
            outcome.add(recipient, reply)

    if accepted:
        await session.send_data(body, accepted, outcome)
    else:
        await session.command("RSET")
    session.writer.write(b"QUIT\r\n")


def _mail_options(session: LmtpSession, sender: str, recipients: list[str], body: MessageBody) -> str | None:
    """Return the MAIL parameters, or None when UTF-8 addresses meet a server without SMTPUTF8."""
    options = ""
    if "8BITMIME" in session.extensions and not body.ascii:
        options += " BODY=8BITMIME"
    if sender.isascii() and all(recipient.isascii() for recipient in recipients):
        return options
    if "SMTPUTF8" not in session.extensions:
        return None
    return options + " SMTPUTF8"


def _temporary(reply: Reply) -> Reply:
    """Turn a refused greeting or LHLO into a deferral: the mailbox server is the operator's own and will recover."""
    if reply.code >= 500:
        return Reply(451, f"4.3.0 LMTP server refused the session: {reply}")
    return reply
