"""Server certificates: chosen by SNI, reloaded on SIGHUP without dropping sessions."""

from __future__ import annotations

import signal
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from tests.mx import wait_until
from tests.smtpclient import RawClient, client_tls_context


def write_pair(certificate: trustme.LeafCert, directory: Path, name: str) -> dict[str, str]:
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    certificate.private_key_pem.write_to_path(str(key_file))
    certificate.cert_chain_pems[0].write_to_path(str(cert_file))
    return {"cert_file": str(cert_file), "key_file": str(key_file)}


@pytest.fixture
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def mta(make_mta, authority, tmp_path):
    default = write_pair(authority.issue_cert("mta.example.com"), tmp_path, "default")
    other = write_pair(authority.issue_cert("mail.other.example"), tmp_path, "other")
    wild = write_pair(authority.issue_cert("*.wild.example"), tmp_path, "wild")
    return make_mta({"tls": default | {"sni": {"mail.other.example": other, "*.wild.example": wild}}})


def served_certificate(port: int, server_hostname: str | None) -> x509.Certificate:
    with RawClient(port) as client:
        client.ehlo()
        client.starttls(client_tls_context(), server_hostname)
        return x509.load_der_x509_certificate(client.sock.getpeercert(binary_form=True))


def names_of(certificate: x509.Certificate) -> list[str]:
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)


@pytest.mark.parametrize("server_hostname, expected", [
    ("mail.other.example", ["mail.other.example"]),
    ("MAIL.OTHER.EXAMPLE", ["mail.other.example"]),
    ("mx1.wild.example", ["*.wild.example"]),
    ("unknown.example", ["mta.example.com"]),
    (None, ["mta.example.com"]),
])
def test_certificate_chosen_by_sni(mta, server_hostname, expected):
    assert names_of(served_certificate(mta.mx_port, server_hostname)) == expected


def test_sni_certificate_verifies_for_its_name(mta, authority):
    context = ssl.create_default_context()
    authority.configure_trust(context)

    with RawClient(mta.submission_port) as client:
        client.ehlo()
        client.starttls(context, "mail.other.example")
        assert client.ehlo()


def test_sighup_reloads_without_dropping_sessions(mta, authority, tmp_path):
    before = served_certificate(mta.mx_port, None).serial_number
    with RawClient(mta.mx_port) as session:
        session.ehlo()
        session.starttls()
        session.ehlo()

        write_pair(authority.issue_cert("mta.example.com"), tmp_path, "default")
        mta.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "TLS certificates reloaded: default and 2 SNI name(s)" in mta.log())

        # The session that began before the reload goes on.
        assert session.command("MAIL FROM:<sender@example.net>")[0] == 250
        assert session.command("QUIT")[0] == 221

    after = served_certificate(mta.mx_port, None).serial_number
    assert after != before


def test_broken_file_keeps_old_certificates(mta, tmp_path):
    before = served_certificate(mta.mx_port, "mail.other.example").serial_number
    (tmp_path / "other.key").write_text("not a key\n")

    mta.process.send_signal(signal.SIGHUP)

    assert wait_until(lambda: "TLS reload failed, the certificates in use stay" in mta.log())
    assert f"{tmp_path / 'other.crt'} with {tmp_path / 'other.key'}" in mta.log()
    assert served_certificate(mta.mx_port, "mail.other.example").serial_number == before
    assert mta.process.poll() is None


def test_sighup_reaches_every_worker(make_mta):
    mta = make_mta({"server": {"workers": 2}})
    assert wait_until(lambda: mta.log().count("started as node") == 2)

    mta.process.send_signal(signal.SIGHUP)

    assert wait_until(lambda: mta.log().count("TLS certificates reloaded") == 2)
    assert mta.process.poll() is None
