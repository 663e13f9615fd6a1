"""Notices to the sender and retries per recipient over a message's life in the queue."""

from __future__ import annotations

import json
import smtplib
import time
from collections import deque

from tests.conftest import query
from tests.mx import RELAY_DOMAIN, relay_config, send_mx, wait_until

GREYLISTED = "451 4.7.1 greylisted"


def defer_again(mta, sink, queue_id: str, attempts: int) -> None:
    """Make the message due now, with the remote MX deferring it once more, and wait for that attempt."""
    sink.script.rcpt_replies.append(GREYLISTED)
    result = mta.cli("queue", "retry", queue_id)
    assert result.returncode == 0, result.stderr
    assert wait_until(lambda: mta.log().count("status=deferred") == attempts)


def age_message(mta, queue_id: str, age: str) -> None:
    """Move the message's arrival into the past, as if it had waited that long."""
    query(mta.database_url, f"UPDATE message SET received_at = now() - interval '{age}' WHERE id = $1", queue_id)


def test_delay_notice_once_then_failure_at_expiry(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port, retry_schedule=[3600.0], delay_notice_after=14400.0))
    sink.script.rcpt_replies = deque([GREYLISTED])
    code, text = send_mx(mta, "sender@example.net", f"user@{RELAY_DOMAIN}")
    assert code == 250, text
    queue_id = text.decode().rsplit(" ", 1)[1]
    assert wait_until(lambda: "status=deferred" in mta.log())

    # Younger than delay_notice_after: no notice yet.
    defer_again(mta, sink, queue_id, attempts=2)
    age_message(mta, queue_id, "5 hours")
    defer_again(mta, sink, queue_id, attempts=3)
    delayed = sink.wait_for(1)[0]
    defer_again(mta, sink, queue_id, attempts=4)
    time.sleep(1)
    assert len(sink.messages) == 1

    age_message(mta, queue_id, "6 days")
    sink.script.rcpt_replies.append(GREYLISTED)
    assert mta.cli("queue", "retry", queue_id).returncode == 0
    failed = sink.wait_for(2)[1]

    assert delayed.recipients == ["sender@example.net"]
    assert b"Subject: Delayed Mail (still being retried)" in delayed.data
    assert b"Action: delayed" in delayed.data
    assert b"Will-Retry-Until: " in delayed.data
    assert b"Action: failed" in failed.data
    assert b"Status: 4.4.7" in failed.data
    assert wait_until(lambda: query(mta.database_url, "SELECT id FROM delivery WHERE message_id = $1",
                                    queue_id) == [])


def test_mixed_replies_retry_only_the_deferred(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port, retry_schedule=[3600.0]))
    ok, busy, unknown = (f"{name}@{RELAY_DOMAIN}" for name in ("ok", "busy", "unknown"))
    sink.script.rcpt_replies = deque(["250 2.1.5 OK", "450 4.2.0 mailbox busy", "550 5.1.1 no such user"])
    with smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=30) as client:
        client.sendmail("sender@example.net", [ok, busy, unknown], b"Subject: three\r\n\r\nhello\r\n")

    first, notification = sink.wait_for(2)
    assert first.recipients == [ok]
    assert notification.recipients == ["sender@example.net"]
    assert f"Final-Recipient: rfc822; {unknown}".encode() in notification.data
    assert busy.encode() not in notification.data.split(b"message/delivery-status")[1]

    listing = mta.cli("queue", "list", "--json").stdout
    queue_id = json.loads(listing)["message_id"]
    assert json.loads(listing)["recipients"] == [busy]
    assert mta.cli("queue", "retry", queue_id).returncode == 0
    retried = sink.wait_for(3)[2]
    assert retried.recipients == [busy]
    time.sleep(1)
    assert len(sink.messages) == 3
