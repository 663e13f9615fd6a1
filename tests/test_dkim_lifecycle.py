"""DKIM keys in the database: import of old key files, rotation, activation by DNS, retirement.

The MTA checks pending keys and reloads its signing keys every fraction of
a second here, so each step waits for a log line or a database state, not
for the production intervals.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mta.dkim_store import unseal
from mta.storage.master_key import MasterKey, MasterKeys
from tests.conftest import query
from tests.test_operations import http_get
from tests.test_end_to_end import PASSWORD, add_alice, publish_dkim, txt_lookup

FAST_ROTATION = {"domains": {"dkim_check_interval": 0.3, "dkim_reload_interval": 0.3}}


def wait_until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> object:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def send(mta, subject: str) -> None:
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{mta.submission_port}", "-tls", "--auth", "PLAIN",
         "--auth-user", "alice@example.com", "--auth-password", PASSWORD,
         "--from", "alice@example.com", "--to", "bob@example.net", "--header", f"Subject: {subject}",
         "--timeout", "30"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def selectors_of(message: bytes) -> list[str]:
    signatures = [value for name, value in dkim.rfc822_parse(message)[0] if name.lower() == b"dkim-signature"]
    return [dkim.util.parse_tag_value(value)[b"s"].decode() for value in signatures]


def key_states(mta) -> dict[str, str]:
    return {row["selector"]: row["state"] for row in query(mta.database_url, "SELECT selector, state FROM dkim_key")}


def published_dkim(mta) -> dict[str, str]:
    """Return selector -> TXT value of every DKIM record that mta dns records prints."""
    result = mta.cli("dns", "records", "example.com", "--json")
    assert result.returncode == 0, result.stderr
    records = [record for record in json.loads(result.stdout)["records"] if record["kind"] == "DKIM"]
    return {record["name"].split(".")[0]: record["values"][0] for record in records}


def rotate(mta, algorithm: str) -> str:
    result = mta.cli("dkim", "rotate", "example.com", "--algorithm", algorithm, "--actor", "tester")
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if not line.startswith(";")]
    return line.split(".")[0]


def test_rotation_signs_new_selector_after_dns(make_mta, sink, dns):
    mta = make_mta(FAST_ROTATION)
    add_alice(mta)
    publish_dkim(mta, dns)

    wait_until(lambda: "mta_dkim_records_missing 0.0" in http_get(mta.http_port, "/metrics")[1],
               "no missing record in the metrics")
    selector = rotate(mta, "rsa")
    assert key_states(mta) == {"mta": "active", selector: "pending"}
    send(mta, "before the record")
    (before,) = sink.wait_for(1)
    assert selectors_of(before.data) == ["mta"]
    assert dkim.verify(before.data, dnsfunc=txt_lookup(dns))

    # The DNS server lives for the whole session: drop a record that an earlier run left under this name.
    dns.remove(f"{selector}._domainkey.example.com", "TXT")
    dns.add(f"{selector}._domainkey.example.com", "TXT", published_dkim(mta)[selector])
    wait_until(lambda: key_states(mta) == {"mta": "retiring", selector: "active"}, "the activation")
    wait_until(lambda: f"example.com/{selector}" in mta.log(), "the workers' key reload")
    send(mta, "after the record")
    after = sink.wait_for(2)[1]
    assert selectors_of(after.data) == [selector]
    assert dkim.verify(after.data, dnsfunc=txt_lookup(dns))

    assert set(published_dkim(mta)) == {"mta", selector}
    query(mta.database_url, "UPDATE dkim_key SET retire_after = now() WHERE selector = 'mta'")
    wait_until(lambda: key_states(mta)["mta"] == "retired", "the retirement")
    assert set(published_dkim(mta)) == {selector}
    (sealed,) = query(mta.database_url, "SELECT sealed_key FROM dkim_key WHERE selector = 'mta'")
    assert sealed["sealed_key"] is None

    actions = [row["action"] for row in query(mta.database_url,
                                              "SELECT action FROM audit_log WHERE action LIKE 'dkim.%' ORDER BY id")]
    assert actions == ["dkim.create", "dkim.rotate", "dkim.activate", "dkim.retiring", "dkim.retire"]


def test_activate_without_record_rejected(make_mta, dns):
    mta = make_mta(FAST_ROTATION, start=False)
    old_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = mta.workdir / "var" / "dkim" / "example.com.mta.pem"
    key_file.parent.mkdir(parents=True)
    key_file.write_bytes(old_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    mta.start()

    (row,) = query(mta.database_url, "SELECT * FROM dkim_key")
    assert (row["selector"], row["state"], row["algorithm"]) == ("mta", "active", "rsa")
    private_der = old_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    assert b"PRIVATE KEY" not in row["sealed_key"]
    assert private_der not in row["sealed_key"]
    masters = MasterKeys(MasterKey.from_bytes((mta.workdir / "var" / "keys" / "master.key").read_bytes()))
    assert unseal(masters, row).private_numbers() == old_key.private_numbers()

    selector = rotate(mta, "ed25519")
    rejected = mta.cli("dkim", "activate", "example.com", selector, "--timeout", "2")
    assert rejected.returncode == 1
    assert f"do not return the record of DKIM key {selector} of example.com" in rejected.stderr
    assert key_states(mta)[selector] == "pending"

    already = mta.cli("dkim", "activate", "example.com", "mta", "--timeout", "2")
    assert already.returncode == 2
    assert "DKIM key mta of example.com is active: only a pending or retiring key" in already.stderr

    unknown = mta.cli("dkim", "activate", "example.com", "nosuchkey")
    assert unknown.returncode == 2
    assert "has no DKIM key with selector 'nosuchkey'" in unknown.stderr

    forced = mta.cli("dkim", "activate", "example.com", selector, "--force", "--actor", "tester")
    assert forced.returncode == 0, forced.stderr
    assert key_states(mta) == {"mta": "active", selector: "active"}
    wait_until(lambda: "mta_dkim_records_missing 2.0" in http_get(mta.http_port, "/metrics")[1],
               "both active keys missing in the metrics")
    assert "mta_dkim_record_check_failed 0.0" in http_get(mta.http_port, "/metrics")[1]
    dns.set_failing("mta._domainkey.example.com")
    try:
        wait_until(lambda: "mta_dkim_record_check_failed 1.0" in http_get(mta.http_port, "/metrics")[1],
                   "the failed check in the metrics")
    finally:
        dns.set_failing("mta._domainkey.example.com", False)
    (entry,) = query(mta.database_url, "SELECT actor, detail FROM audit_log WHERE action = 'dkim.activate'")
    assert entry["actor"] == "tester"
    assert json.loads(entry["detail"])["dns_checked"] is False

    listing = mta.cli("dkim", "list", "example.com", "--json", "--timeout", "2")
    assert listing.returncode == 0, listing.stderr
    in_dns = {entry["selector"]: entry["in_dns"] for entry in map(json.loads, listing.stdout.splitlines())}
    assert in_dns == {"mta": False, selector: False}
    table = mta.cli("dkim", "list", "--timeout", "2")
    assert table.returncode == 0, table.stderr
    rows = [line.split()[:4] for line in table.stdout.splitlines()[1:]]
    assert sorted(rows) == [["example.com", selector, "ed25519", "active"], ["example.com", "mta", "rsa", "active"]]
