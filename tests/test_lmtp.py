"""Local delivery over LMTP to a real Dovecot, and the client's handling of broken sessions."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import tempfile
from pathlib import Path

import pytest

from mta.delivery.body import MessageBody
from mta.delivery.lmtp import LmtpSettings, deliver_lmtp, parse_destination
from tests.conftest import config_error, query
from tests.dovecot import Dovecot
from tests.mx import send_mx, wait_until

LMTP_DOMAIN = "lmtp.example"
SETTINGS = LmtpSettings("mta.test", connect_timeout=5, command_timeout=5, data_timeout=5)


@pytest.fixture
def dovecot():
    # Outside pytest's private temporary directory, which Dovecot's unprivileged processes cannot enter.
    root = Path(tempfile.mkdtemp(prefix="mta-dovecot-"))
    server = Dovecot(root, [f"bob@{LMTP_DOMAIN}", f"carol@{LMTP_DOMAIN}"])
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def start_mta(make_mta, tmp_path, destination: str):
    mta = make_mta({"domains": {"local": ["example.com", LMTP_DOMAIN]},
                    "delivery": {"lmtp": {LMTP_DOMAIN: destination}}})
    # dave exists here but not in Dovecot, as when the two user lists drift apart.
    users = tmp_path / "users.txt"
    users.write_text("".join(f"{name}@{LMTP_DOMAIN}\n" for name in ("bob", "carol", "dave")))
    result = mta.cli("user", "import", str(users))
    assert result.returncode == 0, result.stderr
    return mta


def send_to_many(mta, recipients: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=30) as client:
        client.sendmail("sender@example.net", recipients, b"Subject: to several\r\n\r\nhello\r\n")


def test_lmtp_tcp_delivers_to_dovecot(make_mta, dovecot, tmp_path):
    mta = start_mta(make_mta, tmp_path, f"127.0.0.1:{dovecot.port}")

    code, _ = send_mx(mta, "sender@example.net", f"bob@{LMTP_DOMAIN}",
                      b"Subject: over lmtp\r\n\r\nfor the mailbox server\r\n")
    assert code == 250

    delivered = wait_until(lambda: dovecot.delivered(f"bob@{LMTP_DOMAIN}"))
    assert len(delivered) == 1
    assert b"Subject: over lmtp" in delivered[0]
    assert b"for the mailbox server" in delivered[0]
    assert wait_until(lambda: query(mta.database_url, "SELECT id FROM delivery") == [])
    assert f"relay=lmtp[127.0.0.1:{dovecot.port}]" in mta.log()
    assert query(mta.database_url, "SELECT mailbox FROM mailbox_message") == []


def test_lmtp_unix_socket_replies_per_recipient(make_mta, dovecot, sink, tmp_path):
    mta = start_mta(make_mta, tmp_path, f"unix:{dovecot.socket_path}")

    send_to_many(mta, [f"bob@{LMTP_DOMAIN}", f"dave@{LMTP_DOMAIN}", f"carol@{LMTP_DOMAIN}"])

    assert wait_until(lambda: dovecot.delivered(f"bob@{LMTP_DOMAIN}"))
    assert wait_until(lambda: dovecot.delivered(f"carol@{LMTP_DOMAIN}"))
    notices = sink.wait_for(1)
    assert notices[0].recipients == ["sender@example.net"]
    assert f"dave@{LMTP_DOMAIN}".encode() in notices[0].data
    assert b"5.1.1" in notices[0].data
    assert f"to=<dave@{LMTP_DOMAIN}>, relay=lmtp[unix:" in mta.log()


def test_lmtp_server_down_defers_then_delivers(make_mta, dovecot, tmp_path):
    mta = start_mta(make_mta, tmp_path, f"127.0.0.1:{dovecot.port}")
    dovecot.stop()

    code, _ = send_mx(mta, "sender@example.net", f"bob@{LMTP_DOMAIN}")
    assert code == 250
    assert wait_until(lambda: "status=deferred" in mta.log())
    assert "4.4.1 connection to LMTP server" in mta.log()
    assert len(query(mta.database_url, "SELECT id FROM delivery")) == 1

    dovecot.start()
    assert mta.cli("queue", "flush").returncode == 0
    assert wait_until(lambda: dovecot.delivered(f"bob@{LMTP_DOMAIN}"))
    assert wait_until(lambda: query(mta.database_url, "SELECT id FROM delivery") == [])


def test_destination_forms():
    assert parse_destination("unix:/run/dovecot/lmtp").path == "/run/dovecot/lmtp"
    assert parse_destination("127.0.0.1:24").port == 24
    assert parse_destination("[::1]:24").host == "::1"
    for bad in ("unix:relative", "127.0.0.1", "host:0", "host:x", ":24"):
        with pytest.raises(ValueError):
            parse_destination(bad)


async def scripted_server(after_data: list[bytes]):
    """Start an LMTP server on loopback that accepts every recipient and then sends after_data and closes."""
    async def handle(reader, writer):
        writer.write(b"220 scripted LMTP\r\n")
        while True:
            line = await reader.readline()
            if not line:
                break
            verb = line[:4].upper()
            if verb == b"LHLO":
                writer.write(b"250-scripted\r\n250 PIPELINING\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                while (await reader.readline()) not in (b".\r\n", b""):
                    pass
                writer.write(b"".join(after_data))
                await writer.drain()
                writer.close()
                return
            else:
                writer.write(b"250 2.0.0 ok\r\n")

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_lost_after_data_defers_unanswered_only():
    server = await scripted_server([b"250 2.0.0 <a@l.example> saved\r\n"])
    port = server.sockets[0].getsockname()[1]
    try:
        outcome = await deliver_lmtp(parse_destination(f"127.0.0.1:{port}"), SETTINGS, "s@example.net",
                                     ["a@l.example", "b@l.example"], MessageBody.whole(b"Subject: x\r\n\r\nbody\r\n"))
    finally:
        server.close()

    assert [recipient for recipient, _ in outcome.delivered] == ["a@l.example"]
    assert [recipient for recipient, _ in outcome.deferred] == ["b@l.example"]
    assert outcome.failed == []
    assert outcome.deferred[0][1].enhanced == "4.4.2"


async def test_malformed_reply_defers_everyone():
    server = await scripted_server([b"this is not a reply\r\n"])
    port = server.sockets[0].getsockname()[1]
    try:
        outcome = await deliver_lmtp(parse_destination(f"127.0.0.1:{port}"), SETTINGS, "s@example.net",
                                     ["a@l.example"], MessageBody.whole(b"Subject: x\r\n\r\nbody\r\n"))
    finally:
        server.close()

    assert outcome.delivered == []
    assert [recipient for recipient, _ in outcome.deferred] == ["a@l.example"]
    assert "malformed reply line" in outcome.deferred[0][1].text


async def test_refused_connection_defers():
    outcome = await deliver_lmtp(parse_destination("unix:/nonexistent/lmtp"), SETTINGS, "s@example.net",
                                 ["a@l.example"], MessageBody.whole(b"Subject: x\r\n\r\nbody\r\n"))

    assert outcome.connection_failed
    assert outcome.deferred[0][1].code == 451


def test_lmtp_domain_must_be_local(tmp_path):
    message = config_error(tmp_path, '[delivery.lmtp]\n"other.example" = "127.0.0.1:24"\n')

    assert "delivery.lmtp.other.example: other.example is not in domains.local" in message


def test_lmtp_destination_checked(tmp_path):
    message = config_error(tmp_path, '[domains]\nlocal = ["example.com"]\n[delivery.lmtp]\n"example.com" = "dovecot"\n')

    assert "delivery.lmtp.example.com: expected 'unix:/path', 'host:port' or '[ipv6]:port'" in message
