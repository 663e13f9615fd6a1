"""LISTEN on a PostgreSQL channel for as long as the process runs, reconnecting after failures.

The connection is one of its own, outside the pool: it is held for as long
as the database is up. While it is down its users fall back to polling, and
``on_notify`` is also called after each (re)connect, so they catch up on
rows that became due while no connection was listening.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg

from mta.db import TRANSIENT_ERRORS

log = logging.getLogger("mta.listen")


async def listen_forever(url: str, channel: str, on_notify: Callable[[], None], retry_interval: float) -> None:
    """Call on_notify for each NOTIFY on channel; try to reconnect every retry_interval seconds."""
    while True:
        connection = None
        try:
            connection = await asyncpg.connect(url, timeout=10)
            lost = asyncio.Event()
            connection.add_termination_listener(lambda _: lost.set())
            await connection.add_listener(channel, lambda *_: on_notify())
            on_notify()
            await lost.wait()
            log.warning("LISTEN connection for %s lost, polling until it is back", channel)
        except TRANSIENT_ERRORS as error:
            log.warning("LISTEN connection for %s failed, polling only: %r", channel, error)
        finally:
            if connection is not None and not connection.is_closed():
                await connection.close(timeout=5)
        await asyncio.sleep(retry_interval)
