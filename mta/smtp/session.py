"""The SMTP session: aiosmtpd's protocol with our policy, AUTH and spooling.

aiosmtpd parses commands and runs the state machine; this module supplies
the handler hooks (MAIL, RCPT, DATA), asynchronous AUTH PLAIN and LOGIN that
check scrypt hashes without blocking the loop, session ids in every log line,
and an exception handler that replies 451 4.3.0 with a reference id instead
of aiosmtpd's default, which sends the exception text to the client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session, TLSSetupException, syntax

from mta import metrics
from mta.auth import users
from mta.auth.throttle import AuthThrottle
from mta.config import Config
from mta.db import TRANSIENT_ERRORS
from mta.dkim import DkimSigner, DuplicateFromError
from mta.ids import new_queue_id, new_session_id
from mta.inbound.check import InboundChecker
from mta.inbound.results import remove_forged
from mta.smtp import dsn, policy, replies
from mta.smtp.chunking import Chunking
from mta.smtp.data import read_data
from mta.smtp.dsn import DsnError, take_dsn_parameters
from mta.smtp.hooks import BeforeQueueChecks, CheckRequest
from mta.smtp.longlines import LineTooLong, shorten_lines
from mta.smtp.policy import Listener
from mta.smtp.stamp import Arrival, add_missing_fields, author_address, author_domain, author_domains, received_field
from mta.spool.enqueue import NewMessage, Spool, SpoolError

log = logging.getLogger("mta.smtpd")


@dataclass
class Services:
    """Shared services of every session on a listener."""

    config: Config
    pool: asyncpg.Pool
    spool: Spool
    signer: DkimSigner
    auth_throttle: AuthThrottle
    inbound: InboundChecker | None = None
    checks: BeforeQueueChecks | None = None


class MtaSmtp(Chunking, SMTP):
    """aiosmtpd's SMTP protocol with session ids, asynchronous AUTH, and BDAT."""

    def __init__(self, handler: "Handler", **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.handler = handler

    def _create_session(self) -> Session:
        # STARTTLS makes a fresh session (RFC 3207 section 4.2); keep its id.
        previous = getattr(self, "session", None)
        session = Session(self.loop)
        session.id = previous.id if previous is not None else new_session_id()
        return session

    def connection_made(self, transport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        assert self.session is not None
        if not first:
            # STARTTLS starts a new session with the socket's peer: put back the one the PROXY header gave.
            if self._proxied_peer is not None:
                self.session.peer = self._proxied_peer
            self.session.relay_client = self.handler.in_relay_network(self.session.peer)
            cipher = transport.get_extra_info("cipher") or ("", "", 0)
            log.info("%s: STARTTLS %s %s", self.session.id, cipher[1], cipher[0])
            return

        self._errors = 0
        self._greeted = False
        self._junk_commands = 0
        self._in_data_hook = False
        self._close_after_reply = False
        self._counted_address = None
        self._proxied_peer = None
        self._session_timer = self.loop.call_later(self.handler.config.smtp.session_timeout, self._session_expired)
        if transport.get_extra_info("ssl_object") is not None:
            # Implicit TLS: record it as aiosmtpd does after STARTTLS, for Received and EOF handling.
            self.session.ssl = {"cipher": transport.get_extra_info("cipher")}
        if self._proxy_timeout is None:
            self._client_arrived("")
        if self.session.ssl:
            cipher = transport.get_extra_info("cipher") or ("", "", 0)
            log.info("%s: implicit TLS %s %s", self.session.id, cipher[1], cipher[0])

    def _client_arrived(self, via: str) -> bool:
        """Count and log the client's session; return False when its address has too many already."""
        self._counted_address = self.handler.client_connected(self.session.peer)
        self.session.relay_client = self.handler.in_relay_network(self.session.peer)
        log.info("%s: connect from [%s]:%s to %s%s%s", self.session.id, *_peer(self.session),
                 self.handler.listener.name, via, " (relay network)" if self.session.relay_client else "")
        return self._counted_address is not None

    def client_proxied(self, peer: tuple[str, int]) -> bool:
        """Take the client address from a PROXY header; return False, having replied 421, when over the limit."""
        balancer = _peer(self.session)[0]
        self._proxied_peer = self.session.peer = peer
        if self._client_arrived(f" via proxy [{balancer}]"):
            return True
        self._close_with(str(replies.TOO_MANY_CONNECTIONS), "connection limit")
        return False

    def connection_lost(self, error: Exception | None) -> None:
        if self.session is not None:
            log.info("%s: disconnect from [%s]:%s", self.session.id, *_peer(self.session))
        self.handler.client_disconnected(getattr(self, "_counted_address", None))
        self._counted_address = None
        timer = getattr(self, "_session_timer", None)
        if timer is not None:
            timer.cancel()
        super().connection_lost(error)

    async def _client_talked_first(self) -> bool:
        """Refuse a client that sends before the greeting, as spam software does; return True when it did.

        On MX, for clients outside relay_networks, the first greeting line
        goes out and the session waits ``greet_pause`` seconds before the
        last one, which gives such clients time to give themselves away.
        """
        pause = self.handler.config.smtp.greet_pause
        if pause > 0 and not self.handler.listener.requires_auth and not self.session.relay_client:
            await super().push(f"220-{self.hostname} ESMTP")
            await asyncio.sleep(pause)
        if not self._reader._buffer:
            return False

        log.info("%s: reject [%s]: sent data before the greeting", self.session.id, _peer(self.session)[0])
        # Nothing it sent may be taken as a command: the session ends once the transport has closed.
        self._reader._buffer.clear()
        await super().push(str(replies.TALKED_FIRST))
        self.transport.close()
        return True

    def _timeout_cb(self) -> None:
        if self._in_data_hook:
            # The message is being checked and queued: the client is waiting for its reply, not idle.
            self._reset_timeout()
            return
        # aiosmtpd closes without a reply. A 421 first gives the client the reason (RFC 5321 section 3.8).
        seconds = f"{self.handler.config.smtp.idle_timeout:g}"
        self._close_with(replies.IDLE_TIMEOUT.format(seconds=seconds), "idle timeout")

    def _session_expired(self) -> None:
        if self._in_data_hook:
            # The message is being queued: its reply goes out first, so the client never resends it.
            self._close_after_reply = True
            return
        seconds = f"{self.handler.config.smtp.session_timeout:g}"
        self._close_with(replies.SESSION_TIMEOUT.format(seconds=seconds), "session time limit")

    def _close_with(self, reply: str, reason: str) -> None:
        """Write a last reply without waiting for the client to read it, and close."""
        if self.transport is None or self.transport.is_closing():
            return
        log.info("%s: disconnect [%s] after %s: %s", self.session.id, _peer(self.session)[0], reason, reply)
        self.transport.write(reply.encode("ascii") + b"\r\n")
        self.transport.close()

    async def _handle_client(self) -> None:
        # Behind a proxy the client is counted when its PROXY header arrives, in handle_PROXY.
        if self._proxy_timeout is None and self._counted_address is None:
            log.info("%s: reject connection from [%s]: %s", self.session.id, _peer(self.session)[0],
                     replies.TOO_MANY_CONNECTIONS)
            await super().push(str(replies.TOO_MANY_CONNECTIONS))
            self.transport.close()
            return
        await super()._handle_client()

    async def push(self, status: str | bytes) -> None:
        if not self._greeted:
            # The first reply of a session is the greeting (after any PROXY header).
            self._greeted = True
            if await self._client_talked_first():
                return
        if isinstance(status, str):
            status = replies.with_enhanced_code(status, self.hostname)
        await super().push(status)

        text = status.decode("ascii", "replace") if isinstance(status, bytes) else status
        if text[:1] in ("4", "5") and not text.startswith("421"):
            self._errors = getattr(self, "_errors", 0) + 1
            if self._errors >= self.handler.config.smtp.max_errors and self.transport is not None:
                log.info("%s: disconnect [%s] after %d errors", self.session.id, _peer(self.session)[0],
                         self._errors)
                await super().push(str(replies.TOO_MANY_ERRORS))
                self.transport.close()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        # Replaces aiosmtpd's DATA, which awaits once per line: the hot spot
        # for large messages. The checks before 354 keep aiosmtpd's order.
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(str(replies.NEED_RECIPIENT))
            return
        if arg:
            await self.push(str(replies.DATA_SYNTAX))
            return
        if getattr(self.envelope, "chunks", None) is not None:
            # RFC 3030 section 2: DATA may not follow BDAT in one transaction.
            await self.push(str(replies.DATA_AFTER_BDAT))
            return

        await self.push(str(replies.START_DATA))
        data_timeout = self.handler.config.smtp.data_timeout
        try:
            async with asyncio.timeout(data_timeout):
                result = await read_data(self._reader, self.data_size_limit, self._reset_timeout)
        except TimeoutError:
            # The rest of a late message must never be read as commands, so the session ends here.
            self._close_with(replies.DATA_TIMEOUT.format(seconds=f"{data_timeout:g}"), "DATA timeout")
            return

        self._junk_commands = 0
        if result.leftover:
            # Commands pipelined behind the final dot go back to the command reader.
            self._reader._buffer[0:0] = result.leftover
        if result.content is None:
            self._set_post_data_state()
            await self.push(replies.MESSAGE_TOO_BIG.format(limit=str(self.data_size_limit)))
            return

        await self.finish_message(result.content)

    async def finish_message(self, content: bytes) -> None:
        """Hand a complete message to the DATA hook, reply with its verdict, and end the transaction."""
        assert self.envelope is not None
        self.envelope.content = self.envelope.original_content = content
        self._in_data_hook = True
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            self._in_data_hook = False
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)
        if self._close_after_reply:
            self._session_expired()

    async def _over_junk_limit(self) -> bool:
        """Count a command that moves no mail; close the session with 421 past the limit."""
        self._junk_commands += 1
        limit = self.handler.config.smtp.max_junk_commands
        if self._junk_commands <= limit:
            return False
        log.info("%s: disconnect [%s] after %d commands without a message", self.session.id,
                 _peer(self.session)[0], limit)
        await super().push(str(replies.TOO_MANY_COMMANDS))
        self.transport.close()
        return True

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str) -> None:
        if not await self._over_junk_limit():
            await super().smtp_NOOP(arg)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str) -> None:
        if not await self._over_junk_limit():
            await super().smtp_RSET(arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str) -> None:
        if not await self._over_junk_limit():
            await super().smtp_VRFY(arg)

    async def smtp_EXPN(self, arg: str) -> None:
        if not await self._over_junk_limit():
            await super().smtp_EXPN(arg)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        if not self.handler.listener.requires_auth:
            # MX serves other hosts' mail: a login there would relay without submission's ownership checks.
            await self.push(str(replies.AUTH_NOT_HERE))
            return
        await super().smtp_AUTH(arg)

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str) -> None:
        if not await self._over_junk_limit():
            await super().smtp_HELP(arg)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd's parser rejects valid forms such as a trailing dot in the
        # domain; syntax is judged by our policy in the MAIL and RCPT hooks.
        # The DSN parameters are kept aside with their case for those hooks,
        # as aiosmtpd would upper-case them and refuse them.
        self._dsn_parameters: dict[str, str] | DsnError = {}
        if not arg:
            return "", ""
        path, params = policy.parse_path(arg)
        params, self._dsn_parameters = take_dsn_parameters(params)
        return path, params

    def take_dsn_parameters(self) -> dict[str, str]:
        """Return the DSN parameters of the command being handled, or raise DsnError."""
        found = getattr(self, "_dsn_parameters", {})
        self._dsn_parameters = {}
        if isinstance(found, DsnError):
            raise found
        return found

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                return await self._auth_reply(replies.AUTH_MALFORMED)

        # RFC 4616 section 2: authzid NUL authcid NUL passwd.
        parts = blob.split(b"\x00")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            return await self._auth_reply(replies.AUTH_MALFORMED)
        authzid, login, password = parts
        if authzid and authzid != login:
            # Acting as another user is not offered; refuse instead of ignoring it.
            return await self._verify_result("PLAIN", login, None)
        return await self._verify_result("PLAIN", login, password)

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await self.challenge_auth("Username:")
            if not isinstance(login, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                login = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                return await self._auth_reply(replies.AUTH_MALFORMED)

        password = await self.challenge_auth("Password:")
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._verify_result("LOGIN", login, password)

    async def _auth_reply(self, reply: replies.SmtpReply) -> AuthResult:
        await self.push(str(reply))
        return AuthResult(success=False, handled=True)

    async def challenge_auth(self, challenge: str | bytes, encode_to_b64: bool = True,
                             log_client_response: bool = False) -> bytes | None:
        """Send a 334 challenge and return the decoded response, or None after replying 501."""
        text = challenge.encode() if isinstance(challenge, str) else challenge
        await self.push(b"334 " + (base64.b64encode(text) if encode_to_b64 else text))
        line = (await self._reader.readline()).strip()

        # RFC 4954 section 4: "*" cancels the exchange.
        if line == b"*":
            await self.push(str(replies.AUTH_CANCELLED))
            return None
        try:
            return base64.b64decode(line, validate=True)
        except binascii.Error:
            await self.push(str(replies.AUTH_MALFORMED))
            return None

    async def _verify_result(self, mechanism: str, login_bytes: bytes, password: bytes | None) -> AuthResult:
        assert self.session is not None
        try:
            # RFC 4616 section 2: both are UTF-8 strings.
            login = login_bytes.decode("utf-8")
            if password is not None:
                password.decode("utf-8")
        except UnicodeDecodeError:
            return await self._auth_reply(replies.AUTH_MALFORMED)

        client = _peer(self.session)[0]
        throttle = self.handler.services.auth_throttle
        if not await throttle.begin(client, login):
            log.warning("%s: AUTH %s throttled for user=<%s> from [%s]", self.session.id, mechanism, login, client)
            return await self._auth_reply(replies.AUTH_THROTTLED)

        valid = password is not None and await users.authenticate(self.handler.services.pool, login, password)
        if not valid:
            log.warning("%s: AUTH %s failed for user=<%s> from [%s]", self.session.id, mechanism, login, client)
            await throttle.failed()
            return AuthResult(success=False, handled=False, message=str(replies.AUTH_FAILED))

        await throttle.succeeded(client, login)
        log.info("%s: AUTH %s user=<%s>", self.session.id, mechanism, login)
        return AuthResult(success=True, auth_data=login, message=str(replies.AUTH_SUCCEEDED))


class Handler:
    def __init__(self, listener: Listener, services: Services):
        self.listener = listener
        self.services = services
        self.config = services.config
        self.relay_networks = tuple(ipaddress.ip_network(network, strict=False)
                                    for network in self.config.smtp.relay_networks)
        self.max_recipients = self.config.listener_limits(listener.name)[1]
        # Open sessions per client address, on this listener of this worker.
        self._connections: dict[str, int] = {}

    def client_connected(self, peer: Any) -> str | None:
        """Count a session of the client's address; return the address, or None when over the limit."""
        address = _peer_address(peer)
        if self._connections.get(address, 0) >= self.config.smtp.max_connections_per_client:
            return None
        self._connections[address] = self._connections.get(address, 0) + 1
        return address

    def client_disconnected(self, address: str | None) -> None:
        if address is None:
            return
        remaining = self._connections.get(address, 0) - 1
        if remaining > 0:
            self._connections[address] = remaining
        else:
            self._connections.pop(address, None)

    def in_relay_network(self, peer: Any) -> bool:
        """Return whether the client's address is in one of smtp.relay_networks."""
        if not self.relay_networks or not isinstance(peer, tuple):
            return False
        try:
            address = ipaddress.ip_address(peer[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.relay_networks)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # A client that cannot agree on TLS 1.2 or newer; nothing is wrong here.
            log.info("STARTTLS handshake failed: %r", error.__cause__)
            metrics.INBOUND_TLS_FAILURES.labels(listener=self.listener.name).inc()
            return str(replies.TLS_FAILED)
        reference = new_session_id()
        if isinstance(error, TRANSIENT_ERRORS):
            # The database is unreachable or restarting: the client retries later.
            log.error("database or network error, ref %s: %r", reference, error)
        else:
            log.error("unexpected error, ref %s: %r", reference, error, exc_info=error)
        return replies.TEMPORARY_FAILURE.format(ref=reference)

    async def handle_PROXY(self, server: MtaSmtp, session: Session, envelope: Envelope, proxy_data: Any) -> bool:
        if proxy_data.src_addr is None:
            # A v2 LOCAL header or v1 UNKNOWN: the balancer's own connection, such as a health check.
            return server.client_proxied(session.peer)
        return server.client_proxied((str(proxy_data.src_addr), proxy_data.src_port))

    async def handle_EHLO(self, server: MtaSmtp, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if not self.listener.requires_auth:
            # The MX listener has no users to authenticate.
            responses = [line for line in responses if not line[4:].startswith("AUTH")]
        responses.insert(-1, "250-ENHANCEDSTATUSCODES")
        responses.insert(-1, "250-PIPELINING")
        responses.insert(-1, "250-DSN")
        responses.insert(-1, "250-CHUNKING")
        return responses

    async def handle_MAIL(self, server: MtaSmtp, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        sender = "" if address == "<>" else address
        login = session.auth_data if session.authenticated else None
        reply = policy.check_sender(self.listener, sender, login)
        if reply is None:
            try:
                parameters = server.take_dsn_parameters()
                dsn.check_for_command(parameters, dsn.MAIL_PARAMETERS)
                envelope.dsn_ret, envelope.dsn_envid = dsn.parse_mail(parameters)
            except DsnError as error:
                reply = error.reply
        if reply is not None:
            log.info("%s: reject MAIL from [%s]: %s; from=<%s>", session.id, _peer(session)[0], reply, sender)
            return str(reply)

        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return str(replies.SENDER_OK)

    async def handle_RCPT(self, server: MtaSmtp, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        domain = address.rpartition("@")[2]
        local = self.config.is_local_domain(domain)
        may_relay = session.authenticated or session.relay_client
        reply = policy.check_recipient(self.listener, address, may_relay, local,
                                       len(envelope.rcpt_tos), self.max_recipients)
        recipient_dsn = None
        if reply is None:
            try:
                parameters = server.take_dsn_parameters()
                dsn.check_for_command(parameters, dsn.RCPT_PARAMETERS)
                recipient_dsn = dsn.parse_rcpt(parameters) if parameters else None
            except DsnError as error:
                reply = error.reply
        if reply is None and local and self._is_mailbox_domain(domain):
            known = await users.existing_users(self.services.pool, [address])
            if not known:
                reply = replies.UNKNOWN_USER

        if reply is not None:
            log.info("%s: reject RCPT from [%s]: %s; from=<%s> to=<%s>", session.id, _peer(session)[0],
                     reply, envelope.mail_from, address)
            return str(reply)

        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        if recipient_dsn is not None:
            if not hasattr(envelope, "dsn_recipients"):
                envelope.dsn_recipients = {}
            envelope.dsn_recipients[address] = recipient_dsn
        return str(replies.RECIPIENT_OK)

    def _is_mailbox_domain(self, domain: str) -> bool:
        return domain.lower().rstrip(".") not in self.config.delivery.routes

    async def handle_DATA(self, server: MtaSmtp, session: Session, envelope: Envelope) -> str:
        data: bytes = envelope.original_content or b""
        submission = self.listener.requires_auth
        reply = policy.check_content(data, require_one_from=submission)
        if reply is not None:
            return self._reject_data(session, envelope, reply)

        if submission and author_address(data).lower() != str(session.auth_data).lower():
            # The From domain chooses the DKIM key, so a user must not sign as a colleague.
            return self._reject_data(session, envelope, replies.AUTHOR_NOT_OWNED)

        queue_id = new_queue_id()
        # Results that claim this host's name were not written here, whichever listener the message came by.
        data, _ = remove_forged(data, self.config.server.hostname)
        if submission or session.relay_client:
            try:
                data = shorten_lines(data)
            except LineTooLong as error:
                return self._reject_data(session, envelope, replies.LINE_TOO_LONG.format(detail=str(error)))
            data = add_missing_fields(data, self.config.server.hostname, queue_id)
            try:
                data = self._sign(data) + data
            except DuplicateFromError:
                return self._reject_data(session, envelope, replies.ONE_FROM_REQUIRED)

        sender = "" if envelope.mail_from == "<>" else envelope.mail_from
        quarantine = None
        inbound = self.services.inbound
        if not submission and not session.relay_client and inbound is not None and inbound.enabled:
            verdict = await inbound.check(data, _peer(session)[0], sender, session.host_name or "", author_domains(data))
            log.info("%s: %s; from=<%s> header.from=%s%s", session.id, verdict.summary, sender,
                     author_domain(data) or "none", " (quarantine)" if verdict.quarantine else "")
            if verdict.reject:
                return self._reject_data(session, envelope, replies.DMARC_REJECTED.format(domain=verdict.domain))
            data, quarantine = verdict.message, verdict.quarantine

        checks = self.services.checks
        if checks is not None and checks.applies_to(self.listener.name):
            request = CheckRequest(queue_id=queue_id, session_id=session.id, listener=self.listener.name,
                                   client_address=_peer(session)[0], helo=session.host_name or "", sender=sender,
                                   recipients=tuple(envelope.rcpt_tos), data=data,
                                   authenticated_user=str(session.auth_data) if session.authenticated else None)
            outcome = await checks.run(request)
            log.info("%s: %s: content checks: %s", session.id, queue_id, " ".join(outcome.summary) or "none")
            if outcome.reply is not None:
                return self._reject_data(session, envelope, outcome.reply)
            data = outcome.header + data
            quarantine = quarantine or outcome.quarantine

        data = received_field(self._arrival(server, session, envelope, queue_id)) + data
        message = NewMessage(sender=sender, recipients=list(envelope.rcpt_tos), body=data,
                             origin=self.listener.name, session_id=session.id, queue_id=queue_id,
                             dsn=_dsn_request(envelope), quarantine=quarantine)
        try:
            await self.services.spool.enqueue(message)
        except SpoolError as error:
            log.error("%s: not queued, 451 sent: %s", session.id, error)
            return replies.TEMPORARY_FAILURE.format(ref=session.id)

        log.info("%s: %s: from=<%s>, size=%d, nrcpt=%d (queued)", session.id, queue_id, sender,
                 len(data), len(envelope.rcpt_tos))
        metrics.MESSAGES_ACCEPTED.labels(listener=self.listener.name).inc()
        return replies.QUEUED.format(queue_id=queue_id)

    def _sign(self, data: bytes) -> bytes:
        domain = author_domain(data)
        if not self.services.signer.has_key(domain):
            return b""
        return self.services.signer.sign(data, domain)

    def _reject_data(self, session: Session, envelope: Envelope, reply: replies.SmtpReply | str) -> str:
        log.info("%s: reject DATA from [%s]: %s; from=<%s>", session.id, _peer(session)[0], reply,
                 envelope.mail_from)
        metrics.MESSAGES_REJECTED.labels(listener=self.listener.name, reply_class=f"{str(reply)[0]}xx").inc()
        return str(reply)

    def _arrival(self, server: MtaSmtp, session: Session, envelope: Envelope, queue_id: str) -> Arrival:
        protocol = "ESMTP" if session.extended_smtp else "SMTP"
        tls = ""
        if session.ssl:
            protocol += "S"
            ssl_object: ssl.SSLObject | None = server.transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                tls = f"using {ssl_object.version()} with cipher {ssl_object.cipher()[0]}"
        if session.authenticated:
            protocol += "A"
        recipient = envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else ""
        return Arrival(helo=session.host_name or "", peer_address=_peer(session)[0],
                       hostname=self.config.server.hostname, protocol=protocol, tls=tls,
                       queue_id=queue_id, recipient=recipient)


def _dsn_request(envelope: Envelope) -> dict | None:
    """Return what the client asked of delivery status notifications, or None when it asked nothing."""
    ret, envid = getattr(envelope, "dsn_ret", ""), getattr(envelope, "dsn_envid", "")
    recipients = getattr(envelope, "dsn_recipients", {})
    if not ret and not envid and not recipients:
        return None
    return {"ret": ret, "envid": envid,
            "recipients": {address: {"notify": list(request.notify), "orcpt": request.orcpt}
                           for address, request in recipients.items()}}


def _peer_address(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


def _peer(session: Session) -> tuple[str, Any]:
    peer = session.peer
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0]), peer[1]
    return str(peer), ""
