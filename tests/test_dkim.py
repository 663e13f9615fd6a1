"""Tests for mta.dkim: agreement with dkimpy, verification by dkimpy and OpenDKIM, tampering."""

from __future__ import annotations

import base64
import os
import random
import re
import stat
import types
from pathlib import Path

import dkim
import dkim.util
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mta.dkim import (
    DkimKey,
    DkimSigner,
    DuplicateFromError,
    dns_txt_value,
    load_or_create_key,
)
from tests.dnsserver import DnsServer
from tests.opendkim import OPENDKIM, opendkim_report

DOMAIN = "example.com"
SELECTOR = "mail2024"
TIMESTAMP = 1_700_000_000

MESSAGE = (
    b"Received: from client.example.org by mx.example.com; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"From: Alice Example <alice@example.com>\r\n"
    b"To: Bob <bob@example.net>,\r\n"
    b"\tCarol <carol@example.net>\r\n"
    b"Subject: Quarterly   report\t \r\n"
    b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"Message-ID: <20231114221320.1234@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Mailer: test\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"\r\n"
    b"the  figures are \t attached.  \r\n"
    b"-- \r\n"
    b"Alice\r\n"
    b"\r\n"
    b"\r\n"
)

EXPECTED_SIGNED_HEADERS = [
    b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to",
]  # fmt: skip


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _tag(signature_field: bytes, name: bytes) -> bytes:
    value = signature_field.split(b":", 1)[1]
    return dkim.util.parse_tag_value(value)[name]


def _signed_header_list(signature_field: bytes) -> list[bytes]:
    return [name.strip() for name in re.split(rb"\s*:\s*", _tag(signature_field, b"h"))]


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def small_key() -> rsa.RSAPrivateKey:
    # 1024 bits keeps dkimpy's pure-Python RSA fast enough for many messages.
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


@pytest.fixture(scope="module")
def signer(key: rsa.RSAPrivateKey) -> DkimSigner:
    return DkimSigner([DkimKey(domain=DOMAIN, selector=SELECTOR, private_key=key)])


@pytest.fixture
def fixed_dkimpy_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # dkimpy reads t= from time.time() and has no parameter for it.
    monkeypatch.setattr(dkim, "time", types.SimpleNamespace(time=lambda: TIMESTAMP))


def _dnsfunc_for(key: rsa.RSAPrivateKey, selector: str = SELECTOR, domain: str = DOMAIN):
    expected_name = f"{selector}._domainkey.{domain}.".encode()
    txt = dns_txt_value(key).encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return txt if name == expected_name else None

    return dnsfunc


def _verify(message: bytes, key: rsa.RSAPrivateKey) -> bool:
    return dkim.verify(message, dnsfunc=_dnsfunc_for(key))


def test_sign_verifies_with_dkimpy(signer: DkimSigner, key: rsa.RSAPrivateKey):
    signature_field = signer.sign(MESSAGE, DOMAIN)

    assert _verify(signature_field + MESSAGE, key)


def test_sign_matches_dkimpy_bytes(signer: DkimSigner, key: rsa.RSAPrivateKey, fixed_dkimpy_time: None):
    signature_field = signer.sign(MESSAGE, DOMAIN, now=TIMESTAMP)

    expected = dkim.sign(
        MESSAGE,
        SELECTOR.encode(),
        DOMAIN.encode(),
        _pem(key),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=EXPECTED_SIGNED_HEADERS,
    )
    assert signature_field == expected


def test_sign_header_list(signer: DkimSigner):
    signature_field = signer.sign(MESSAGE, DOMAIN)

    signed = _signed_header_list(signature_field)
    assert signed == EXPECTED_SIGNED_HEADERS
    assert signed.count(b"from") >= 2
    for name in (b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to"):
        assert signed.count(name) == MESSAGE.lower().count(b"\r\n" + name + b":") + 1, name
    assert b"received" not in signed
    assert b"x-mailer" not in signed


def test_sign_tags(signer: DkimSigner):
    signature_field = signer.sign(MESSAGE, DOMAIN, now=TIMESTAMP)

    assert signature_field.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    assert _tag(signature_field, b"d") == DOMAIN.encode()
    assert _tag(signature_field, b"s") == SELECTOR.encode()
    assert _tag(signature_field, b"t") == str(TIMESTAMP).encode()


def test_sign_output_folded_with_crlf(signer: DkimSigner):
    signature_field = signer.sign(MESSAGE, DOMAIN)

    assert signature_field.endswith(b"\r\n")
    lines = signature_field[:-2].split(b"\r\n")
    assert len(lines) > 1
    for line in lines:
        assert b"\n" not in line
        assert len(line) <= 78, line
    for continuation in lines[1:]:
        assert continuation.startswith(b" ")


def _random_message(rng: random.Random) -> bytes:
    """Build a message with the white space cases that relaxed canonicalisation changes."""
    words = [b"alpha", b"beta", b"x", b"\xc3\xa9t\xc3\xa9", b"-", b"."]
    gaps = [b" ", b"  ", b"\t", b" \t ", b"\t\t", b"     "]

    def text(max_words: int) -> bytes:
        parts = [rng.choice(gaps) if rng.random() < 0.3 else b""]
        for _ in range(rng.randint(0, max_words)):
            parts.append(rng.choice(words))
            parts.append(rng.choice(gaps))
        if rng.random() < 0.5:
            parts.pop()
        return b"".join(parts)

    headers = [b"From:" + text(3) + b"<alice@example.com>"]
    for name in rng.sample([b"To", b"cc", b"SUBJECT", b"Date", b"Message-ID", b"Reply-To", b"X-Other", b"Received"], 4):
        value = text(8)
        if rng.random() < 0.4:
            value += b"\r\n" + rng.choice([b" ", b"\t", b"  "]) + text(4)
        headers.append(name + b":" + value)
    rng.shuffle(headers)

    body_lines = []
    for _ in range(rng.randint(0, 12)):
        body_lines.append(rng.choice([text(10), b"", rng.choice(gaps), text(3) + b"\r"]))
    body = b"\r\n".join(body_lines)
    body += rng.choice([b"", b"\r\n", b"\r\n\r\n", b"\r\n \r\n", b"\r\n\r\n\r\n"])

    message = b"\r\n".join(headers) + b"\r\n\r\n" + body
    if rng.random() < 0.15:
        message = message.replace(b"\r\n", b"\n")
    return message


def test_sign_matches_dkimpy_varied_messages(small_key: rsa.RSAPrivateKey, fixed_dkimpy_time: None):
    signer = DkimSigner([DkimKey(domain=DOMAIN, selector=SELECTOR, private_key=small_key)])
    pem = _pem(small_key)
    rng = random.Random(6376)

    for case in range(150):
        message = _random_message(rng)
        signature_field = signer.sign(message, DOMAIN, now=TIMESTAMP)

        expected = dkim.sign(
            message,
            SELECTOR.encode(),
            DOMAIN.encode(),
            pem,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=_signed_header_list(signature_field),
        )
        assert signature_field == expected, (case, message)


@pytest.mark.parametrize(
    "body",
    [b"", b"\r\n", b"\r\n\r\n", b" \r\n", b"no final line break", b"a  b\t\tc \t\r\n\r\n", b"  lead\r\n"],
)
def test_sign_matches_dkimpy_edge_bodies(signer: DkimSigner, key: rsa.RSAPrivateKey, fixed_dkimpy_time: None, body):
    message = b"From: alice@example.com\r\nSubject: edge\r\n\r\n" + body

    signature_field = signer.sign(message, DOMAIN, now=TIMESTAMP)

    expected = dkim.sign(
        message,
        SELECTOR.encode(),
        DOMAIN.encode(),
        _pem(key),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=_signed_header_list(signature_field),
    )
    assert signature_field == expected
    assert _verify(signature_field + message, key)


def test_sign_matches_dkimpy_bare_lf(signer: DkimSigner, key: rsa.RSAPrivateKey, fixed_dkimpy_time: None):
    message = MESSAGE.replace(b"\r\n", b"\n")

    signature_field = signer.sign(message, DOMAIN, now=TIMESTAMP)

    expected = dkim.sign(
        message,
        SELECTOR.encode(),
        DOMAIN.encode(),
        _pem(key),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=EXPECTED_SIGNED_HEADERS,
    )
    assert signature_field == expected
    assert signature_field == signer.sign(MESSAGE, DOMAIN, now=TIMESTAMP)


def test_sign_headers_only_message(signer: DkimSigner, key: rsa.RSAPrivateKey):
    message = b"From: alice@example.com\r\nSubject: no body\r\n"

    signature_field = signer.sign(message, DOMAIN)

    assert _verify(signature_field + message, key)


def test_tamper_prepended_from_fails(signer: DkimSigner, key: rsa.RSAPrivateKey):
    signed = signer.sign(MESSAGE, DOMAIN) + MESSAGE

    tampered = b"From: Mallory <mallory@example.com>\r\n" + signed

    assert _verify(signed, key)
    assert not _verify(tampered, key)


def test_tamper_added_cc_fails(signer: DkimSigner, key: rsa.RSAPrivateKey):
    signed = signer.sign(MESSAGE, DOMAIN) + MESSAGE

    tampered = signed.replace(b"\r\n\r\n", b"\r\nCc: mallory@example.org\r\n\r\n", 1)

    assert tampered != signed
    assert not _verify(tampered, key)


@pytest.mark.parametrize("name", [b"To", b"Cc", b"Subject", b"Date", b"Message-ID", b"Reply-To"])
def test_tamper_prepended_field_fails(signer: DkimSigner, key: rsa.RSAPrivateKey, name: bytes):
    signed = signer.sign(MESSAGE, DOMAIN) + MESSAGE

    # Verifiers take the bottom-most instance of a field first, so only the
    # extra h= entry covers a field added above the signed ones.
    tampered = name + b": mallory@example.org\r\n" + signed

    assert not _verify(tampered, key)


def test_tamper_body_byte_fails(signer: DkimSigner, key: rsa.RSAPrivateKey):
    signed = signer.sign(MESSAGE, DOMAIN) + MESSAGE

    tampered = signed.replace(b"figures", b"Figures", 1)

    assert tampered != signed
    assert not _verify(tampered, key)


def test_unsigned_header_change_still_verifies(signer: DkimSigner, key: rsa.RSAPrivateKey):
    signed = signer.sign(MESSAGE, DOMAIN) + MESSAGE

    changed = signed.replace(b"X-Mailer: test", b"X-Mailer: other", 1)

    assert _verify(changed, key)


@pytest.mark.parametrize(
    "headers",
    [
        b"From: alice@example.com\r\nFrom: mallory@example.org\r\n",
        b"From: alice@example.com\r\nSubject: x\r\nfrom: mallory@example.org\r\n",
        b"From: alice@example.com\r\nFrom : mallory@example.org\r\n",
        b"Subject: no author\r\n",
        b"From : alice@example.com\r\n",
    ],
    ids=["two", "two-lowercase", "obsolete-second", "none", "obsolete-only"],
)
def test_sign_rejects_from_count(signer: DkimSigner, headers: bytes):
    with pytest.raises(DuplicateFromError):
        signer.sign(headers + b"\r\nbody\r\n", DOMAIN)


def test_duplicate_from_error_is_value_error():
    assert issubclass(DuplicateFromError, ValueError)


def test_sign_unknown_domain_raises(signer: DkimSigner):
    with pytest.raises(KeyError, match="example.org"):
        signer.sign(MESSAGE, "example.org")


def test_has_key_case_insensitive(signer: DkimSigner):
    assert signer.has_key("example.com")
    assert signer.has_key("EXAMPLE.com.")
    assert not signer.has_key("example.org")


def test_sign_domain_case_insensitive(signer: DkimSigner, key: rsa.RSAPrivateKey):
    signature_field = signer.sign(MESSAGE, "Example.COM")

    assert _tag(signature_field, b"d") == DOMAIN.encode()
    assert _verify(signature_field + MESSAGE, key)


def test_signer_rejects_two_keys_per_domain(key: rsa.RSAPrivateKey):
    keys = [DkimKey(DOMAIN, "one", key), DkimKey(DOMAIN.upper(), "two", key)]

    with pytest.raises(ValueError, match="duplicate DKIM key"):
        DkimSigner(keys)


def test_signer_rejects_non_rsa_key():
    ec_key = ec.generate_private_key(ec.SECP256R1())

    with pytest.raises(TypeError, match="expected RSA"):
        DkimSigner([DkimKey(DOMAIN, SELECTOR, ec_key)])


def test_signer_rejects_non_ascii_domain(key: rsa.RSAPrivateKey):
    with pytest.raises(ValueError, match="A-label"):
        DkimSigner([DkimKey("bücher.example", SELECTOR, key)])


def test_dns_txt_value_format(key: rsa.RSAPrivateKey):
    value = dns_txt_value(key)

    assert value.startswith("v=DKIM1; k=rsa; p=")
    public_der = base64.b64decode(dkim.util.parse_tag_value(value.encode())[b"p"])
    public_key = serialization.load_der_public_key(public_der)
    assert public_key.public_numbers() == key.public_key().public_numbers()


def test_load_or_create_key_creates_file(tmp_path: Path):
    path = tmp_path / "keys" / "example.com.pem"

    created = load_or_create_key(path, bits=1024)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert created.key_size == 1024
    assert [p.name for p in path.parent.iterdir()] == ["example.com.pem"]


def test_load_or_create_key_loads_existing(tmp_path: Path):
    path = tmp_path / "keys" / "example.com.pem"
    created = load_or_create_key(path, bits=1024)

    loaded = load_or_create_key(path, bits=1024)

    assert loaded.private_numbers() == created.private_numbers()


def test_load_or_create_key_rejects_bad_file(tmp_path: Path):
    path = tmp_path / "bad.pem"
    path.write_bytes(b"not a key\n")
    os.chmod(path, 0o600)

    with pytest.raises(ValueError, match="bad.pem"):
        load_or_create_key(path)


def test_load_or_create_key_rejects_small_size(tmp_path: Path):
    with pytest.raises(ValueError, match="at least 1024"):
        load_or_create_key(tmp_path / "small.pem", bits=512)


def _opendkim_verify(message: bytes, key: rsa.RSAPrivateKey, work_dir: Path) -> str:
    with DnsServer() as dns_server:
        dns_server.add(f"{SELECTOR}._domainkey.{DOMAIN}", "TXT", dns_txt_value(key))
        return opendkim_report(message, dns_server.host, dns_server.port, work_dir)


@pytest.mark.skipif(OPENDKIM is None, reason="opendkim is not installed (Debian package opendkim)")
def test_opendkim_verifies_signature(signer: DkimSigner, key: rsa.RSAPrivateKey, tmp_path: Path):
    signed = signer.sign(MESSAGE, DOMAIN) + MESSAGE

    report = _opendkim_verify(signed, key, tmp_path)

    assert f"verification (s={SELECTOR}, d={DOMAIN}, 2048-bit key) succeeded" in report
    assert "dkim=pass" in report


@pytest.mark.skipif(OPENDKIM is None, reason="opendkim is not installed (Debian package opendkim)")
@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"figures", b"Figures"),
        (b"\r\n\r\nHello", b"\r\nCc: mallory@example.org\r\n\r\nHello"),
        (b"Subject: Quarterly", b"Subject: Monthly"),
    ],
    ids=["body", "added-cc", "subject"],
)
def test_opendkim_rejects_tampered(signer: DkimSigner, key: rsa.RSAPrivateKey, tmp_path: Path, old, new):
    signed = signer.sign(MESSAGE, DOMAIN) + MESSAGE
    tampered = signed.replace(old, new, 1)
    assert tampered != signed

    report = _opendkim_verify(tampered, key, tmp_path)

    assert "succeeded" not in report
    assert "failed" in report
    assert "dkim=fail" in report
