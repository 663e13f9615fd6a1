"""UTF-8 addresses on the way out: sent with SMTPUTF8 where offered, failed with 5.6.7 where not."""

from __future__ import annotations

from tests.conftest import REMOTE_MX_ADDRESS, query
from tests.mx import RELAY_DOMAIN, relay_config, wait_until
from tests.pgcluster import free_port
from tests.sink import sink_on
from tests.smtpclient import RawClient

RECIPIENT = f"jörg@{RELAY_DOMAIN}"


def send_utf8(mta) -> None:
    with RawClient(mta.mx_port) as client:
        client.ehlo()
        assert client.command("MAIL FROM:<sender@example.net> SMTPUTF8")[0] == 250
        assert client.command(f"RCPT TO:<{RECIPIENT}>")[0] == 250
        assert client.data("Subject: Grüße\r\n\r\nHallo\r\n.\r\n".encode())[0] == 250


def test_utf8_recipient_sent_with_smtputf8(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port))

    send_utf8(mta)

    arrived = sink.wait_for(1)
    assert arrived[0].recipients == [RECIPIENT]
    assert "Subject: Grüße".encode() in arrived[0].data


def test_server_without_smtputf8_fails_with_5_6_7(make_mta):
    port = free_port(REMOTE_MX_ADDRESS)
    mta = make_mta(relay_config(port))

    with sink_on(REMOTE_MX_ADDRESS, port, enable_SMTPUTF8=False) as sink:
        send_utf8(mta)
        assert wait_until(lambda: failed_replies(mta))

    reply = failed_replies(mta)[0]
    assert reply.startswith("553 5.6.7 ")
    assert "does not support SMTPUTF8" in reply
    assert sink.messages == []


def failed_replies(mta) -> list[str]:
    """Return the replies of the recipients that failed for good."""
    return [row["reply"] for row in query(mta.database_url, "SELECT reply FROM delivery_event WHERE status = 'bounced'")]


EIGHT_BIT = ("Subject: plain\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
             "Content-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln\r\n").encode()


def send_8bit(mta, body: bytes) -> None:
    with RawClient(mta.mx_port) as client:
        client.ehlo()
        assert client.command("MAIL FROM:<sender@example.net> BODY=8BITMIME")[0] == 250
        assert client.command(f"RCPT TO:<user@{RELAY_DOMAIN}>")[0] == 250
        assert client.data(body + b".\r\n")[0] == 250


def test_8bit_body_downgraded_without_8bitmime(make_mta):
    port = free_port(REMOTE_MX_ADDRESS)
    mta = make_mta(relay_config(port))

    with sink_on(REMOTE_MX_ADDRESS, port, offer_8bitmime=False) as sink:
        send_8bit(mta, EIGHT_BIT)
        arrived = sink.wait_for(1)

    data = arrived[0].data
    assert data.isascii()
    assert b"Content-Transfer-Encoding: quoted-printable\r\n" in data
    assert b"Content-Transfer-Encoding: 8bit" not in data
    assert b"Gr=C3=BC=C3=9Fe aus K=C3=B6ln" in data
    assert "converted to 7 bits" in mta.log()


def test_8bit_body_kept_with_8bitmime(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port))

    send_8bit(mta, EIGHT_BIT)

    arrived = sink.wait_for(1)
    assert "Grüße aus Köln".encode() in arrived[0].data


def test_unconvertible_8bit_fails_with_5_6_3(make_mta):
    port = free_port(REMOTE_MX_ADDRESS)
    mta = make_mta(relay_config(port))
    # 8-bit octets inside a part that claims base64 cannot be re-encoded.
    broken = EIGHT_BIT.replace(b"Content-Transfer-Encoding: 8bit", b"Content-Transfer-Encoding: base64")

    with sink_on(REMOTE_MX_ADDRESS, port, offer_8bitmime=False) as sink:
        send_8bit(mta, broken)
        assert wait_until(lambda: failed_replies(mta))

    assert failed_replies(mta)[0].startswith("554 5.6.3 ")
    assert sink.messages == []
