"""Helpers shared by the operator commands that change the database."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

from mta.audit import append as audit  # noqa: F401 (the commands import it from here)
from mta.config import Config

EXIT_FAILURE = 1
EXIT_USAGE = 2


def run_in_transaction(config: Config, work: Callable[..., Awaitable[object]],
                       usage_errors: tuple[type[Exception], ...] = ()) -> object:
    """Run work(connection) in one transaction; exit 2 with the message of a usage error."""
    from mta.cli import connect_or_exit

    async def run() -> object:
        connection = await connect_or_exit(config)
        try:
            async with connection.transaction():
                return await work(connection)
        finally:
            await connection.close()

    try:
        return asyncio.run(run())
    except usage_errors as error:
        print(f"mta: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def run_with_bodies(config: Config, work: Callable[..., Awaitable[object]],
                    usage_errors: tuple[type[Exception], ...] = ()) -> object:
    """Run work(connection, store, bodies) with the body store and a BodyCodec; exit 2 on a usage error.

    Exits 1 when the body store cannot be opened.
    """
    from mta.cli import connect_or_exit
    from mta.key_commands import body_codec
    from mta.storage.factory import build_store
    from mta.storage.store import StoreError

    async def run() -> object:
        connection = await connect_or_exit(config)
        store = build_store(config)
        try:
            await store.start()
            return await work(connection, store, body_codec(config, connection))
        finally:
            await store.close()
            await connection.close()

    try:
        return asyncio.run(run())
    except usage_errors as error:
        print(f"mta: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except StoreError as error:
        print(f"mta: body store failed: {error}", file=sys.stderr)
        raise SystemExit(EXIT_FAILURE) from None
