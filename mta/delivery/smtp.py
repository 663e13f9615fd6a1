"""Deliver one message to one domain's recipients over SMTP with aiosmtplib.

Targets are tried in order until one accepts the transaction. Connections
leave from a configured source address of the target's family. STARTTLS
follows the destination's TLS requirement (mta.delivery.tls_policy): by
default it is used when offered, TLS 1.2 minimum, without a certificate
check (opportunistic TLS, RFC 7435). A host that cannot meet a required
level defers the mail to it, and the next host is tried.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass

import aiosmtplib
import dns.asyncresolver

from mta import metrics
from mta.delivery import dane, pipelining, tlsrpt
from mta.delivery.body import BodyReadError, MessageBody
from mta.delivery.connections import Connection, ConnectionCache
from mta.delivery.outcome import Outcome, Reply
from mta.delivery.resolve import Target
from mta.delivery.sources import SourceAddresses, SourcePool
from mta.delivery.tls_policy import TlsPolicies, TlsRequirement
from mta.smtp.dotstuff import DotStuffer
from mta.smtp.longlines import LineTooLong, seven_bit

log = logging.getLogger("mta.delivery")

# Seconds to wait for the reply to MAIL, RCPT or RSET (RFC 5321 section 4.5.3.2).
COMMAND_TIMEOUT = 300.0

# The attributes of aiosmtplib's SMTPProtocol that CrlfSMTP.send_data uses.
_INTERNALS = ("_command_lock", "_response_pending", "_paused", "_drain_helper")

# Sent after DATA went ahead with no recipient accepted.
EMPTY_BODY = MessageBody.whole(b"")


@dataclass(frozen=True)
class ClientSettings:
    sources: SourceAddresses
    connect_timeout: float
    data_timeout: float


class CrlfSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client, sending queued bodies in pieces without normalising them again.

    Queued bodies are CRLF-only: the SMTP side rejects bare CR and LF before
    a message is queued, and bounces are built with CRLF. Yet aiosmtplib runs
    two regular expressions over every message before DATA, which took a
    third of the delivery loop's time on attachments, and checking the line
    endings again took a fifth. aiosmtplib also needs the whole message in
    memory. This client dot-stuffs each piece as it goes (mta.smtp.dotstuff)
    and waits for the socket to drain between pieces. It falls back to
    aiosmtplib's own DATA, with the message joined, when the protocol object
    lacks the attributes used here (checked with aiosmtplib 5.1).
    """

    async def send_data(self, body: MessageBody, timeout: float) -> aiosmtplib.SMTPResponse:
        """Send DATA and the body; raise SMTPDataError unless the server takes it."""
        protocol = self.protocol
        if not all(hasattr(protocol, name) for name in _INTERNALS):
            return await super().data(await body.read(), timeout=timeout)

        await self._ehlo_or_helo_if_needed()
        try:
            async with protocol._command_lock:
                protocol._response_pending = True
                protocol.write(b"DATA\r\n")
                start = await protocol.read_response(timeout=timeout)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            self.close()
            raise
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        return await self.send_body(body, timeout)

    async def send_body(self, body: MessageBody, timeout: float) -> aiosmtplib.SMTPResponse:
        """Send the body after DATA got 354; raise SMTPDataError unless the server takes it.

        A body that cannot be read to its end raises BodyReadError after the
        connection is closed, so the server never receives the end of data.
        """
        try:
            async with self.protocol._command_lock:
                response = await self._write_body(body, timeout)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, BodyReadError):
            self.close()
            raise
        if response.code != 250:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response

    async def _write_body(self, body: MessageBody, timeout: float) -> aiosmtplib.SMTPResponse:
        protocol = self.protocol
        stuffer = DotStuffer()
        protocol._response_pending = True
        async for piece in body.chunks():
            protocol.write(stuffer.feed(piece))
            # Checked first because wait_for() costs a task, and a small body never fills the buffer.
            if protocol._paused:
                await self._drain(timeout)
        protocol.write(stuffer.end())
        return await protocol.read_response(timeout=timeout)

    async def _drain(self, timeout: float) -> None:
        """Wait until the transport's buffer is below its high-water mark, as StreamWriter.drain() does."""
        try:
            await asyncio.wait_for(self.protocol._drain_helper(), timeout)
        except TimeoutError:
            raise aiosmtplib.SMTPTimeoutError(f"the server took no data for {timeout:g} s") from None
        except ConnectionError as error:
            raise aiosmtplib.SMTPServerDisconnected(f"connection lost while sending data: {error}") from error


class TlsFailure(Exception):
    """A host could not meet the destination's TLS requirement."""

    def __init__(self, reply: Reply, result_type: str):
        super().__init__(str(reply))
        self.reply = reply
        # The failure's RFC 8460 result type, for TLS reports.
        self.result_type = result_type


class SmtpDeliverer:
    def __init__(self, settings: ClientSettings, cache: ConnectionCache, tls: TlsPolicies,
                 dane_resolver: dns.asyncresolver.Resolver | None = None):
        self.settings = settings
        self.cache = cache
        self.tls = tls
        # Looks up TLSA records for DNSSEC-secure hosts; None turns DANE off.
        self.dane_resolver = dane_resolver
        # Counts TLS sessions for TLS reports (RFC 8460); None turns counting off.
        self.reports: tlsrpt.TlsSessionCounter | None = None

    async def deliver(self, sender: str, recipients: list[str], body: MessageBody,
                      targets: list[Target], requirement: TlsRequirement = TlsRequirement("may"),
                      pool: SourcePool | None = None) -> Outcome:
        last_error = Reply(451, "4.4.1 no mail exchanger could be reached")
        connected = False
        domain_requirement = requirement
        for target in targets:
            source = self.settings.sources.pick(pool, target.address)
            if pool is not None and source is None:
                last_error = Reply(451, f"4.4.1 source pool {pool.name} has no address of the family of "
                                        f"{target.address}")
                continue
            try:
                requirement = await self._dane_requirement(target, domain_requirement)
            except dane.DaneLookupError as error:
                log.info("%s[%s] skipped: %s", target.host, target.address, error)
                last_error = Reply(451, f"4.7.5 {error}")
                metrics.OUTBOUND_TLS_FAILURES.labels(result_type=tlsrpt.DNSSEC_INVALID).inc()
                self._count(recipients, TlsRequirement("dane", "DANE"), target, tlsrpt.DNSSEC_INVALID, source)
                continue

            # A connection serves only destinations with the same requirement, verified for the same name.
            key = (target.address, target.port, source, requirement.mode,
                   target.host if requirement.mode in ("verify", "dane") else "")
            cached = self.cache.take(key)
            if cached is not None:
                outcome = await self._use(cached, key, sender, recipients, body)
                if outcome is not None:
                    outcome.source = source
                    return outcome

            relay = f"{target.host}[{target.address}]:{target.port}"
            try:
                connection = await self._connect(target, source, relay, requirement)
            except TlsFailure as error:
                log.info("TLS with %s failed: %s", relay, error.reply)
                last_error, connected = error.reply, True
                metrics.OUTBOUND_TLS_FAILURES.labels(result_type=error.result_type).inc()
                self._count(recipients, requirement, target, error.result_type, source)
                continue
            except aiosmtplib.SMTPResponseException as error:
                # Refused at the greeting, EHLO or STARTTLS: this host is deferred, the next one tried.
                log.info("%s refused the session: %s %s", relay, error.code, error.message)
                last_error, connected = Reply(451, f"4.4.2 {relay} refused the session: {error.code} "
                                                   f"{error.message}"), True
                continue
            except (aiosmtplib.SMTPException, OSError) as error:
                log.info("connect to %s failed: %s", relay, error)
                last_error = Reply(451, f"4.4.1 connection to {relay} failed: {error}")
                continue
            if connection.encrypted:
                self._count(recipients, requirement, target, tlsrpt.SUCCESS, source)
            outcome = await self._use(connection, key, sender, recipients, body, fresh=True)
            outcome.source = source
            return outcome

        # Hosts that accepted the connection but failed the TLS requirement are not dead: the site stays open.
        outcome = Outcome(relay="none", connection_failed=not connected)
        outcome.add_all(recipients, last_error)
        return outcome

    def _count(self, recipients: list[str], requirement: TlsRequirement, target: Target, result_type: str,
               source: str | None) -> None:
        """Count one TLS session, or a failure to set one up, for the TLS report of the recipients' domain."""
        if self.reports is None:
            return
        if requirement.source == "DANE":
            policy_type = "tlsa"
            policy = tuple(f"{r.usage} {r.selector} {r.matching_type} {r.data.hex()}" for r in requirement.tlsa)
        elif requirement.source == "MTA-STS":
            policy_type, policy = "sts", requirement.policy_lines
        else:
            policy_type, policy = "no-policy-found", ()
        domain = recipients[0].rpartition("@")[2]
        self.reports.record(domain, policy_type, policy, target.host, result_type, source or "", target.address)

    async def _dane_requirement(self, target: Target, requirement: TlsRequirement) -> TlsRequirement:
        """Return the DANE requirement where the host has secure TLSA records, else the domain's requirement.

        DANE takes precedence over MTA-STS (RFC 8461 section 2), and an entry
        of the TLS policy table over both.
        """
        if self.dane_resolver is None or not target.secure or requirement.source == "policy table":
            return requirement
        records = await dane.lookup_tlsa(self.dane_resolver, target.host, target.port)
        if records is None:
            return requirement
        return TlsRequirement("dane", "DANE", tuple(records))

    async def _connect(self, target: Target, source: str | None, relay: str,
                       requirement: TlsRequirement) -> Connection:
        client = CrlfSMTP(
            hostname=target.address,
            port=target.port,
            local_hostname=self.settings.sources.helo_name(source),
            source_address=(source, 0) if source else None,
            timeout=self.settings.connect_timeout,
            start_tls=False,
        )
        await client.connect()
        try:
            encrypted = await self._secure(client, target, relay, requirement)
        except BaseException:
            client.close()
            raise
        return Connection(client, relay, encrypted=encrypted)

    async def _secure(self, client: CrlfSMTP, target: Target, relay: str, requirement: TlsRequirement) -> bool:
        """Start TLS at the required level and return whether it started; raise TlsFailure when a required level cannot be met."""
        if requirement.mode == "none":
            return False
        await client._ehlo_or_helo_if_needed()
        if not client.supports_extension("starttls"):
            if requirement.required:
                raise TlsFailure(Reply(451, f"4.7.4 TLS is required ({requirement.mode}, by {requirement.source}) "
                                            f"but {relay} does not offer STARTTLS"), tlsrpt.STARTTLS_NOT_SUPPORTED)
            return False

        try:
            await client.starttls(server_hostname=target.host.rstrip("."), tls_context=self.tls.context(requirement),
                                  timeout=self.settings.connect_timeout)
        except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as error:
            if requirement.required:
                raise TlsFailure(Reply(451, f"4.7.5 TLS with {relay} failed ({requirement.mode}, by "
                                            f"{requirement.source}): {error}"), tlsrpt.failure_type(error)) from error
            raise
        ssl_object = client.get_transport_info("ssl_object")
        if requirement.mode == "dane":
            failure = dane.verify(ssl_object, list(requirement.tlsa), target.host)
            if failure is not None:
                raise TlsFailure(Reply(451, f"4.7.5 DANE authentication of {relay} failed: {failure}"),
                                 tlsrpt.TLSA_INVALID)
        if ssl_object is not None:
            verified = "verified" if requirement.mode in ("verify", "dane") else "not verified"
            log.info("TLS to %s: %s %s, certificate %s", relay, ssl_object.version(), ssl_object.cipher()[0],
                     verified)
        return True

    async def _use(self, connection: Connection, key: tuple, sender: str, recipients: list[str], body: MessageBody,
                    fresh: bool = False) -> Outcome | None:
        """Run the transactions for recipients on connection; keep the connection for reuse when they ended cleanly.

        Returns None when a reused connection turns out to be closed before
        the server replied to MAIL, so the caller opens a new one.
        """
        outcome = Outcome(relay=connection.relay)
        pending = recipients
        while pending:
            transaction = Transaction(connection.relay, pending)
            try:
                await transaction.run(connection.client, sender, body, self.settings.data_timeout)
            except StaleConnection:
                self.cache.discard(connection)
                if pending is recipients and not fresh:
                    return None
                transaction.lost("before MAIL")
                outcome.merge(transaction.outcome)
                return outcome

            outcome.merge(transaction.outcome)
            if not transaction.clean:
                self.cache.discard(connection)
                return outcome
            # Recipients beyond the server's limit per transaction go in the next one at once
            # (RFC 5321 section 4.5.3.1.10), not after a retry interval.
            pending = transaction.postponed
        self.cache.put(key, connection)
        return outcome


def _command(verb: str, options: list[str], encoding: str) -> bytes:
    # Addresses were parsed by the SMTP server before queueing, so they contain no line break.
    return (" ".join([verb, *options]) + "\r\n").encode(encoding)


def _too_many_recipients(reply: Reply) -> bool:
    """Return whether a RCPT refusal is about the number of recipients (X.5.3), not about the recipient."""
    return reply.enhanced in ("4.5.3", "5.5.3") or (
        reply.code in (452, 552) and "too many recipients" in reply.text.lower())


def _read_failed(error: BodyReadError) -> Reply:
    """Return the reply that defers recipients whose message could not be read from the body store."""
    return Reply(451, f"4.3.0 reading the queued message failed: {error}")


class StaleConnection(Exception):
    """The connection closed before the server replied to the first command of a transaction."""


class Transaction:
    """One MAIL, its RCPTs and DATA, with each recipient's reply collected in an Outcome."""

    def __init__(self, relay: str, recipients: list[str]):
        self.recipients = recipients
        self.accepted: list[str] = []
        # Recipients not tried because the server allows no more in this transaction.
        self.postponed: list[str] = []
        self.outcome = Outcome(relay=relay)
        self.relay = relay
        # Whether the connection ended in a state fit for another transaction.
        self.clean = False
        self.encoding = "ascii"

    async def run(self, client: CrlfSMTP, sender: str, body: MessageBody, data_timeout: float) -> None:
        if not body.ascii and not client.supports_extension("8bitmime"):
            body = await self._seven_bit(body)
            if body is None:
                return
        options = self._mail_options(client, sender, body)
        if options is None:
            self.clean = True
            return
        self.encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
        if client.supports_extension("pipelining") and pipelining.enable(client.protocol):
            await self._run_pipelined(client, sender, options, body, data_timeout)
            return

        try:
            await client.mail(sender, options=options, encoding=self.encoding, timeout=COMMAND_TIMEOUT)
        except aiosmtplib.SMTPResponseException as error:
            self.outcome.add_all(self.recipients, Reply(error.code, error.message))
            await self._reset(client)
            return
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, ConnectionError) as error:
            raise StaleConnection(str(error)) from error

        try:
            await self._recipients(client)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, ConnectionError) as error:
            self.lost(str(error))
            return
        if not self.accepted:
            await self._reset(client)
            return
        await self._finish_data(client, client.send_data(body, data_timeout))

    async def _finish_data(self, client: CrlfSMTP, sending: Awaitable[aiosmtplib.SMTPResponse]) -> None:
        """Record the reply to DATA and the body for the accepted recipients."""
        try:
            final = await sending
        except aiosmtplib.SMTPResponseException as error:
            # Each refused RCPT was recorded with its own reply already.
            self._add(self.accepted, Reply(error.code, error.message))
            await self._reset(client)
            return
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, ConnectionError) as error:
            # A connection lost during or after DATA may or may not have
            # delivered: retry, never bounce (RFC 5321 section 6.1).
            self.lost(str(error))
            return
        except BodyReadError as error:
            # The connection was closed before the end of data, so nothing was delivered.
            self._add(self.accepted, _read_failed(error))
            return

        self._add(self.accepted, Reply(250, final.message))
        self.clean = True

    async def _run_pipelined(self, client: CrlfSMTP, sender: str, options: list[str], body: MessageBody,
                             data_timeout: float) -> None:
        """Send MAIL, the RCPTs and DATA as one group (RFC 2920), then the body if DATA got 354."""
        commands = [_command(f"MAIL FROM:<{sender}>", options, self.encoding)]
        commands += [_command(f"RCPT TO:<{recipient}>", [], self.encoding) for recipient in self.recipients]
        commands.append(b"DATA\r\n")
        try:
            replies = await pipelining.exchange(client.protocol, commands, COMMAND_TIMEOUT)
        except pipelining.PipelineBroken as broken:
            client.close()
            if not broken.replies:
                raise StaleConnection(str(broken.error)) from broken.error
            self._take_group_replies(broken.replies)
            self.lost(str(broken.error))
            return

        start = self._take_group_replies(replies)
        if start.code != 354 or not self.accepted:
            if start.code == 354:
                # RFC 2920 section 3.1: DATA went ahead with no recipient, so an empty message ends it.
                await self._end_empty_data(client)
            elif self.accepted:
                self._add(self.accepted, Reply(start.code, start.message))
            await self._reset(client)
            return

        await self._finish_data(client, client.send_body(body, data_timeout))

    def _take_group_replies(self, replies: list) -> aiosmtplib.SMTPResponse | None:
        """Record the replies to MAIL and the RCPTs of a group; return the reply to DATA, if it came."""
        if not replies:
            return None
        mail, recipient_replies = replies[0], replies[1:1 + len(self.recipients)]
        if mail.code != 250:
            self.outcome.add_all(self.recipients, Reply(mail.code, mail.message))
        else:
            for recipient, reply in zip(self.recipients, recipient_replies):
                self._take_recipient_reply(recipient, Reply(reply.code, reply.message))
            if self.postponed and not self.accepted:
                # Not even one recipient was taken: a temporary condition, even when the reply was 552.
                self.outcome.add_all(self.postponed, Reply(452, "4.5.3 too many recipients"))
                self.postponed = []
        return replies[len(self.recipients) + 1] if len(replies) > len(self.recipients) + 1 else None

    def _take_recipient_reply(self, recipient: str, reply: Reply) -> None:
        if 200 <= reply.code < 300:
            self.accepted.append(recipient)
        elif _too_many_recipients(reply):
            self.postponed.append(recipient)
        else:
            self.outcome.add(recipient, reply)

    async def _end_empty_data(self, client: CrlfSMTP) -> None:
        try:
            await client.send_body(EMPTY_BODY, COMMAND_TIMEOUT)
        except (aiosmtplib.SMTPException, OSError):
            pass

    async def _seven_bit(self, body: MessageBody) -> MessageBody | None:
        """Downgrade 8-bit parts for a server without 8BITMIME, or give every recipient a reply and return None.

        The conversion needs the whole message in memory, even a streamed one,
        which is read again from the store here, before MAIL. A failed read
        defers only this transaction's recipients, so those of earlier
        transactions on the connection keep their replies.
        NOTE: re-encoding breaks a DKIM signature over the body, as Postfix's
        conversion does. Only 8-bit text in header fields goes as it is.
        """
        try:
            converted = MessageBody.whole(seven_bit(await body.read()))
        except LineTooLong as error:
            self.outcome.add_all(self.recipients, Reply(
                554, f"5.6.3 {self.relay} does not support 8BITMIME and the message cannot be converted: {error}"))
            self.clean = True
            return None
        except BodyReadError as error:
            # clean stays False, so the connection is quit rather than kept for the next message.
            self.outcome.add_all(self.recipients, _read_failed(error))
            return None
        log.info("message converted to 7 bits for %s, which does not offer 8BITMIME", self.relay)
        return converted

    def _mail_options(self, client: CrlfSMTP, sender: str, body: MessageBody) -> list[str] | None:
        """Return MAIL parameters, or None after failing every recipient for what the server cannot take.

        That is a body over the server's SIZE, or addresses in UTF-8 for a
        server without SMTPUTF8 (RFC 6531 section 3.5: 5.6.7). UTF-8 only in
        the header goes with SMTPUTF8 where offered, and as it is otherwise.
        """
        options = []
        if client.supports_extension("size"):
            declared = client.esmtp_extensions.get("size", "")
            # RFC 1870: SIZE with 0 or no number means no fixed limit.
            if declared.isdigit() and 0 < int(declared) < body.size:
                self.outcome.add_all(self.recipients, Reply(
                    552, f"5.3.4 message size {body.size} exceeds the limit {declared} of {self.relay}"))
                return None
            options.append(f"SIZE={body.size}")
        ascii_body = body.ascii
        if client.supports_extension("8bitmime") and not ascii_body:
            options.append("BODY=8BITMIME")

        ascii_envelope = sender.isascii() and all(recipient.isascii() for recipient in self.recipients)
        # Most bodies are ASCII throughout, which spares slicing out the header.
        if ascii_envelope and (ascii_body or body.header.isascii()):
            return options
        if client.supports_extension("smtputf8"):
            options.append("SMTPUTF8")
        elif not ascii_envelope:
            self.outcome.add_all(self.recipients, Reply(
                553, f"5.6.7 {self.relay} does not support SMTPUTF8, which the UTF-8 addresses need"))
            return None
        return options

    async def _recipients(self, client: CrlfSMTP) -> None:
        for index, recipient in enumerate(self.recipients):
            try:
                await client.rcpt(recipient, encoding=self.encoding, timeout=COMMAND_TIMEOUT)
            except aiosmtplib.SMTPRecipientRefused as error:
                reply = Reply(error.code, error.message)
                if not _too_many_recipients(reply):
                    self.outcome.add(recipient, reply)
                    continue
                if self.accepted:
                    self.postponed = self.recipients[index:]
                    return
                # Not even one recipient was taken: a temporary condition, even when the reply was 552.
                self.outcome.add_all(self.recipients[index:], Reply(452, error.message))
                return
            else:
                self.accepted.append(recipient)

    def _add(self, recipients: list[str], reply: Reply) -> None:
        for recipient in recipients:
            self.outcome.add(recipient, reply)

    def lost(self, detail: str) -> None:
        """Defer every recipient without a reply yet, because the connection was lost."""
        answered = {recipient for recipient, _ in self.outcome.failed + self.outcome.deferred}
        self._add([r for r in self.recipients if r not in answered],
                  Reply(451, f"4.4.2 connection to {self.relay} lost: {detail}"))

    async def _reset(self, client: CrlfSMTP) -> None:
        # RSET leaves the connection fit for the next message, and a failed RSET does not.
        try:
            await client.rset(timeout=COMMAND_TIMEOUT)
        except (aiosmtplib.SMTPException, OSError):
            return
        self.clean = True

