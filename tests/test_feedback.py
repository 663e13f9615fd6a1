"""Receiver feedback: reply classes, suppression of unknown users, and throttling that slows a site."""

from __future__ import annotations

from collections import deque

import pytest

from mta.delivery.feedback import MAILBOX_FULL, OTHER, REPUTATION, THROTTLED, UNKNOWN_USER, classify
from mta.delivery.outcome import Reply
from tests.conftest import query
from tests.mx import RELAY_DOMAIN, relay_config, send_mx, wait_until


@pytest.mark.parametrize("code, text, expected", [
    (550, "5.1.1 <bob@example.org>: Recipient address rejected: User unknown", UNKNOWN_USER),
    (550, "5.0.0 No such user here", UNKNOWN_USER),
    (550, "5.1.10 Recipient address rejected: null MX", UNKNOWN_USER),
    (421, "4.7.0 Try again later, closing connection", THROTTLED),
    (450, "4.2.1 The user you are trying to contact is receiving mail at a rate that prevents delivery",
     OTHER),
    (553, "5.1.0 <s@example.net>: Sender address rejected: User unknown in local recipient table", OTHER),
    (550, "5.1.1 <s@example.net>: Sender address rejected: User unknown", OTHER),
    (451, "4.7.500 Server busy. Please try again later", THROTTLED),
    (452, "4.2.2 Mailbox full", MAILBOX_FULL),
    (554, "5.7.1 Service unavailable; client host blocked using Spamhaus", REPUTATION),
    (550, "5.7.1 Message rejected as spam", OTHER),
    (451, "4.3.0 temporary local problem", OTHER),
    (451, "4.7.1 greylisted, try again in 5 minutes", OTHER),
    (421, "4.7.0 greylisting in action, please come back later", OTHER),
])
def test_reply_classes(code, text, expected):
    assert classify(Reply(code, text)) == expected


def suppressed_rows(mta) -> list:
    return query(mta.database_url, "SELECT sender_domain, address, source FROM suppression")


def test_unknown_user_suppressed_then_failed_before_sending(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port))
    recipient = f"gone@{RELAY_DOMAIN}"
    sink.script.rcpt_replies = deque(["550 5.1.1 <gone@relay.example>: user unknown"])

    assert send_mx(mta, "news@example.net", recipient)[0] == 250
    assert wait_until(lambda: suppressed_rows(mta))
    assert [tuple(row) for row in suppressed_rows(mta)] == [("example.net", recipient, "bounce")]

    assert send_mx(mta, "news@example.net", recipient)[0] == 250
    # Failed without a connection: the log names no relay.
    assert wait_until(lambda: f"to=<{recipient}>, relay=none" in mta.log())
    assert "status=bounced (550 5.7.1 recipient is on the suppression list of example.net" in mta.log()

    # Another sender domain still reaches the address.
    assert send_mx(mta, "shop@example.org", recipient)[0] == 250
    assert wait_until(lambda: any(message.sender == "shop@example.org" for message in sink.messages))


def test_throttling_reply_pauses_site(make_mta, sink, sink_port):
    config = relay_config(sink_port, retry_schedule=[1.0])
    config["delivery"]["sites"] = {"throttle_pause_seconds": 3.0}
    mta = make_mta(config)
    sink.script.rcpt_replies = deque(["421 4.7.0 Try again later, closing connection"])

    assert send_mx(mta, "sender@example.net", f"one@{RELAY_DOMAIN}")[0] == 250
    assert wait_until(lambda: "after throttling by the receiver" in mta.log())
    assert send_mx(mta, "sender@example.net", f"two@{RELAY_DOMAIN}")[0] == 250
    assert wait_until(lambda: "more after throttling by the receiver" in mta.log())

    arrived = sink.wait_for(2, timeout=30)
    assert sorted(message.recipients[0] for message in arrived) == [f"one@{RELAY_DOMAIN}", f"two@{RELAY_DOMAIN}"]
    assert query(mta.database_url, "SELECT count(*) AS n FROM suppression")[0]["n"] == 0
