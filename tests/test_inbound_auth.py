"""SPF, DKIM and DMARC on mail arriving on MX, with records served by the loopback DNS server."""

from __future__ import annotations

import smtplib

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mta.dkim import dns_txt_value
from mta.inbound.dmarc import DmarcRecordError, aligned, organisational_domain, parse_record
from mta.inbound.results import remove_forged
from tests.conftest import config_error, query
from tests.mx import RELAY_DOMAIN, relay_config

RECIPIENT = f"bob@{RELAY_DOMAIN}"


def send(mta, sender: str, message: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=30) as client:
        client.ehlo("client.example.net")
        client.mail(sender)
        client.rcpt(RECIPIENT)
        return client.data(message)


def message_from(author: str, subject: str = "hello", extra: bytes = b"") -> bytes:
    return (f"From: {author}\r\nTo: {RECIPIENT}\r\nSubject: {subject}\r\n".encode() + extra
            + b"\r\nHello.\r\n")


def results_of(data: bytes) -> str:
    """Return the Authentication-Results field this host added (the first one), unfolded."""
    header = data.split(b"\r\n\r\n", 1)[0].decode()
    unfolded = header.replace("\r\n\t", " ").split("\r\n")
    return next(line for line in unfolded if line.lower().startswith("authentication-results:"))


@pytest.fixture
def mta(make_mta, sink_port):
    return make_mta(relay_config(sink_port))


def test_spf_pass_aligns_dmarc(mta, sink, dns):
    dns.add("spfpass.example", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns.add("_dmarc.spfpass.example", "TXT", "v=DMARC1; p=reject")

    code, _ = send(mta, "news@spfpass.example", message_from("news@spfpass.example"))

    assert code == 250
    field = results_of(sink.wait_for(1)[0].data)
    assert field.startswith("Authentication-Results: mta.example.com;")
    assert "spf=pass smtp.mailfrom=spfpass.example" in field
    assert "dkim=none" in field
    assert "dmarc=pass (p=reject dis=none) header.from=spfpass.example" in field


def test_dmarc_reject_refuses_spoofed_author(mta, dns):
    dns.add("bank.example", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    dns.add("_dmarc.bank.example", "TXT", "v=DMARC1; p=reject")

    code, text = send(mta, "ceo@bank.example", message_from("ceo@bank.example", "pay now"))

    assert code == 550
    assert text == b"5.7.1 message rejected by the DMARC policy of bank.example"
    assert query(mta.database_url, "SELECT id FROM message") == []
    assert "spf=fail dkim=none dmarc=fail; from=<ceo@bank.example>" in mta.log()


def signed(message: bytes, domain: str, selector: str, key: rsa.RSAPrivateKey) -> bytes:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return dkim.sign(message, selector.encode(), domain.encode(), pem, include_headers=[b"from", b"subject"]) + message


def test_dkim_pass_aligns_dmarc_when_spf_fails(mta, sink, dns):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    dns.add("s1._domainkey.signer.example", "TXT", dns_txt_value(key))
    dns.add("signer.example", "TXT", "v=spf1 -all")
    dns.add("_dmarc.signer.example", "TXT", "v=DMARC1; p=reject; adkim=s")

    code, _ = send(mta, "list@signer.example", signed(message_from("news@signer.example"), "signer.example", "s1", key))

    assert code == 250
    field = results_of(sink.wait_for(1)[0].data)
    assert "spf=fail" in field
    assert "dkim=pass header.d=signer.example header.s=s1 header.b=" in field
    assert "dmarc=pass" in field


def test_altered_body_fails_dkim(mta, sink, dns):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    dns.add("s1._domainkey.altered.example", "TXT", dns_txt_value(key))
    message = signed(message_from("news@altered.example"), "altered.example", "s1", key)

    code, _ = send(mta, "news@altered.example", message.replace(b"Hello.", b"Hello!"))

    assert code == 250
    field = results_of(sink.wait_for(1)[0].data)
    assert "dkim=fail header.d=altered.example" in field
    assert "dmarc=none" in field


def quarantine_of(mta, queued_reply: bytes) -> str | None:
    """Return the quarantine flag of the message a 250 reply names."""
    queue_id = queued_reply.decode().rsplit(" ", 1)[1]
    return query(mta.database_url, "SELECT quarantine FROM message WHERE id = $1", queue_id)[0]["quarantine"]


def test_quarantine_policy_flags_message(mta, sink, dns):
    dns.add("_dmarc.careful.example", "TXT", "v=DMARC1; p=quarantine")

    code, text = send(mta, "a@careful.example", message_from("a@careful.example"))

    assert code == 250
    assert quarantine_of(mta, text) == "DMARC failure for careful.example under p=quarantine"
    assert "dmarc=fail (p=quarantine dis=quarantine)" in results_of(sink.wait_for(1)[0].data)


def test_reject_action_quarantine_accepts(make_mta, sink_port, dns):
    config = relay_config(sink_port)
    config["inbound"] = {"dmarc_reject_action": "quarantine"}
    mta = make_mta(config)
    dns.add("_dmarc.strict.example", "TXT", "v=DMARC1; p=reject")

    code, text = send(mta, "a@strict.example", message_from("a@strict.example"))

    assert code == 250
    assert quarantine_of(mta, text) == "DMARC failure for strict.example under p=reject"


def test_subdomain_gets_organisations_sp(mta, dns):
    dns.add("_dmarc.parent.example", "TXT", "v=DMARC1; p=none; sp=reject")

    code, _ = send(mta, "a@mail.parent.example", message_from("a@mail.parent.example"))

    assert code == 550


def test_forged_results_for_this_host_removed(mta, sink):
    forged = (b"Authentication-Results: mta.example.com; dmarc=pass header.from=bank.example\r\n"
              b"Authentication-Results: other.example; spf=pass smtp.mailfrom=x.example\r\n")

    code, _ = send(mta, "a@example.net", message_from("a@example.net", extra=forged))

    assert code == 250
    data = sink.wait_for(1)[0].data
    assert data.count(b"Authentication-Results: mta.example.com;") == 1
    assert b"dmarc=pass header.from=bank.example" not in data
    assert b"Authentication-Results: other.example; spf=pass" in data


def test_checks_can_be_switched_off(make_mta, sink, sink_port):
    config = relay_config(sink_port)
    config["inbound"] = {"spf": False, "dkim": False, "dmarc": False}
    mta = make_mta(config)

    assert send(mta, "a@example.net", message_from("a@example.net"))[0] == 250

    assert b"Authentication-Results" not in sink.wait_for(1)[0].data


@pytest.mark.parametrize("record", ["v=DMARC1", "v=DMARC1; p=block", "p=reject"])
def test_invalid_dmarc_records_raise(record):
    with pytest.raises(DmarcRecordError):
        parse_record(record)


@pytest.mark.parametrize("domain, author, mode, expected", [
    ("mail.example.co.uk", "example.co.uk", "r", True),
    ("mail.example.co.uk", "example.co.uk", "s", False),
    ("other.co.uk", "example.co.uk", "r", False),
    ("Example.COM.", "example.com", "s", True),
])
def test_alignment_modes(domain, author, mode, expected):
    assert aligned(domain, author, mode) is expected


def test_organisational_domain_under_public_suffix():
    assert organisational_domain("a.b.example.co.uk") == "example.co.uk"


def test_remove_forged_keeps_body():
    message = b"Authentication-Results: MTA.example.com; spf=pass\r\nSubject: s\r\n\r\nAuthentication-Results: mta.example.com\r\n"

    cleaned, removed = remove_forged(message, "mta.example.com")

    assert removed == 1
    assert cleaned == b"Subject: s\r\n\r\nAuthentication-Results: mta.example.com\r\n"


def test_dmarc_without_dkim_refused(tmp_path):
    message = config_error(tmp_path, "[inbound]\ndkim = false\n")

    assert "inbound.dmarc needs inbound.spf and inbound.dkim" in message


def test_unreadable_header_gives_permerror_not_451(mta, sink, dns):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    dns.add("s1._domainkey.oldstyle.example", "TXT", dns_txt_value(key))
    message = signed(message_from("news@oldstyle.example"), "oldstyle.example", "s1", key)

    code, _ = send(mta, "news@oldstyle.example", message.replace(b"Subject: hello", b"Subject : hello"))

    assert code == 250
    assert "dkim=permerror" in results_of(sink.wait_for(1)[0].data)


@pytest.mark.parametrize("from_fields", [
    b"From: news@spfpass2.example\r\nFrom: ceo@bank2.example\r\n",
    b"From: news@spfpass2.example, ceo@bank2.example\r\n",
])
def test_second_author_cannot_hide_reject_policy(mta, dns, from_fields):
    dns.remove("spfpass2.example")
    dns.add("spfpass2.example", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns.add("_dmarc.spfpass2.example", "TXT", "v=DMARC1; p=none")
    dns.remove("_dmarc.bank2.example")
    dns.add("_dmarc.bank2.example", "TXT", "v=DMARC1; p=reject")

    code, text = send(mta, "news@spfpass2.example", from_fields + b"Subject: pay\r\n\r\nnow\r\n")

    assert code == 550
    assert text == b"5.7.1 message rejected by the DMARC policy of bank2.example"
