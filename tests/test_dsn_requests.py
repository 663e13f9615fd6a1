"""The DSN extension (RFC 3461): RET, ENVID, NOTIFY and ORCPT, from the client to the notification."""

from __future__ import annotations

from collections import deque

import pytest

from tests.mx import RELAY_DOMAIN, relay_config
from tests.smtpclient import RawClient

BODY = b"From: sender@example.net\r\nSubject: report me\r\n\r\nThe body comes back with RET=FULL.\r\n"


def test_notification_follows_dsn_parameters(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port))
    ok, never, failed = (f"{name}@{RELAY_DOMAIN}" for name in ("ok", "never", "failed"))
    sink.script.rcpt_replies = deque(["250 2.1.5 OK", "550 5.1.1 no such user", "550 5.1.1 no such user"])

    with RawClient(mta.mx_port) as client:
        assert "DSN" in client.ehlo()
        assert client.command("MAIL FROM:<sender@example.net> RET=FULL ENVID=order+2B42")[0] == 250
        assert client.command(f"RCPT TO:<{ok}> NOTIFY=SUCCESS ORCPT=rfc822;Ok+40Relay.example")[0] == 250
        assert client.command(f"RCPT TO:<{never}> NOTIFY=NEVER")[0] == 250
        assert client.command(f"RCPT TO:<{failed}> NOTIFY=FAILURE,DELAY")[0] == 250
        assert client.data(BODY + b".\r\n")[0] == 250

    delivered, notification = sink.wait_for(2)
    report = notification.data
    assert delivered.recipients == [ok]
    assert notification.recipients == ["sender@example.net"]
    assert b"Original-Envelope-Id: order+42" in report
    assert b"Original-Recipient: rfc822;Ok@Relay.example\r\nFinal-Recipient: rfc822; ok@relay.example\r\n" \
           b"Action: relayed" in report
    assert f"Final-Recipient: rfc822; {failed}\r\nAction: failed".encode() in report
    assert never.encode() not in report
    assert b"Content-Type: message/rfc822" in report
    assert b"The body comes back with RET=FULL." in report


@pytest.mark.parametrize("command, reply", [
    ("MAIL FROM:<a@example.net> RET=BOTH", "501 5.5.4 invalid DSN parameter: RET must be FULL or HDRS"),
    ("MAIL FROM:<a@example.net> ENVID=bad=value", "501 5.5.4 invalid DSN parameter: ENVID must be xtext"),
    ("MAIL FROM:<a@example.net> NOTIFY=SUCCESS", "555 5.5.4 parameter not allowed in this command: NOTIFY"),
    ("MAIL FROM:<a@example.net> RET=FULL RET=HDRS", "501 5.5.4 invalid DSN parameter: RET given twice"),
])
def test_bad_mail_dsn_parameters(shared_mta, command, reply):
    with RawClient(shared_mta.mx_port) as client:
        client.ehlo()
        code, text = client.command(command)

    assert f"{code} {text}".startswith(reply)


@pytest.mark.parametrize("parameters, reply", [
    ("NOTIFY=NEVER,SUCCESS", "501 5.5.4 invalid DSN parameter: NOTIFY must be NEVER, or a list"),
    ("NOTIFY=SOMETIMES", "501 5.5.4 invalid DSN parameter: NOTIFY must be NEVER, or a list"),
    ("ORCPT=no-semicolon", "501 5.5.4 invalid DSN parameter: ORCPT must be addr-type;xtext"),
    ("RET=FULL", "555 5.5.4 parameter not allowed in this command: RET"),
])
def test_bad_rcpt_dsn_parameters(shared_mta, parameters, reply):
    with RawClient(shared_mta.mx_port) as client:
        client.ehlo()
        assert client.command("MAIL FROM:<a@example.net>")[0] == 250
        code, text = client.command(f"RCPT TO:<alice@example.com> {parameters}")

    assert f"{code} {text}".startswith(reply)
