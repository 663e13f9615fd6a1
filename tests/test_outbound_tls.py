"""Outbound TLS policy per destination: none, may, encrypt and verify, against sinks with and without STARTTLS."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
import trustme

from mta.delivery.tls_policy import TlsPolicies
from tests.conftest import REMOTE_MX_ADDRESS, config_error
from tests.mx import send_mx, wait_until
from tests.pgcluster import free_port
from tests.sink import Sink, sink_on

DOMAIN = "tls.example"
MX_HOST = f"mx.{DOMAIN}"


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module", autouse=True)
def records(dns) -> Iterator[None]:
    dns.add(DOMAIN, "MX", f"10 {MX_HOST}.")
    dns.add(MX_HOST, "A", REMOTE_MX_ADDRESS)
    yield
    dns.remove(DOMAIN)
    dns.remove(MX_HOST)


def server_context(authority: trustme.CA, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(name).configure_cert(context)
    return context


def start_mta(make_mta, authority, tmp_path, port: int, **tls) -> object:
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    # The test client relays as a host of the operator's own network.
    return make_mta({"smtp": {"relay_networks": ["127.0.0.1/32"]},
                     "delivery": {"smtp_port": port, "retry_schedule": [60.0], "tls": {"ca_file": str(ca_file)} | tls}})


def deliver(mta, sink: Sink) -> list:
    assert send_mx(mta, "sender@example.net", f"user@{DOMAIN}")[0] == 250
    return sink.wait_for(1, timeout=10)


@pytest.mark.parametrize("mode, certificate_name, expected", [
    ("verify", MX_HOST, "certificate verified"),
    ("encrypt", "wrong.example", "certificate not verified"),
    ("may", "wrong.example", "certificate not verified"),
])
def test_tls_used_and_checked_as_asked(make_mta, authority, tmp_path, mode, certificate_name, expected):
    port = free_port(REMOTE_MX_ADDRESS)
    mta = start_mta(make_mta, authority, tmp_path, port, policy={DOMAIN: mode})

    with sink_on(REMOTE_MX_ADDRESS, port, tls_context=server_context(authority, certificate_name)) as sink:
        arrived = deliver(mta, sink)

    assert len(arrived) == 1
    assert f"TLS to {MX_HOST}[{REMOTE_MX_ADDRESS}]:{port}: TLSv1." in mta.log()
    assert expected in mta.log()


def test_verify_refuses_wrong_certificate_name(make_mta, authority, tmp_path):
    port = free_port(REMOTE_MX_ADDRESS)
    mta = start_mta(make_mta, authority, tmp_path, port, policy={DOMAIN: "verify"})

    with sink_on(REMOTE_MX_ADDRESS, port, tls_context=server_context(authority, "wrong.example")) as sink:
        assert deliver(mta, sink) == []
        assert wait_until(lambda: "status=deferred (451 4.7.5 TLS with" in mta.log())

    assert "(verify, by policy table)" in mta.log()
    assert "certificate verify failed" in mta.log()


def test_encrypt_refuses_server_without_starttls(make_mta, authority, tmp_path):
    port = free_port(REMOTE_MX_ADDRESS)
    mta = start_mta(make_mta, authority, tmp_path, port, default="encrypt")

    with sink_on(REMOTE_MX_ADDRESS, port) as sink:
        assert deliver(mta, sink) == []
        assert wait_until(lambda: "status=deferred (451 4.7.4 TLS is required (encrypt, by default)" in mta.log())


def test_none_sends_in_clear_even_when_offered(make_mta, authority, tmp_path):
    port = free_port(REMOTE_MX_ADDRESS)
    mta = start_mta(make_mta, authority, tmp_path, port, policy={f".example": "none"})

    with sink_on(REMOTE_MX_ADDRESS, port, tls_context=server_context(authority, MX_HOST)) as sink:
        assert len(deliver(mta, sink)) == 1

    assert "TLS to" not in mta.log()


@pytest.mark.parametrize("domain, expected", [
    ("bank.example", "verify"),
    ("mx.bank.example", "encrypt"),
    ("deep.mx.bank.example", "encrypt"),
    ("other.example", "may"),
    ("BANK.EXAMPLE.", "verify"),
])
def test_policy_lookup_by_domain_and_parent(domain, expected):
    policies = TlsPolicies("may", {"bank.example": "verify", ".bank.example": "encrypt"})

    assert policies.for_domain(domain).mode == expected


def test_unknown_mode_refused(make_mta):
    with pytest.raises(RuntimeError, match="delivery.tls.policy.bank.example must be one of none, may, encrypt, verify"):
        make_mta({"delivery": {"tls": {"policy": {"bank.example": "strict"}}}})


def test_wildcard_policy_key_refused(tmp_path):
    message = config_error(tmp_path, '[delivery.tls.policy]\n"*.bank.example" = "verify"\n')

    assert "delivery.tls.policy: invalid key '*.bank.example'" in message
