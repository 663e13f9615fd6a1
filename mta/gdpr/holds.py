"""Legal holds: while an address has one, erasure rejects it and retention keeps its mail."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from mta import audit
from mta.gdpr import GDPR_LOCK_ID


class HeldError(Exception):
    """The address is under a legal hold, so its data must be kept."""

    def __init__(self, address: str, since: datetime, reason: str):
        super().__init__(f"{address} is under a legal hold since {since:%Y-%m-%d} ({reason}): nothing was erased; "
                         "release the hold with mta gdpr release first")
        self.address = address
        self.since = since
        self.reason = reason


async def lock(connection: asyncpg.Connection) -> None:
    """Wait for erasures, holds and retention batches running elsewhere, until this transaction ends."""
    await connection.execute("SELECT pg_advisory_xact_lock($1)", GDPR_LOCK_ID)


async def add_hold(connection: asyncpg.Connection, address: str, reason: str, actor: str) -> bool:
    """Put the address under a hold; return False when it already had one, whose reason is then replaced."""
    await lock(connection)
    existed = await connection.fetchval("SELECT true FROM legal_hold WHERE address = $1", address)
    await connection.execute(
        "INSERT INTO legal_hold (address, reason, actor) VALUES ($1, $2, $3)"
        " ON CONFLICT (address) DO UPDATE SET reason = EXCLUDED.reason, actor = EXCLUDED.actor", address, reason,
        actor)
    return not existed


async def release_hold(connection: asyncpg.Connection, address: str) -> bool:
    """Remove the address's hold; return False when it had none."""
    await lock(connection)
    status = await connection.execute("DELETE FROM legal_hold WHERE address = $1", address)
    return status != "DELETE 0"


async def check_not_held(connection: asyncpg.Connection, address: str) -> None:
    """Raise HeldError naming the hold's date and reason when the address has one."""
    row = await connection.fetchrow("SELECT reason, created_at FROM legal_hold WHERE address = $1", address)
    if row is not None:
        raise HeldError(address, row["created_at"], row["reason"])


async def hold_and_record(connection: asyncpg.Connection, address: str, reason: str, actor: str,
                          pseudonym: str) -> bool:
    """Put the address under a hold with its audit entry, inside the caller's transaction; return add_hold's result.

    The entry names the address by its pseudonym only. The reason is stored as given.
    """
    created = await add_hold(connection, address, reason, actor)
    await audit.append(connection, actor, "gdpr.hold", {"pseudonym": pseudonym, "reason": reason, "new": created})
    return created


async def release_and_record(connection: asyncpg.Connection, address: str, actor: str, pseudonym: str) -> bool:
    """End the address's hold with its audit entry, inside the caller's transaction; return False when it had none."""
    released = await release_hold(connection, address)
    if released:
        await audit.append(connection, actor, "gdpr.release", {"pseudonym": pseudonym})
    return released
