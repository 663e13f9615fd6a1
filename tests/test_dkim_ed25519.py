"""Ed25519 signing (RFC 8463), alone and beside RSA, checked against dkimpy and through the real MTA."""

from __future__ import annotations

import base64
import subprocess
import types

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mta.dkim import DkimKey, DkimSigner, dns_txt_value, dns_txt_value_ed25519
from tests.test_dkim import DOMAIN, EXPECTED_SIGNED_HEADERS, MESSAGE, TIMESTAMP
from tests.test_end_to_end import PASSWORD, add_alice, publish_dkim, txt_lookup

RSA_SELECTOR = "rsa2026"
ED25519_SELECTOR = "ed2026"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ed25519_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def dnsfunc_for(records: dict[str, str]):
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        value = records.get(name.decode())
        return value.encode() if value is not None else None

    return dnsfunc


def fields_of(signature: bytes) -> list[bytes]:
    """Split prepended DKIM-Signature fields, each with its CRLF."""
    return [b"DKIM-Signature:" + part for part in signature.split(b"DKIM-Signature:")[1:]]


def test_ed25519_matches_dkimpy_bytes(ed25519_key, monkeypatch):
    monkeypatch.setattr(dkim, "time", types.SimpleNamespace(time=lambda: TIMESTAMP))
    signer = DkimSigner([DkimKey(DOMAIN, ED25519_SELECTOR, ed25519_key)])
    seed = ed25519_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())

    expected = dkim.sign(MESSAGE, ED25519_SELECTOR.encode(), DOMAIN.encode(), base64.b64encode(seed),
                         canonicalize=(b"relaxed", b"relaxed"), include_headers=EXPECTED_SIGNED_HEADERS,
                         signature_algorithm=b"ed25519-sha256")

    assert signer.sign(MESSAGE, DOMAIN, now=TIMESTAMP) == expected


def test_dual_signatures_both_verify(rsa_key, ed25519_key):
    signer = DkimSigner([DkimKey(DOMAIN, ED25519_SELECTOR, ed25519_key), DkimKey(DOMAIN, RSA_SELECTOR, rsa_key)])
    records = {f"{RSA_SELECTOR}._domainkey.{DOMAIN}.": dns_txt_value(rsa_key),
               f"{ED25519_SELECTOR}._domainkey.{DOMAIN}.": dns_txt_value_ed25519(ed25519_key)}

    signature = signer.sign(MESSAGE, DOMAIN)
    fields = fields_of(signature)
    verifier = dkim.DKIM(signature + MESSAGE)

    assert len(fields) == 2
    assert b"a=rsa-sha256" in fields[0]
    assert b"a=ed25519-sha256" in fields[1]
    assert verifier.verify(idx=0, dnsfunc=dnsfunc_for(records))
    assert verifier.verify(idx=1, dnsfunc=dnsfunc_for(records))


def test_ed25519_wrong_key_fails(ed25519_key):
    signer = DkimSigner([DkimKey(DOMAIN, ED25519_SELECTOR, ed25519_key)])
    other = ed25519.Ed25519PrivateKey.generate()
    records = {f"{ED25519_SELECTOR}._domainkey.{DOMAIN}.": dns_txt_value_ed25519(other)}

    assert not dkim.verify(signer.sign(MESSAGE, DOMAIN) + MESSAGE, dnsfunc=dnsfunc_for(records))


def test_signer_rejects_two_ed25519_keys(ed25519_key):
    keys = [DkimKey(DOMAIN, "one", ed25519_key), DkimKey(DOMAIN, "two", ed25519.Ed25519PrivateKey.generate())]

    with pytest.raises(ValueError, match="duplicate DKIM key"):
        DkimSigner(keys)


def test_mta_dual_signs_submission(make_mta, sink, dns):
    mta = make_mta({"domains": {"dkim_ed25519_selector": ED25519_SELECTOR}})
    add_alice(mta)
    publish_dkim(mta, dns)

    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{mta.submission_port}", "-tls", "--auth", "PLAIN",
         "--auth-user", "alice@example.com", "--auth-password", PASSWORD,
         "--from", "alice@example.com", "--to", "bob@example.net", "--timeout", "30"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    data = sink.wait_for(1)[0].data
    verifier = dkim.DKIM(data)

    signatures = [value for name, value in dkim.rfc822_parse(data)[0] if name.lower() == b"dkim-signature"]
    assert len(signatures) == 2
    assert b"s=mta;" in signatures[0]
    assert f"s={ED25519_SELECTOR};".encode() in signatures[1]
    assert verifier.verify(idx=0, dnsfunc=txt_lookup(dns))
    assert verifier.verify(idx=1, dnsfunc=txt_lookup(dns))
