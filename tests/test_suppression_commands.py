"""``mta suppression``: list, add, remove and import, with bad input refused and changes audited."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import query
from tests.mtaprocess import REPOSITORY
from tests.mx import wait_until


def test_add_list_remove(shared_mta):
    added = shared_mta.cli("suppression", "add", "Example.NET", "Old@Example.org", "--reason", "asked to stop",
                           "--actor", "alice")
    assert added.returncode == 0, added.stderr

    listed = shared_mta.cli("suppression", "list", "--domain", "example.net", "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(row["address"], row["source"], row["reason"], row["expires_at"]) for row in rows] == [
        ("old@example.org", "operator", "asked to stop", None)]

    removed = shared_mta.cli("suppression", "remove", "example.net", "old@example.org", "--actor", "alice")
    assert removed.returncode == 0, removed.stderr
    assert shared_mta.cli("suppression", "list", "--domain", "example.net", "--json").stdout == ""

    actions = query(shared_mta.database_url, "SELECT action FROM audit_log WHERE actor = 'alice' ORDER BY id")
    assert [row["action"] for row in actions] == ["suppression add", "suppression remove"]


def test_import_with_expiry(shared_mta, tmp_path):
    path = tmp_path / "list.csv"
    # As a spreadsheet saves it: byte order mark, a line naming the columns, CRLF.
    path.write_bytes("\ufeffsender_domain,address,reason\r\n# from the old system\r\n"
                     "shop.example,a@example.org,complaint\r\nshop.example,b@example.org\r\n".encode())

    result = shared_mta.cli("suppression", "import", str(path), "--days", "30")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported 2 suppressed address(es)"
    table = shared_mta.cli("suppression", "list", "--domain", "shop.example").stdout
    assert "\ufeff" not in table
    assert "a@example.org" in table
    assert "complaint" in table
    assert "-- 2 suppressed address(es)" in table


@pytest.mark.parametrize("args, message", [
    (["add", "example.net", "not-an-address"], "invalid address: 'not-an-address'"),
    (["add", "user@example.net", "a@example.org"], "invalid sender domain: 'user@example.net'"),
    (["add", "example.net", "a@example.org", "--days", "0"], "invalid number of days: '0'"),
    (["remove", "example.net", "never@example.org"], "<never@example.org> is not suppressed for example.net"),
])
def test_bad_input_exits_2(shared_mta, args, message):
    result = shared_mta.cli("suppression", *args)

    assert result.returncode == 2
    assert message in result.stderr


def test_bad_import_line_imports_nothing(shared_mta, tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("bad.example,a@example.org\nbad.example,no-at-sign\n")

    result = shared_mta.cli("suppression", "import", str(path))

    assert result.returncode == 2
    assert "line 2: invalid address: 'no-at-sign'" in result.stderr
    assert shared_mta.cli("suppression", "list", "--domain", "bad.example", "--json").stdout == ""


def test_cli_outside_install_directory_names_the_problem(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mta", "suppression", "list"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPOSITORY)})

    assert result.returncode == 1
    assert f"mta: no database at {tmp_path}/var/pg: run mta from the directory where mta serve runs" in result.stderr
    assert not (tmp_path / "var" / "pg").exists()


def test_expired_entries_swept_at_start(make_mta):
    mta = make_mta()
    # Inserted while the MTA is stopped, so only the next start's housekeeping round can sweep them.
    mta.stop()
    query(mta.database_url, "INSERT INTO suppression (sender_domain, address, reason, source, expires_at) VALUES "
                            "('example.com', 'gone@example.org', 'old bounce', 'bounce', now() - interval '1 day'), "
                            "('example.com', 'kept@example.org', 'new bounce', 'bounce', now() + interval '1 day')")

    mta.start()

    assert wait_until(lambda: "expired suppression entries deleted: 1" in mta.log(), timeout=30), mta.log()[-3000:]
    rows = query(mta.database_url, "SELECT address FROM suppression")
    assert [row["address"] for row in rows] == ["kept@example.org"]
