"""DANE (RFC 7672): TLSA records decide the certificate check where DNSSEC vouches for them.

The loopback DNS server acts as a validating resolver: it sets the AD
flag on answers under dane.example and leaves it off under plain.example.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterator

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mta.delivery.dane import TlsaRecord
from tests.conftest import REMOTE_MX_ADDRESS
from tests.mx import send_mx, wait_until
from tests.pgcluster import free_port
from tests.sink import sink_on

SECURE = "dane.example"
INSECURE = "plain.example"


@pytest.fixture(scope="module", autouse=True)
def records(dns) -> Iterator[None]:
    for domain in (SECURE, INSECURE):
        dns.add(domain, "MX", f"10 mx.{domain}.")
        dns.add(f"mx.{domain}", "A", REMOTE_MX_ADDRESS)
    dns.set_secure(SECURE)
    yield
    dns.set_secure(SECURE, False)
    for domain in (SECURE, INSECURE):
        dns.remove(domain)
        dns.remove(f"mx.{domain}")


@pytest.fixture(scope="module")
def root() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def intermediate(root) -> trustme.CA:
    return root.create_child_ca()


def certificate(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def tlsa_text(usage: int, selector: int, pem: bytes) -> str:
    """Return TLSA rdata with a SHA-256 of the full certificate (selector 0) or its public key (1)."""
    parsed = certificate(pem)
    selected = parsed.public_bytes(Encoding.DER) if selector == 0 else \
        parsed.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return f"{usage} {selector} 1 {hashlib.sha256(selected).hexdigest()}"


def server_context(authority: trustme.CA, name: str) -> tuple[ssl.SSLContext, list[bytes]]:
    """Return a server context with a certificate for name, and its chain as sent, leaf first."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    issued = authority.issue_cert(name)
    issued.configure_cert(context)
    return context, [blob.bytes() for blob in issued.cert_chain_pems]


def publish(dns, domain: str, port: int, *texts: str) -> None:
    name = f"_{port}._tcp.mx.{domain}"
    dns.remove(name)
    for text in texts:
        dns.add(name, "TLSA", text)


def start_mta(make_mta, port: int, **tls):
    return make_mta({"smtp": {"relay_networks": ["127.0.0.1/32"]},
                     "delivery": {"smtp_port": port, "retry_schedule": [60.0], "tls": tls}})


def send(mta, domain: str) -> None:
    assert send_mx(mta, "sender@example.net", f"user@{domain}")[0] == 250


def test_dane_ee_ignores_name(make_mta, dns, root):
    port = free_port(REMOTE_MX_ADDRESS)
    context, chain = server_context(root, "wrong.example")
    publish(dns, SECURE, port, tlsa_text(3, 1, chain[0]))
    mta = start_mta(make_mta, port)

    with sink_on(REMOTE_MX_ADDRESS, port, tls_context=context) as sink:
        send(mta, SECURE)
        assert len(sink.wait_for(1, timeout=10)) == 1

    assert "certificate verified" in mta.log()


def test_dane_ee_mismatch_defers(make_mta, dns, root):
    port = free_port(REMOTE_MX_ADDRESS)
    context, _ = server_context(root, f"mx.{SECURE}")
    _, other_chain = server_context(root, f"mx.{SECURE}")
    publish(dns, SECURE, port, tlsa_text(3, 1, other_chain[0]))
    mta = start_mta(make_mta, port)

    with sink_on(REMOTE_MX_ADDRESS, port, tls_context=context) as sink:
        send(mta, SECURE)
        assert wait_until(lambda: "status=deferred (451 4.7.5 DANE authentication of" in mta.log())
        assert sink.messages == []

    assert "no certificate of the server matches its TLSA records" in mta.log()


def test_dane_ta_verifies_chain_and_name(make_mta, dns, intermediate):
    port = free_port(REMOTE_MX_ADDRESS)
    context, chain = server_context(intermediate, f"mx.{SECURE}")
    publish(dns, SECURE, port, tlsa_text(2, 0, chain[1]))
    mta = start_mta(make_mta, port)

    with sink_on(REMOTE_MX_ADDRESS, port, tls_context=context) as sink:
        send(mta, SECURE)
        assert len(sink.wait_for(1, timeout=10)) == 1

    assert "certificate verified" in mta.log()


def test_dane_ta_wrong_name_defers(make_mta, dns, intermediate):
    port = free_port(REMOTE_MX_ADDRESS)
    context, chain = server_context(intermediate, "wrong.example")
    publish(dns, SECURE, port, tlsa_text(2, 0, chain[1]))
    mta = start_mta(make_mta, port)

    with sink_on(REMOTE_MX_ADDRESS, port, tls_context=context) as sink:
        send(mta, SECURE)
        assert wait_until(lambda: "status=deferred (451 4.7.5 DANE authentication of" in mta.log())
        assert sink.messages == []

    assert "does not verify for mx.dane.example" in mta.log()


def test_insecure_tlsa_ignored(make_mta, dns, root):
    port = free_port(REMOTE_MX_ADDRESS)
    context, _ = server_context(root, f"mx.{INSECURE}")
    publish(dns, INSECURE, port, "3 1 1 " + "00" * 32)
    mta = start_mta(make_mta, port)

    with sink_on(REMOTE_MX_ADDRESS, port, tls_context=context) as sink:
        send(mta, INSECURE)
        assert len(sink.wait_for(1, timeout=10)) == 1

    assert "certificate not verified" in mta.log()


def test_tlsa_lookup_failure_skips_host(make_mta, dns, root):
    port = free_port(REMOTE_MX_ADDRESS)
    context, _ = server_context(root, f"mx.{SECURE}")
    name = f"_{port}._tcp.mx.{SECURE}"
    dns.set_failing(name)
    mta = start_mta(make_mta, port)

    try:
        with sink_on(REMOTE_MX_ADDRESS, port, tls_context=context) as sink:
            send(mta, SECURE)
            assert wait_until(lambda: "status=deferred (451 4.7.5 TLSA lookup of" in mta.log(), timeout=40)
            assert sink.messages == []
    finally:
        dns.set_failing(name, False)


def test_dane_requires_starttls(make_mta, dns, root):
    port = free_port(REMOTE_MX_ADDRESS)
    _, chain = server_context(root, f"mx.{SECURE}")
    publish(dns, SECURE, port, tlsa_text(3, 1, chain[0]))
    mta = start_mta(make_mta, port)

    with sink_on(REMOTE_MX_ADDRESS, port) as sink:
        send(mta, SECURE)
        assert wait_until(lambda: "status=deferred (451 4.7.4 TLS is required (dane, by DANE)" in mta.log())
        assert sink.messages == []


def test_policy_table_overrides_dane(make_mta, dns, root):
    port = free_port(REMOTE_MX_ADDRESS)
    context, _ = server_context(root, f"mx.{SECURE}")
    publish(dns, SECURE, port, "3 1 1 " + "00" * 32)
    mta = start_mta(make_mta, port, policy={SECURE: "encrypt"})

    with sink_on(REMOTE_MX_ADDRESS, port, tls_context=context) as sink:
        send(mta, SECURE)
        assert len(sink.wait_for(1, timeout=10)) == 1


def test_dane_off_by_setting(make_mta, dns, root):
    port = free_port(REMOTE_MX_ADDRESS)
    context, _ = server_context(root, f"mx.{SECURE}")
    publish(dns, SECURE, port, "3 1 1 " + "00" * 32)
    mta = start_mta(make_mta, port, dane=False)

    with sink_on(REMOTE_MX_ADDRESS, port, tls_context=context) as sink:
        send(mta, SECURE)
        assert len(sink.wait_for(1, timeout=10)) == 1


@pytest.mark.parametrize("usage, selector, matching_type, usable", [
    (3, 1, 1, True),
    (2, 0, 2, True),
    (2, 0, 0, True),
    (1, 1, 1, False),
    (0, 0, 1, False),
    (3, 2, 1, False),
    (3, 1, 3, False),
])
def test_record_usability(usage, selector, matching_type, usable):
    assert TlsaRecord(usage, selector, matching_type, b"").usable is usable
