"""Load-test SMTP clients: mail clients on submission and remote MTAs on MX.

Connections are reused the way real senders reuse them: a mail client keeps
its authenticated connection for a few messages of the same user, a remote
MTA keeps one per sending domain. Each connection carries at most
``messages_per_connection`` messages and is closed after ``idle_seconds``
without use. The number of open sessions is bounded by ``max_sessions``.

Only loopback targets are accepted: this harness must never load anything
else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiosmtplib


def check_loopback(host: str) -> None:
    """Raise ValueError unless ``host`` is a loopback address."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"load-test target must be a loopback IP address, got {host!r}") from None
    if not address.is_loopback:
        raise ValueError(f"load-test target must be on loopback (127.0.0.0/8 or ::1), got {host}")


def client_tls_context() -> ssl.SSLContext:
    # The MTA under test has a self-signed certificate; what is measured is
    # the cost of TLS, not its trust chain.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass
class Outcome:
    code: int | None
    text: str
    replied_at: float


@dataclass
class _Connection:
    client: aiosmtplib.SMTP
    used: int = 0
    last_used: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class ClientSettings:
    host: str
    mx_port: int
    submission_port: int
    max_sessions: int = 50
    messages_per_connection: int = 10
    idle_seconds: float = 5.0
    timeout: float = 120.0
    mx_starttls: bool = True


class ClientPool:
    def __init__(self, settings: ClientSettings, password_for: Callable[[str], str]):
        check_loopback(settings.host)
        self.settings = settings
        self.password_for = password_for
        self.tls_context = client_tls_context()
        self._idle: dict[tuple[str, str], list[_Connection]] = {}
        self._idle_count = 0
        # Bounds transactions in progress; idle connections are bounded apart
        # (as many again), so a waiting sender never waits on an idle one.
        self._active = asyncio.Semaphore(settings.max_sessions)
        self._closing: set[asyncio.Task] = set()

    async def send(self, kind: str, sender: str, recipients: list[str], message: bytes) -> Outcome:
        """Send one message and return its final reply; connection failures give code None."""
        key = (kind, sender if kind == "submission" else sender.rpartition("@")[2])
        async with self._active:
            connection = self._take_idle(key)
            if connection is None:
                try:
                    connection = await self._connect(kind, sender)
                except (aiosmtplib.SMTPException, OSError) as error:
                    return Outcome(None, f"connect failed: {error!r}", time.monotonic())
            outcome = await self._transaction(connection, sender, recipients, message)

        connection.used += 1
        connection.last_used = time.monotonic()
        if outcome.code is not None and connection.used < self.settings.messages_per_connection:
            self._park(key, connection)
        else:
            await self._close(connection)
        return outcome

    def _take_idle(self, key: tuple[str, str]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            self._idle_count -= 1
            if now - connection.last_used < self.settings.idle_seconds and connection.client.is_connected:
                return connection
            self._close_later(connection)
        return None

    def _park(self, key: tuple[str, str], connection: _Connection) -> None:
        self._idle.setdefault(key, []).append(connection)
        self._idle_count += 1
        if self._idle_count > self.settings.max_sessions:
            self._evict_oldest_idle()

    def _evict_oldest_idle(self) -> None:
        oldest_key, oldest = None, None
        for key, connections in self._idle.items():
            for connection in connections:
                if oldest is None or connection.last_used < oldest.last_used:
                    oldest_key, oldest = key, connection
        if oldest is not None:
            self._idle[oldest_key].remove(oldest)
            self._idle_count -= 1
            self._close_later(oldest)

    def _close_later(self, connection: _Connection) -> None:
        task = asyncio.get_running_loop().create_task(self._close(connection))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _start_tls(self, submission: bool) -> bool | None:
        """Return aiosmtplib's start_tls: required on submission, when offered on MX (None), or never."""
        if submission:
            return True
        return None if self.settings.mx_starttls else False

    async def _connect(self, kind: str, sender: str) -> _Connection:
        submission = kind == "submission"
        client = aiosmtplib.SMTP(
            hostname=self.settings.host,
            port=self.settings.submission_port if submission else self.settings.mx_port,
            local_hostname="client.loadtest.invalid" if submission else f"mx.{sender.rpartition('@')[2]}",
            timeout=self.settings.timeout,
            start_tls=self._start_tls(submission),
            tls_context=self.tls_context,
        )
        await client.connect()
        if submission:
            await client.login(sender, self.password_for(sender))
        return _Connection(client)

    async def _transaction(self, connection: _Connection, sender: str, recipients: list[str],
                           message: bytes) -> Outcome:
        try:
            refused, reply = await connection.client.sendmail(sender, recipients, message)
        except aiosmtplib.SMTPRecipientsRefused as error:
            first = error.recipients[0]
            return Outcome(first.code, first.message, time.monotonic())
        except aiosmtplib.SMTPResponseException as error:
            await self._reset(connection)
            return Outcome(error.code, error.message, time.monotonic())
        except (aiosmtplib.SMTPException, OSError) as error:
            return Outcome(None, repr(error), time.monotonic())
        return Outcome(250, reply, time.monotonic())

    async def _reset(self, connection: _Connection) -> None:
        try:
            await connection.client.rset()
        except (aiosmtplib.SMTPException, OSError):
            connection.client.close()

    async def _close(self, connection: _Connection) -> None:
        try:
            if connection.client.is_connected:
                await connection.client.quit(timeout=10)
        except (aiosmtplib.SMTPException, OSError):
            connection.client.close()

    async def close(self) -> None:
        idle = [connection for connections in self._idle.values() for connection in connections]
        self._idle.clear()
        self._idle_count = 0
        await asyncio.gather(*(self._close(connection) for connection in idle), *self._closing)
