"""The hash-chained audit log: every change and removal is found by mta audit verify."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from tests.conftest import query


def add_entries(mta, count: int) -> None:
    for number in range(count):
        result = mta.cli("suppression", "add", "example.net", f"user{number}@example.org", "--actor", f"op{number}")
        assert result.returncode == 0, result.stderr


def tamper(mta, statement: str) -> None:
    """Run a statement with the append-only trigger off, as someone with the database's owner rights could."""
    async def run() -> None:
        connection = await asyncpg.connect(mta.database_url)
        try:
            async with connection.transaction():
                await connection.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change")
                await connection.execute(statement)
                await connection.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_change")
        finally:
            await connection.close()

    asyncio.run(run())


def audit_ids(mta) -> list[int]:
    return [row["id"] for row in query(mta.database_url, "SELECT id FROM audit_log ORDER BY id")]


def test_intact_chain_verifies(make_mta):
    mta = make_mta()
    # The MTA audits its own start-up steps, such as creating DKIM keys.
    at_start = len(audit_ids(mta))
    add_entries(mta, 3)

    result = mta.cli("audit", "verify")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{at_start + 3} audit entries verified; chain head ")
    # Consecutive ids, so no gap looks like a removed entry.
    ids = audit_ids(mta)
    assert ids == list(range(ids[0], ids[0] + len(ids)))


def test_changed_entry_named(make_mta):
    mta = make_mta()
    add_entries(mta, 3)
    second = audit_ids(mta)[1]
    tamper(mta, f"UPDATE audit_log SET actor = 'someone else' WHERE id = {second}")

    result = mta.cli("audit", "verify")

    assert result.returncode == 1
    assert f"mta: audit entry {second} is altered: its content does not match its hash" in result.stderr


def test_removed_entry_breaks_the_next(make_mta):
    mta = make_mta()
    add_entries(mta, 3)
    first, second, third = audit_ids(mta)[-3:]
    tamper(mta, f"DELETE FROM audit_log WHERE id = {second}")

    result = mta.cli("audit", "verify")

    assert result.returncode == 1
    assert f"mta: audit entry {third} is altered: its link to the previous entry does not match" in result.stderr


def test_export_links_entries(make_mta):
    mta = make_mta()
    add_entries(mta, 2)

    result = mta.cli("audit", "export", "--from", "2000-01-01")

    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert [entry["actor"] for entry in entries][-2:] == ["op0", "op1"]
    assert entries[0]["prev_hash"] == "00" * 32
    for earlier, later in zip(entries, entries[1:]):
        assert later["prev_hash"] == earlier["hash"]


def test_bad_export_time_exits_2(make_mta):
    result = make_mta().cli("audit", "export", "--from", "last tuesday")

    assert result.returncode == 2
    assert "invalid time 'last tuesday'" in result.stderr


def test_concurrent_writers_keep_one_chain(make_mta):
    mta = make_mta()
    at_start = len(audit_ids(mta))

    async def write_many() -> None:
        pool = await asyncpg.create_pool(mta.database_url, min_size=10, max_size=10)
        try:
            await asyncio.gather(*(pool.execute("INSERT INTO audit_log (actor, action) VALUES ($1, 'test write')",
                                                f"writer{number}") for number in range(50)))
        finally:
            await pool.close()

    asyncio.run(write_many())

    result = mta.cli("audit", "verify")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{at_start + 50} audit entries verified")


def test_moved_field_boundary_detected(make_mta):
    mta = make_mta()
    result = mta.cli("suppression", "add", "example.net", "a@example.org", "--actor", "ops|suppression")
    assert result.returncode == 0, result.stderr
    (entry,) = query(mta.database_url, "SELECT id, action FROM audit_log WHERE actor = 'ops|suppression'")
    # The same octets joined differently: without length prefixes the hash would not change.
    tamper(mta, f"UPDATE audit_log SET actor = 'ops', action = 'suppression|{entry['action']}' WHERE id = {entry['id']}")

    result = mta.cli("audit", "verify")

    assert result.returncode == 1
    assert f"audit entry {entry['id']} is altered" in result.stderr


def test_user_changes_audited_without_passwords(make_mta, tmp_path):
    mta = make_mta()
    added = mta.cli("user", "add", "Carol@example.com", "--password-stdin", "--actor", "ops",
                    input_text="a long secret password\n")
    assert added.returncode == 0, added.stderr
    users = tmp_path / "users.txt"
    users.write_text("dave@example.com another secret password\nerin@example.com\n")
    imported = mta.cli("user", "import", str(users), "--actor", "ops")
    assert imported.returncode == 0, imported.stderr

    rows = query(mta.database_url, "SELECT action, detail FROM audit_log WHERE actor = 'ops' ORDER BY id")
    assert [row["action"] for row in rows] == ["user add", "user import"]
    assert json.loads(rows[0]["detail"]) == {"address": "carol@example.com"}
    assert json.loads(rows[1]["detail"])["users"] == 2
    assert "secret" not in json.dumps([row["detail"] for row in rows])
    assert mta.cli("audit", "verify").returncode == 0


def test_unknown_export_action_noted(make_mta):
    mta = make_mta()
    add_entries(mta, 1)

    result = mta.cli("audit", "export", "--action", "suppression add", "--action", "supression add")
    actions = mta.cli("audit", "actions")

    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    assert "no audit entry has the action 'supression add'" in result.stderr
    assert actions.returncode == 0, actions.stderr
    assert "       1  suppression add" in actions.stdout.splitlines()
