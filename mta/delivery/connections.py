"""Idle SMTP client connections kept for the next message to the same host.

After a clean transaction the connection goes back to the cache under its
(address, port, source address) key, and the next delivery to that host
skips the connect, greeting, EHLO and STARTTLS. As in Postfix's connection
cache, a connection stays idle only briefly (``delivery.connection_cache_seconds``),
carries at most ``delivery.connection_reuse_limit`` messages, and is not
reused once it is older than MAX_AGE. A background task closes expired idle
connections with QUIT.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import aiosmtplib

log = logging.getLogger("mta.delivery")

# Seconds after which a connection is not reused, as Postfix's
# smtp_connection_reuse_time_limit (300 s by default).
MAX_AGE = 300.0
PRUNE_INTERVAL = 1.0
QUIT_TIMEOUT = 10.0

Key = tuple[str, int, str | None]


@dataclass
class Connection:
    """An open client connection and how much it has carried."""

    client: aiosmtplib.SMTP
    relay: str
    opened: float = field(default_factory=time.monotonic)
    uses: int = 0
    idle_since: float = 0.0
    # Whether STARTTLS succeeded on it.
    encrypted: bool = False


class ConnectionCache:
    def __init__(self, idle_seconds: float, reuse_limit: int):
        self.idle_seconds = idle_seconds
        self.reuse_limit = reuse_limit
        self._idle: dict[Key, list[Connection]] = {}
        self._closing: set[asyncio.Task] = set()
        self._pruner: asyncio.Task | None = None

    def start(self) -> None:
        if self.idle_seconds > 0:
            self._pruner = asyncio.create_task(self._prune_loop(), name="connection-cache")

    def take(self, key: Key) -> Connection | None:
        """Return an idle connection to key that is still open, or None."""
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            # The most recently used connection is the least likely to have been closed by the server.
            connection = idle.pop()
            if connection.client.is_connected and not self._expired(connection, now):
                return connection
            self._close(connection)
        return None

    def put(self, key: Key, connection: Connection) -> None:
        """Keep connection for reuse, or close it when it has reached its limits."""
        connection.uses += 1
        now = time.monotonic()
        if (self.idle_seconds <= 0 or connection.uses >= self.reuse_limit or now - connection.opened > MAX_AGE
                or not connection.client.is_connected):
            self._close(connection)
            return
        connection.idle_since = now
        self._idle.setdefault(key, []).append(connection)

    def discard(self, connection: Connection) -> None:
        """Close a connection that must not carry another message."""
        self._close(connection)

    async def close(self) -> None:
        """Close every idle connection and wait for their QUITs."""
        if self._pruner is not None:
            self._pruner.cancel()
        for idle in self._idle.values():
            for connection in idle:
                self._close(connection)
        self._idle.clear()
        if self._closing:
            await asyncio.wait(set(self._closing))

    def _expired(self, connection: Connection, now: float) -> bool:
        return now - connection.idle_since > self.idle_seconds or now - connection.opened > MAX_AGE

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL)
            now = time.monotonic()
            for key in list(self._idle):
                remaining = []
                for connection in self._idle[key]:
                    if self._expired(connection, now):
                        self._close(connection)
                    else:
                        remaining.append(connection)
                if remaining:
                    self._idle[key] = remaining
                else:
                    del self._idle[key]

    def _close(self, connection: Connection) -> None:
        task = asyncio.create_task(quit_politely(connection.client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


async def quit_politely(client: aiosmtplib.SMTP) -> None:
    """Send QUIT, or drop the connection when the server does not reply."""
    if not client.is_connected:
        return
    try:
        await client.quit(timeout=QUIT_TIMEOUT)
    except (aiosmtplib.SMTPException, OSError):
        client.close()
