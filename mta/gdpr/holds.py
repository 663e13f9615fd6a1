"""Legal holds: while an address has one, erasure rejects it and retention keeps its mail."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from mta.gdpr import GDPR_LOCK_ID


class HeldError(Exception):
    """The address is under a legal hold, so its data must be kept."""


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
        created: datetime = row["created_at"]
        raise HeldError(f"{address} is under a legal hold since {created:%Y-%m-%d} ({row['reason']}): "
                        "nothing was erased; release the hold with mta gdpr release first")
