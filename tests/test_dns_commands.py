"""mta dns records and mta dns check, run as the operator runs them, against the loopback DNS server.

The DKIM keys are key files from before keys moved into the database: an
RSA key under the signing selector and an Ed25519 key under a second
selector. ``mta dkim records`` imports them into the database, as
``mta serve`` would, the first as the active key and the second as a
retiring one, which stays published.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mta import dns_check, dns_records
from mta.config import load
from mta.delivery.mta_sts import parse_policy
from mta.dkim_store import published_keys
from tests.conftest import create_database
from tests.dnsserver import DnsServer
from tests.mtaprocess import REPOSITORY, merge, to_toml
from tests.test_end_to_end import txt_strings

DOMAIN = "example.com"
SOURCE_ADDRESS = "127.0.0.3"
NEXT_SELECTOR = "next"


def write_key_file(path: Path, private_key) -> None:
    pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    path.write_bytes(pem)
    path.chmod(0o600)


@pytest.fixture(scope="module")
def database_url(pg) -> str:
    return create_database(pg)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, database_url: str) -> Path:
    """A data directory whose two DKIM key files mta dkim records imports into a migrated database."""
    directory = tmp_path_factory.mktemp("mta") / "var"
    config = write_config(directory.parent, directory, 53, database_url)
    result = run_mta(config, "migrate")
    assert result.returncode == 0, result.stderr

    (directory / "dkim").mkdir(parents=True)
    write_key_file(directory / "dkim" / f"{DOMAIN}.mta.pem", rsa.generate_private_key(65537, 2048))
    write_key_file(directory / "dkim" / f"{DOMAIN}.{NEXT_SELECTOR}.pem", ed25519.Ed25519PrivateKey.generate())
    result = run_mta(config, "dkim", "records")
    assert result.returncode == 0, result.stderr
    return directory


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def config_path(tmp_path: Path, data_dir: Path, dns_server: DnsServer, database_url: str) -> Path:
    return write_config(tmp_path, data_dir, dns_server.port, database_url)


def write_config(directory: Path, data_dir: Path, dns_port: int, database_url: str, extra: dict | None = None) -> Path:
    tables = {
        "server": {"hostname": "mta.example.com", "data_dir": str(data_dir)},
        "database": {"url": database_url},
        "domains": {"local": [DOMAIN]},
        "delivery": {"nameservers": ["127.0.0.1"], "dns_port": dns_port, "source_addresses": [SOURCE_ADDRESS]},
    }
    path = directory / "mta.toml"
    path.write_text(to_toml(merge(tables, extra or {})))
    return path


def run_mta(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", "--config", str(config), *args],
                          cwd=config.parent, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPOSITORY)})


def records_json(config: Path) -> dict:
    result = run_mta(config, "dns", "records", DOMAIN, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def publish(server: DnsServer, config: Path) -> None:
    """Add every record that mta dns records prints to the DNS server."""
    for record in records_json(config)["records"]:
        for value in record["values"]:
            server.add(record["name"], record["type"], value)


def parse_zone_lines(output: str) -> dict[tuple[str, str], list[dns.rdata.Rdata]]:
    """Parse each record line of mta dns records into (owner, type) -> rdata, checking TTL and class."""
    parsed: dict[tuple[str, str], list[dns.rdata.Rdata]] = {}
    for line in output.splitlines():
        if not line.strip() or line.startswith(";"):
            continue
        owner, ttl, rdclass, rdtype, data = line.split(None, 4)
        assert owner.endswith("."), line
        assert ttl == "3600", line
        assert rdclass == "IN", line
        rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, data, origin=dns.name.root, relativize=False)
        parsed.setdefault((owner, rdtype), []).append(rdata)
    return parsed


def txt(rdata: dns.rdata.Rdata) -> str:
    return b"".join(rdata.strings).decode()


def dkim_tags(text: str) -> dict[str, str]:
    return {name.strip(): value.strip() for name, _, value in (part.partition("=") for part in text.split(";"))}


def status_line(output: str, kind: str, name: str) -> str:
    """Return the status line of one record in mta dns check's output."""
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] == kind and fields[2] == name:
            return line
    raise AssertionError(f"no line for {kind} {name} in:\n{output}")


def expected_records(config_path: Path) -> dns_records.DomainRecords:
    """Build the records of DOMAIN in the test process, as mta dns check does."""
    config = load(config_path)

    async def keys():
        connection = await asyncpg.connect(config.database.url)
        try:
            return await published_keys(connection, DOMAIN)
        finally:
            await connection.close()

    return dns_records.build(config, DOMAIN, asyncio.run(keys()))


def unused_udp_port() -> int:
    """Return a loopback UDP port that was free a moment ago, so no DNS server replies there."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_records_zone_lines_parse(config_path: Path, data_dir: Path) -> None:
    signing_key = serialization.load_pem_private_key((data_dir / "dkim" / "example.com.mta.pem").read_bytes(), None)
    signing_der = signing_key.public_key().public_bytes(serialization.Encoding.DER,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    result = run_mta(config_path, "dns", "records", DOMAIN)
    assert result.returncode == 0, result.stderr
    parsed = parse_zone_lines(result.stdout)

    mx = parsed[("example.com.", "MX")]
    assert [rdata.to_text() for rdata in mx] == ["10 mta.example.com."]

    apex_txt = [txt(rdata) for rdata in parsed[("example.com.", "TXT")]]
    assert apex_txt == [f"v=spf1 ip4:{SOURCE_ADDRESS} -all"]

    records_line = run_mta(config_path, "dkim", "records").stdout.splitlines()[0]
    assert all(len(string) <= 255 for string in re.findall(r'"([^"]*)"', records_line))
    dkim_line = txt_strings(records_line)
    (signing,) = parsed[("mta._domainkey.example.com.", "TXT")]
    assert dkim_tags(txt(signing))["k"] == "rsa"
    assert dkim_tags(txt(signing))["p"] == dkim_tags(dkim_line)["p"]
    assert dkim_tags(txt(signing))["p"] == base64.b64encode(signing_der).decode()
    assert all(len(string) <= 255 for string in signing.strings)
    assert len(signing.strings) > 1

    next_key = serialization.load_pem_private_key((data_dir / "dkim" / "example.com.next.pem").read_bytes(), None)
    raw = next_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    (rotated,) = parsed[("next._domainkey.example.com.", "TXT")]
    assert dkim_tags(txt(rotated))["k"] == "ed25519"
    assert dkim_tags(txt(rotated))["p"] == base64.b64encode(raw).decode()

    (dmarc,) = parsed[("_dmarc.example.com.", "TXT")]
    assert txt(dmarc) == "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.com"

    policy_file = run_mta(config_path, "dns", "records", DOMAIN, "--policy-file").stdout
    (sts,) = parsed[("_mta-sts.example.com.", "TXT")]
    assert txt(sts) == f"v=STSv1; id={hashlib.sha256(policy_file.encode()).hexdigest()[:32]}"

    (tlsrpt,) = parsed[("_smtp._tls.example.com.", "TXT")]
    assert txt(tlsrpt) == "v=TLSRPTv1; rua=mailto:tls-reports@example.com"

    assert len(parsed) == 7


def test_records_load_as_zone(config_path: Path) -> None:
    result = run_mta(config_path, "dns", "records", DOMAIN)
    assert result.returncode == 0, result.stderr

    zone = dns.zone.from_text(result.stdout, origin=DOMAIN + ".", relativize=False, check_origin=False)
    names = sorted(name.to_text() for name in zone.nodes)
    assert names == ["_dmarc.example.com.", "_mta-sts.example.com.", "_smtp._tls.example.com.", "example.com.",
                     "mta._domainkey.example.com.", "next._domainkey.example.com."]


def test_records_policy_file(config_path: Path, tmp_path: Path, data_dir: Path, database_url: str) -> None:
    result = run_mta(config_path, "dns", "records", DOMAIN, "--policy-file")
    assert result.returncode == 0, result.stderr
    policy = parse_policy(result.stdout)
    assert policy.mode == "testing"
    assert policy.mx == ("mta.example.com",)
    assert policy.max_age == 604800

    (tmp_path / "enforce").mkdir()
    enforcing = write_config(tmp_path / "enforce", data_dir, 53, database_url, {"dns": {"mta_sts_mode": "enforce"}})
    testing_id = records_json(config_path)["records"][-2]["values"][0]
    enforcing_id = records_json(enforcing)["records"][-2]["values"][0]
    assert testing_id.startswith("v=STSv1; id=")
    assert enforcing_id != testing_id


def test_records_follow_dns_settings(tmp_path: Path, data_dir: Path, database_url: str) -> None:
    config = write_config(tmp_path, data_dir, 53, database_url, {
        "dns": {"mx": ["mx1.example.com", "mx2.example.com."], "dmarc_policy": "reject",
                "dmarc_rua": "dmarc@reports.example.org", "tlsrpt_rua": "tls@reports.example.org", "ttl": 300},
        "delivery": {"source_addresses": []},
    })
    output = records_json(config)
    values = {record["kind"]: record["values"] for record in output["records"] if record["kind"] != "DKIM"}

    assert values["MX"] == ["10 mx1.example.com.", "20 mx2.example.com."]
    assert values["SPF"] == ["v=spf1 a:mta.example.com -all"]
    assert values["DMARC"] == ["v=DMARC1; p=reject; rua=mailto:dmarc@reports.example.org"]
    assert values["TLS-RPT"] == ["v=TLSRPTv1; rua=mailto:tls@reports.example.org"]
    assert all(record["ttl"] == 300 for record in output["records"])
    assert "mx: mx1.example.com\nmx: mx2.example.com\n" in output["mta_sts_policy"]["text"]


def test_records_spf_lists_source_pool(tmp_path: Path, data_dir: Path, database_url: str) -> None:
    config = write_config(tmp_path, data_dir, 53, database_url, {"delivery": {"source_addresses": [], "source": {
        "addresses": {"127.0.0.3": "out1.example.com", "::1": "out2.example.com"},
        "pools": {"default": ["127.0.0.3", "::1"]},
    }}})
    spf = [record for record in records_json(config)["records"] if record["kind"] == "SPF"]
    assert spf[0]["values"] == ["v=spf1 ip4:127.0.0.3 ip6:::1 -all"]


def test_records_non_local_domain(config_path: Path) -> None:
    result = run_mta(config_path, "dns", "records", "example.net")
    assert result.returncode == 2
    assert "example.net is not a local domain" in result.stderr


def test_records_without_dkim_key(tmp_path: Path, pg) -> None:
    config = write_config(tmp_path, tmp_path / "empty", 53, create_database(pg))
    assert run_mta(config, "migrate").returncode == 0

    result = run_mta(config, "dns", "records", DOMAIN)
    assert result.returncode == 1
    assert "no DKIM key for example.com in the database" in result.stderr


def test_check_all_published(config_path: Path, dns_server: DnsServer) -> None:
    publish(dns_server, config_path)
    result = run_mta(config_path, "dns", "check", DOMAIN)
    assert result.returncode == 0, result.stdout + result.stderr
    statuses = [line.split()[0] for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert statuses == ["OK"] * 7


def test_check_dkim_missing(config_path: Path, dns_server: DnsServer) -> None:
    publish(dns_server, config_path)
    dns_server.remove("mta._domainkey.example.com")

    result = run_mta(config_path, "dns", "check", DOMAIN)
    assert result.returncode == 1
    assert status_line(result.stdout, "DKIM", "mta._domainkey.example.com.").startswith("MISSING")
    assert status_line(result.stdout, "DKIM", "next._domainkey.example.com.").startswith("OK")
    assert "DKIM mta._domainkey.example.com. MISSING" in result.stderr


def test_check_spf_different(config_path: Path, dns_server: DnsServer) -> None:
    publish(dns_server, config_path)
    dns_server.remove("example.com", "TXT")
    dns_server.add("example.com", "TXT", "v=spf1 ip4:192.0.2.99 -all")

    result = run_mta(config_path, "dns", "check", DOMAIN)
    assert result.returncode == 1
    assert status_line(result.stdout, "SPF", "example.com.").startswith("DIFFERENT")
    assert f"expected: v=spf1 ip4:{SOURCE_ADDRESS} -all" in result.stdout
    assert "found:    v=spf1 ip4:192.0.2.99 -all" in result.stdout
    assert "SPF example.com. DIFFERENT" in result.stderr


def test_check_json_output(config_path: Path, dns_server: DnsServer) -> None:
    publish(dns_server, config_path)
    dns_server.remove("_dmarc.example.com")

    result = run_mta(config_path, "dns", "check", DOMAIN, "--json")
    assert result.returncode == 1
    findings = [json.loads(line) for line in result.stdout.splitlines()]
    dmarc = [finding for finding in findings if finding["kind"] == "DMARC"]
    assert dmarc[0]["status"] == "MISSING"
    assert dmarc[0]["found"] == []
    assert {finding["status"] for finding in findings if finding["kind"] != "DMARC"} == {"OK"}


def test_check_unreachable_nameserver(tmp_path: Path, data_dir: Path, database_url: str) -> None:
    config = write_config(tmp_path, data_dir, unused_udp_port(), database_url)

    started = time.monotonic()
    result = run_mta(config, "dns", "check", DOMAIN, "--timeout", "0.5")
    elapsed = time.monotonic() - started

    assert result.returncode == 1
    assert "timed out after 0.5 s" in result.stderr
    assert "127.0.0.1 port" in result.stderr
    assert elapsed < 15


def test_check_servfail(config_path: Path, dns_server: DnsServer) -> None:
    publish(dns_server, config_path)
    dns_server.set_failing("_dmarc.example.com")

    result = run_mta(config_path, "dns", "check", DOMAIN, "--timeout", "2")
    assert result.returncode == 1
    assert "DNS query for _dmarc.example.com. TXT failed" in result.stderr


def test_check_non_local_domain(config_path: Path) -> None:
    result = run_mta(config_path, "dns", "check", "example.net")
    assert result.returncode == 2
    assert "example.net is not a local domain" in result.stderr


# (record owner, published TXT texts, expected status) for records that
# replace the published one of their kind. Loose matches are OK.
COMPARISON_CASES = [
    ("example.com", ["v=spf1 mx ip4:127.0.0.0/24 ~all"], "OK"),
    ("example.com", ["v=spf1 ip4:127.0.0.3 +all"], "DIFFERENT"),
    ("example.com", ["v=spf1 ip4:127.0.0.3 -all", "v=spf1 -all"], "DIFFERENT"),
    ("example.com", ["google-site-verification=abc", f"v=spf1 ip4:{SOURCE_ADDRESS} -all"], "OK"),
    ("example.com", ["google-site-verification=abc"], "MISSING"),
    ("_dmarc.example.com", ["v=DMARC1; p=quarantine; pct=100; fo=1; rua=mailto:other@example.org"], "OK"),
    ("_dmarc.example.com", ["v=DMARC1; p=none; rua=mailto:postmaster@example.com"], "DIFFERENT"),
    ("_mta-sts.example.com", ["v=STSv1; id=20240101"], "DIFFERENT"),
    ("_smtp._tls.example.com", ["v=TLSRPTv1; rua=mailto:TLS-Reports@example.com,https://r.example.org/"], "OK"),
    ("_smtp._tls.example.com", ["v=TLSRPTv1; rua=mailto:someone@example.org"], "DIFFERENT"),
    ("mta._domainkey.example.com", ["v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"], "DIFFERENT"),
]


@pytest.mark.parametrize(("owner", "texts", "status"), COMPARISON_CASES)
def test_check_compares_loosely(config_path: Path, dns_server: DnsServer, owner: str, texts: list[str],
                                status: str) -> None:
    publish(dns_server, config_path)
    dns_server.remove(owner, "TXT")
    for text in texts:
        dns_server.add(owner, "TXT", text)

    expected = expected_records(config_path)
    resolver = dns_check.make_resolver(["127.0.0.1"], dns_server.port, timeout=2.0)
    findings = dns_check.check(expected, resolver)

    (finding,) = [finding for finding in findings
                  if finding.record.name == owner + "." and finding.record.rdtype == "TXT"]
    assert finding.status == status, finding.reason
    others = [finding.status for finding in findings if finding.record.name != owner + "."]
    assert set(others) == {"OK"}


def test_check_mx_compared_as_host_set(config_path: Path, dns_server: DnsServer) -> None:
    publish(dns_server, config_path)
    dns_server.remove("example.com", "MX")
    dns_server.add("example.com", "MX", "50 MTA.example.com.")

    expected = expected_records(config_path)
    findings = dns_check.check(expected, dns_check.make_resolver(["127.0.0.1"], dns_server.port, timeout=2.0))
    assert findings[0].record.kind == "MX"
    assert findings[0].status == "OK"

    dns_server.add("example.com", "MX", "60 backup.example.org.")
    findings = dns_check.check(expected, dns_check.make_resolver(["127.0.0.1"], dns_server.port, timeout=2.0))
    assert findings[0].status == "DIFFERENT"
    assert findings[0].reason == "unexpected host backup.example.org"
