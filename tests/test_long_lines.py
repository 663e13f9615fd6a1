"""Lines over 998 octets: in message data, in commands, and in submitted mail about to be signed."""

from __future__ import annotations

import email
import smtplib
from pathlib import Path

import dkim
import pytest

from mta.smtp.longlines import LineTooLong, shorten_lines
from tests.conftest import REMOTE_MX_ADDRESS, query
from tests.mx import RELAY_DOMAIN, relay_config
from tests.pgcluster import free_port
from tests.sink import sink_on
from tests.smtpclient import RawClient
from tests.test_end_to_end import PASSWORD, add_alice, publish_dkim, txt_lookup

LONG_LINE = b"x" * 1500


def longest_line(data: bytes) -> int:
    return max(len(line) for line in data.split(b"\r\n"))


def test_short_message_left_alone():
    message = b"From: a@example.com\r\nSubject: s\r\n\r\nshort\r\n"
    assert shorten_lines(message) is message


def test_single_part_encoded_quoted_printable():
    message = b"From: a@example.com\r\nSubject: s\r\n\r\n" + LONG_LINE + b"\r\nshort =\r\n"

    shortened = shorten_lines(message)

    assert longest_line(shortened) <= 998
    parsed = email.message_from_bytes(shortened)
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed["MIME-Version"] == "1.0"
    assert parsed.get_payload(decode=True) == LONG_LINE + b"\r\nshort =\r\n"


def test_only_the_long_part_rewritten():
    untouched = b"--XX\r\nContent-Type: text/plain\r\n\r\nkeep  me\r\n--XX--\r\n"
    message = (b"From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
               b"preamble\r\n--XX\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
               + LONG_LINE + b"\r\n" + untouched)

    shortened = shorten_lines(message)

    assert longest_line(shortened) <= 998
    assert shortened.endswith(untouched)
    assert shortened.count(b"Content-Transfer-Encoding") == 1
    first, second = email.message_from_bytes(shortened).get_payload()
    assert first.get_payload(decode=True) == LONG_LINE
    assert second.get_payload() == "keep  me"


@pytest.mark.parametrize("message", [
    b"Subject: " + LONG_LINE + b"\r\n\r\nbody\r\n",
    b"From: a@example.com\r\nContent-Transfer-Encoding: base64\r\n\r\n" + LONG_LINE + b"\r\n",
])
def test_unshortenable_line_raises(message):
    with pytest.raises(LineTooLong):
        shorten_lines(message)


def test_long_data_line_relayed_intact(make_mta):
    port = free_port(REMOTE_MX_ADDRESS)
    mta = make_mta(relay_config(port))
    body = b"Subject: long\r\n\r\n" + LONG_LINE + b"\r\n"

    with sink_on(REMOTE_MX_ADDRESS, port, accept_long_lines=True) as sink:
        with smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=30) as client:
            assert client.sendmail("sender@example.net", [f"bob@{RELAY_DOMAIN}"], body) == {}
        arrived = sink.wait_for(1)

    assert arrived[0].data.endswith(b"\r\n\r\n" + LONG_LINE + b"\r\n")


def peak_memory_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("VmHWM missing from /proc status")


def test_endless_line_rejected_once_after_terminator(make_mta):
    mta = make_mta({"smtp": {"max_message_size": 1024 * 1024}})
    add_alice(mta)
    before = peak_memory_kib(mta.process.pid)

    with RawClient(mta.mx_port) as client:
        client.ehlo()
        assert client.command("MAIL FROM:<sender@example.net>")[0] == 250
        assert client.command("RCPT TO:<alice@example.com>")[0] == 250
        assert client.command("DATA")[0] == 354
        chunk = b"x" * (1024 * 1024)
        for _ in range(50):
            client.send(chunk)
        assert client.unread(0.5) == b""
        client.send(b"\r\n.\r\n")

        assert client.reply() == (552, "5.3.4 message exceeds the size limit of 1048576 octets")
        assert client.command("QUIT")[0] == 221

    assert query(mta.database_url, "SELECT count(*) AS n FROM message")[0]["n"] == 0
    # Fifty times the limit went through; the peak may grow by a few buffers, never by the line.
    assert peak_memory_kib(mta.process.pid) - before < 20 * 1024


def test_long_command_line_gets_500(shared_mta):
    with RawClient(shared_mta.mx_port) as client:
        client.ehlo()
        assert client.command("MAIL FROM:<sender@example.net>")[0] == 250

        assert client.command(f"RCPT TO:<{'a' * 600}@example.com>") == (500, "5.5.2 Command line too long")
        assert client.command("NOOP")[0] == 250


def test_submitted_long_line_encoded_before_signing(make_mta, sink, dns):
    mta = make_mta()
    add_alice(mta)
    publish_dkim(mta, dns)
    text = b"Hello Bob.\r\n" + LONG_LINE + b"\r\nBye.\r\n"

    with smtplib.SMTP("127.0.0.1", mta.submission_port, timeout=30) as client:
        client.starttls()
        client.login("alice@example.com", PASSWORD)
        client.sendmail("alice@example.com", ["bob@example.net"],
                        b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: long\r\n\r\n" + text)

    data = sink.wait_for(1)[0].data
    assert longest_line(data) <= 998
    assert email.message_from_bytes(data).get_payload(decode=True) == text
    assert dkim.verify(data, dnsfunc=txt_lookup(dns))


def test_submitted_long_header_rejected(shared_mta):
    with smtplib.SMTP("127.0.0.1", shared_mta.submission_port, timeout=30) as client:
        client.starttls()
        # The module-wide MTA's password, set in conftest.
        client.login("alice@example.com", "secret-password")
        client.mail("alice@example.com")
        client.rcpt("bob@example.net")
        code, text = client.data(b"From: alice@example.com\r\nSubject: " + LONG_LINE + b"\r\n\r\nbody\r\n")

    assert code == 554
    assert text.startswith(b"5.6.0 a header line is longer than 998 octets")
