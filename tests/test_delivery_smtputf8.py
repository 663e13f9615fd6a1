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
