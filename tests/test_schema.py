"""Every migration applied to an empty database gives the schema the code is written against.

The expected schema is tests/expected_schema.txt. After adding a migration,
regenerate it with ``MTA_UPDATE_SCHEMA=1 python -m pytest tests/test_schema.py``
and review the difference like code.
"""

from __future__ import annotations

import asyncio
import difflib
import os
from pathlib import Path

import asyncpg

from mta import db
from tests.conftest import create_database

EXPECTED = Path(__file__).with_name("expected_schema.txt")

_COLUMNS = """
SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, '') AS column_default
FROM information_schema.columns WHERE table_schema = 'public' ORDER BY table_name, ordinal_position
"""
_INDEXES = "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname"
_CONSTRAINTS = """
SELECT c.conrelid::regclass::text AS table_name, c.conname, pg_get_constraintdef(c.oid) AS definition
FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
WHERE n.nspname = 'public' ORDER BY 1, 2
"""
_TRIGGERS = """
SELECT tgrelid::regclass::text AS table_name, tgname, pg_get_triggerdef(oid) AS definition
FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2
"""


async def describe(url: str) -> str:
    connection = await asyncpg.connect(url)
    try:
        await db.migrate(connection)
        lines = [f"column {row['table_name']}.{row['column_name']} {row['data_type']}"
                 f" nullable={row['is_nullable']} default={row['column_default']}"
                 for row in await connection.fetch(_COLUMNS)]
        lines += [f"index {row['indexdef']}" for row in await connection.fetch(_INDEXES)]
        lines += [f"constraint {row['table_name']}.{row['conname']} {row['definition']}"
                  for row in await connection.fetch(_CONSTRAINTS)]
        lines += [f"trigger {row['table_name']}.{row['tgname']} {row['definition']}"
                  for row in await connection.fetch(_TRIGGERS)]
    finally:
        await connection.close()
    return "\n".join(lines) + "\n"


def test_migrations_give_expected_schema(pg):
    actual = asyncio.run(describe(create_database(pg)))

    if os.environ.get("MTA_UPDATE_SCHEMA") == "1":
        EXPECTED.write_text(actual)
    expected = EXPECTED.read_text()
    difference = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                              "expected_schema.txt", "migrated"))
    assert actual == expected, difference


def test_migrations_apply_once(pg):
    url = create_database(pg)

    async def migrate_twice() -> tuple[list[int], list[int]]:
        connection = await asyncpg.connect(url)
        try:
            return await db.migrate(connection), await db.migrate(connection)
        finally:
            await connection.close()

    first, second = asyncio.run(migrate_twice())
    assert first == [version for version, _ in db.migration_files()]
    assert second == []
