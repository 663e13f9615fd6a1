"""Submission over implicit TLS (RFC 8314, port 465): TLS from the first octet, then AUTH."""

from __future__ import annotations

import smtplib
import socket
import subprocess

from tests.conftest import query
from tests.smtpclient import client_tls_context

PASSWORD = "correct horse battery"


def add_alice(mta) -> None:
    result = mta.cli("user", "add", "alice@example.com", "--password-stdin", input_text=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr


def test_swaks_over_implicit_tls_arrives(make_mta, sink):
    mta = make_mta()
    add_alice(mta)

    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{mta.submissions_port}", "--tls-on-connect", "--auth", "PLAIN",
         "--auth-user", "alice@example.com", "--auth-password", PASSWORD,
         "--from", "alice@example.com", "--to", "bob@example.net", "--timeout", "30"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr

    received = sink.wait_for(1)[0]
    header = received.data.split(b"\r\n\r\n")[0]
    assert b"with ESMTPSA" in header
    assert b"using TLSv1.3" in header or b"using TLSv1.2" in header


def test_implicit_tls_requires_auth_and_offers_no_starttls(make_mta):
    mta = make_mta()

    with smtplib.SMTP_SSL("127.0.0.1", mta.submissions_port, timeout=30, context=client_tls_context()) as client:
        client.ehlo("client.example.net")
        assert client.has_extn("auth")
        assert not client.has_extn("starttls")
        code, _ = client.mail("alice@example.com")

    assert code == 530
    assert query(mta.database_url, "SELECT id FROM message") == []
    assert "implicit TLS TLSv1.3" in mta.log()


def test_plain_text_client_gets_no_greeting(make_mta):
    mta = make_mta()

    with socket.create_connection(("127.0.0.1", mta.submissions_port), timeout=10) as sock:
        sock.sendall(b"EHLO client.example.net\r\n")
        # The server waits for a TLS handshake: it replies with a TLS alert or closes, never with SMTP.
        answer = sock.recv(1024)
    assert not answer.startswith(b"220")

    with smtplib.SMTP_SSL("127.0.0.1", mta.submissions_port, timeout=30, context=client_tls_context()) as client:
        assert client.ehlo("client.example.net")[0] == 250
    assert "Traceback" not in mta.log()
