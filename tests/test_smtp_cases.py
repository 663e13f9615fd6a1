"""Known failures of other MTAs, replayed byte for byte against the running MTA.

Smuggling with forged line endings, bare LF, NUL octets, STARTTLS command
injection, AUTH and TLS rules per port, malformed AUTH PLAIN, open-relay
address tricks, the null sender, oversize data and duplicate From fields.
"""

from __future__ import annotations

import socket
import ssl

import pytest

from tests.conftest import query
from tests.smtpclient import RawClient, client_tls_context

PASSWORD = "secret-password"


def message_count(mta) -> int:
    return query(mta.database_url, "SELECT count(*) AS n FROM message")[0]["n"]


def submission(mta) -> RawClient:
    client = RawClient(mta.submission_port)
    client.ehlo()
    client.starttls()
    client.ehlo()
    return client


def transaction(client: RawClient, sender: str, recipient: str) -> None:
    assert client.command(f"MAIL FROM:<{sender}>")[0] == 250
    assert client.command(f"RCPT TO:<{recipient}>")[0] == 250


SMUGGLING = (b"From: sender@example.net\r\nTo: alice@example.com\r\nSubject: first\r\n\r\n"
             b"hello\n.\r\n"
             b"MAIL FROM:<ceo@example.com>\r\n"
             b"RCPT TO:<alice@example.com>\r\n"
             b"DATA\r\n"
             b"From: ceo@example.com\r\nSubject: smuggled\r\n\r\npay now\r\n"
             b"\r\n.\r\n")


def test_lf_dot_crlf_is_not_end_of_data(shared_mta):
    before = message_count(shared_mta)
    with RawClient(shared_mta.mx_port) as client:
        client.ehlo()
        transaction(client, "sender@example.net", "alice@example.com")
        code, text = client.data(SMUGGLING)
        assert (code, text[:5]) == (550, "5.5.2")
        assert client.unread(0.5) == b""
        assert client.command("QUIT")[0] == 221
    assert message_count(shared_mta) == before


def test_bare_lf_rejected_on_mx(shared_mta):
    payload = b"From: sender@example.net\nTo: alice@example.com\r\nSubject: lf\n\nline one\nline two\r\n\r\n.\r\n"
    before = message_count(shared_mta)
    with RawClient(shared_mta.mx_port) as client:
        client.ehlo()
        transaction(client, "sender@example.net", "alice@example.com")
        assert client.data(payload)[0] == 550
        assert client.command("NOOP")[0] == 250
    assert message_count(shared_mta) == before


def test_bare_cr_and_lf_rejected_on_submission(shared_mta):
    before = message_count(shared_mta)
    for payload in (b"From: alice@example.com\r\nSubject: lf\r\n\r\nline\nline\r\n.\r\n",
                    b"From: alice@example.com\r\nSubject: cr\r\n\r\nline\rline\r\n.\r\n"):
        with submission(shared_mta) as client:
            assert client.auth_plain("alice@example.com", PASSWORD)[0] == 235
            transaction(client, "alice@example.com", "bob@example.net")
            code, text = client.data(payload)
            assert (code, text[:5]) == (550, "5.5.2")
    assert message_count(shared_mta) == before


def test_nul_octets_rejected(shared_mta):
    payload = (b"From: sender@example.net\r\nTo: alice@example.com\r\nSubject: nul\x00test\r\n\r\n"
               b"before\x00after\r\n\x00\r\n\r\n.\r\n")
    before = message_count(shared_mta)
    with RawClient(shared_mta.mx_port) as client:
        client.ehlo()
        transaction(client, "sender@example.net", "alice@example.com")
        code, text = client.data(payload)
        assert (code, text[:5]) == (554, "5.6.0")
    assert message_count(shared_mta) == before


@pytest.mark.parametrize("port_name", ["mx_port", "submission_port"])
def test_starttls_discards_pipelined_plaintext(shared_mta, port_name):
    with RawClient(getattr(shared_mta, port_name)) as client:
        client.ehlo()
        client.send(b"STARTTLS\r\nNOOP\r\nRSET\r\n")
        assert client.reply()[0] == 220
        client.wrap()
        assert client.unread(2.0) == b""
        keywords = client.ehlo()
        assert "STARTTLS" not in keywords
        assert ("AUTH" in keywords) == (port_name == "submission_port")


def test_submission_plaintext_offers_no_auth(shared_mta):
    with RawClient(shared_mta.submission_port) as client:
        keywords = client.ehlo()
        assert "STARTTLS" in keywords
        assert "AUTH" not in keywords
        code, _ = client.auth_plain("alice@example.com", PASSWORD)
        assert code in (530, 538)
        code, text = client.command("MAIL FROM:<alice@example.com>")
        assert (code, text[:5]) == (530, "5.7.0")


def test_submission_auth_after_starttls(shared_mta):
    with submission(shared_mta) as client:
        code, text = client.auth_plain("alice@example.com", "wrong password")
        assert (code, text[:5]) == (535, "5.7.8")
        assert client.command("NOOP")[0] == 250
        code, text = client.auth_plain("alice@example.com", PASSWORD)
        assert (code, text[:5]) == (235, "2.7.0")
    assert PASSWORD not in shared_mta.log()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
@pytest.mark.parametrize("port_name", ["mx_port", "submission_port"])
def test_old_tls_handshake_refused(shared_mta, port_name, version):
    with RawClient(getattr(shared_mta, port_name)) as client:
        client.ehlo()
        assert client.command("STARTTLS")[0] == 220
        with pytest.raises((ssl.SSLError, ConnectionError)):
            client.wrap(client_tls_context(maximum=version))


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_tls_refused_on_implicit_tls(shared_mta, version):
    with socket.create_connection(("127.0.0.1", shared_mta.submissions_port), timeout=10) as sock:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            client_tls_context(maximum=version).wrap_socket(sock)


@pytest.mark.parametrize("lines, expected", [
    (["AUTH PLAIN z"], (501, "5.5.2")),
    (["AUTH PLAIN", "!!!not-base64!!!"], (501, "5.5.2")),
    (["AUTH PLAIN", "*"], (501, "5.0.0")),
    (["AUTH PLAIN dXNlcgBwYXNz"], (501, "5.5.2")),
    (["AUTH PLAIN AGFsaWNlAP/+"], (501, "5.5.2")),
    (["AUTH PLAIN Ym9iAGFsaWNlQGV4YW1wbGUuY29tAHNlY3JldC1wYXNzd29yZA=="], (535, "5.7.8")),
    (["AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHNlY3JldC1wYXNzd29yZA=="], (235, "2.7.0")),
])
def test_auth_plain_malformed(shared_mta, lines, expected):
    with submission(shared_mta) as client:
        for line in lines[:-1]:
            assert client.command(line)[0] == 334
        code, text = client.command(lines[-1])
        assert (code, text[:5]) == expected
        assert client.command("NOOP")[0] == 250


@pytest.mark.parametrize("recipient, expected", [
    ("victim@example.net", (550, "5.7.1")),
    ("victim@EXAMPLE.NET.", (550, "5.7.1")),
    ("victim%example.net@example.com", (550, "5.1.1")),
    ('"victim@example.net"@example.com', (550, "5.1.1")),
    ("example.net!victim@example.com", (550, "5.1.1")),
    ('"victim@example.net"', (501, "5.1.3")),
    ("victim@example.net@example.com", (501, "5.1.3")),
    ("victim@example.net@", (501, "5.1.3")),
    ("@example.com:victim@example.net", (550, "5.7.1")),
    ("victim@[192.0.2.55]", (550, "5.7.1")),
    ("alice@example.com", (250, "2.1.5")),
])
def test_open_relay_address_tricks(shared_mta, recipient, expected):
    with RawClient(shared_mta.mx_port) as client:
        client.ehlo("relaytest.example.net")
        assert client.command("MAIL FROM:<probe@example.net>")[0] == 250
        code, text = client.command(f"RCPT TO:<{recipient}>")
        assert (code, text[:5]) == expected


@pytest.mark.parametrize("mail_command", ["MAIL FROM:<>", "MAIL FROM:<> SIZE=2048"])
def test_null_sender_accepted(shared_mta, mail_command):
    with RawClient(shared_mta.mx_port) as client:
        client.ehlo("mx.example.net")
        code, text = client.command(mail_command)
        assert (code, text[:5]) == (250, "2.1.0")
        code, text = client.command("RCPT TO:<alice@example.com>")
        assert (code, text[:5]) == (250, "2.1.5")
        code, text = client.data(b"From: MAILER-DAEMON@mx.example.net\r\nSubject: bounce\r\n\r\nreport\r\n.\r\n")
        assert (code, text[:5]) == (250, "2.0.0")
    queue_id = text.rsplit(" ", 1)[1]
    rows = query(shared_mta.database_url, "SELECT sender FROM message WHERE id = $1", queue_id)
    assert [row["sender"] for row in rows] == [""]


def test_size_advertised_and_enforced(shared_mta):
    before = message_count(shared_mta)
    with RawClient(shared_mta.mx_port) as client:
        code, text = client.command("EHLO client.example.net")
        assert "SIZE 1048576" in text.split("\n")
        assert client.command("MAIL FROM:<sender@example.net> SIZE=2000000")[0] == 552
        transaction(client, "sender@example.net", "alice@example.com")
        line = b"x" * 76 + b"\r\n"
        code, _ = client.data(b"Subject: big\r\n\r\n" + line * 40000 + b".\r\n")
        assert code == 552
        assert client.command("RSET")[0] == 250
    assert message_count(shared_mta) == before


def test_duplicate_from_rejected_on_submission(shared_mta):
    payload = (b"From: Alice <alice@example.com>\r\nFrom: Payroll <payroll@example.net>\r\n"
               b"To: bob@example.net\r\nSubject: invoice\r\n\r\npay now\r\n.\r\n")
    before = message_count(shared_mta)
    with submission(shared_mta) as client:
        assert client.auth_plain("alice@example.com", PASSWORD)[0] == 235
        transaction(client, "alice@example.com", "bob@example.net")
        code, text = client.data(payload)
        assert (code, text[:5]) == (554, "5.6.0")
    assert message_count(shared_mta) == before


def test_submission_sender_must_be_own_address(shared_mta):
    with submission(shared_mta) as client:
        assert client.auth_plain("alice@example.com", PASSWORD)[0] == 235
        code, text = client.command("MAIL FROM:<ceo@example.com>")
        assert (code, text[:5]) == (553, "5.7.1")


def test_unexpected_error_text_never_reaches_client(shared_mta):
    # A RCPT whose local part decodes to invalid UTF-8 must not crash the session.
    with RawClient(shared_mta.mx_port) as client:
        client.ehlo()
        assert client.command("MAIL FROM:<sender@example.net>")[0] == 250
        client.send(b"RCPT TO:<\xff\xfe@example.com>\r\n")
        code, text = client.reply()
        assert code in (501, 550, 553)
        assert "Traceback" not in text
        assert client.command("NOOP")[0] == 250


def test_submission_from_header_must_be_own(shared_mta):
    payload = b"From: CEO <ceo@example.com>\r\nTo: bob@example.net\r\nSubject: wire\r\n\r\npay now\r\n.\r\n"
    before = message_count(shared_mta)
    with submission(shared_mta) as client:
        assert client.auth_plain("alice@example.com", PASSWORD)[0] == 235
        transaction(client, "alice@example.com", "bob@example.net")
        code, text = client.data(payload)
        assert (code, text[:5]) == (553, "5.7.1")
    assert message_count(shared_mta) == before


def test_pipelined_commands_after_data(shared_mta):
    with RawClient(shared_mta.mx_port) as client:
        client.ehlo()
        client.send(b"MAIL FROM:<sender@example.net>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        assert client.reply()[0] == 250
        assert client.reply()[0] == 250
        assert client.reply()[0] == 354
        client.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n")
        code, text = client.reply()
        assert (code, text[:5]) == (250, "2.0.0")
        assert client.reply()[0] == 250
        assert client.reply()[0] == 221


def test_auth_refused_on_mx_even_after_starttls(shared_mta):
    with RawClient(shared_mta.mx_port) as client:
        client.ehlo()
        client.starttls()
        client.ehlo()

        code, text = client.auth_plain("alice@example.com", PASSWORD)

    assert (code, text) == (502, "5.5.1 AUTH is not available on this port, use the submission port")
