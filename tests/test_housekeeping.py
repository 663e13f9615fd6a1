"""Daily partitions of the delivery history and node heartbeats, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime

import asyncpg

from mta import db
from mta.message_audit import AddressPseudonyms, audit_round
from mta.spool.housekeeping import maintain_partitions
from tests.conftest import create_database
from tests.mx import wait_until


async def _partition_of(connection: asyncpg.Connection, at: datetime) -> str:
    return await connection.fetchval(
        "INSERT INTO delivery_event (message_id, recipient, status, reply, at)"
        " VALUES ('Q', 'a@example.org', 'delivered', '250 OK', $1) RETURNING tableoid::regclass::text", at)


def test_partitions_created_ahead_and_dropped_after_history_days(pg):
    url = create_database(pg)

    async def run() -> None:
        connection = await asyncpg.connect(url)
        try:
            await db.migrate(connection)
            old = await _partition_of(connection, datetime(2026, 11, 1, tzinfo=UTC))

            created, dropped = await maintain_partitions(connection, date(2026, 12, 4), 30)
            assert created == ["delivery_event_20261205", "delivery_event_20261206", "delivery_event_20261207"]
            assert dropped == []
            assert old == "delivery_event_default"
            assert await _partition_of(connection, datetime(2026, 12, 6, 9, tzinfo=UTC)) == "delivery_event_20261206"

            await audit_round(connection, AddressPseudonyms(bytes(32)), 100)
            created, dropped = await maintain_partitions(connection, date(2027, 1, 10), 30)
            assert created == ["delivery_event_20270111", "delivery_event_20270112", "delivery_event_20270113"]
            assert dropped == ["delivery_event_20261205", "delivery_event_20261206", "delivery_event_20261207"]
            # The default partition's rows older than the history are deleted too.
            assert await connection.fetchval("SELECT count(*) FROM delivery_event") == 0
        finally:
            await connection.close()

    asyncio.run(run())


def test_unaudited_history_kept(pg):
    url = create_database(pg)

    async def run() -> None:
        connection = await asyncpg.connect(url)
        try:
            await db.migrate(connection)
            await maintain_partitions(connection, date(2026, 12, 4), 30)
            await _partition_of(connection, datetime(2026, 11, 1, tzinfo=UTC))
            await _partition_of(connection, datetime(2026, 12, 6, 9, tzinfo=UTC))

            created, dropped = await maintain_partitions(connection, date(2027, 1, 10), 30)
            assert "delivery_event_20261206" not in dropped
            assert await connection.fetchval("SELECT count(*) FROM delivery_event") == 2

            await audit_round(connection, AddressPseudonyms(bytes(32)), 100)
            created, dropped = await maintain_partitions(connection, date(2027, 1, 10), 30)
            assert "delivery_event_20261206" in dropped
            assert await connection.fetchval("SELECT count(*) FROM delivery_event") == 0
        finally:
            await connection.close()

    asyncio.run(run())


def test_nodes_lists_running_node(make_mta):
    mta = make_mta()

    rows = wait_until(lambda: [json.loads(line) for line in mta.cli("nodes", "--json").stdout.splitlines()])

    assert len(rows) == 1
    assert rows[0]["alive"] is True
    assert rows[0]["id"].startswith("mta.example.com/")
    assert "alive" in mta.cli("nodes").stdout
