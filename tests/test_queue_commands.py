"""``mta queue`` against a running MTA whose remote MX defers: list, show, hold, release, delete, bounce."""

from __future__ import annotations

import asyncio
import json
import smtplib
from collections import deque
from pathlib import Path

import asyncpg
import pytest

from mta.storage.local import LocalStore
from tests.conftest import query
from tests.test_operations import http_get
from tests.mx import RELAY_DOMAIN, relay_config, send_mx, wait_until

GREYLISTED = "451 4.7.1 greylisted"


def deferred_mta(make_mta, sink, sink_port, count: int = 1, inline_max_size: int = 65536):
    """Start an MTA, send count messages that the sink defers once each, and return it with their queue ids."""
    mta = make_mta({**relay_config(sink_port, retry_schedule=[3600.0]),
                    "storage": {"inline_max_size": inline_max_size}})
    sink.script.rcpt_replies = deque([GREYLISTED] * count)
    queue_ids = []
    for number in range(count):
        code, text = send_mx(mta, f"sender{number}@example.net", f"user{number}@{RELAY_DOMAIN}")
        assert code == 250, text
        queue_ids.append(text.decode().rsplit(" ", 1)[1])
    assert wait_until(lambda: mta.log().count("status=deferred") == count)
    return mta, queue_ids


def queue(mta, *args: str) -> str:
    result = mta.cli("queue", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_list_filters_by_sender_state_and_age(make_mta, sink, sink_port):
    mta, queue_ids = deferred_mta(make_mta, sink, sink_port, count=2)

    by_sender = [json.loads(line) for line in queue(mta, "list", "--json", "--sender", "SENDER1@example.net")
                 .splitlines()]
    assert [row["message_id"] for row in by_sender] == [queue_ids[1]]
    assert by_sender[0]["state"] == "deferred"
    assert by_sender[0]["last_reply"] == GREYLISTED
    assert by_sender[0]["replies"] == {f"user1@{RELAY_DOMAIN}": GREYLISTED}
    assert queue_ids[0] in queue(mta, "list", "--state", "deferred", "--newer-than", "1h")
    assert "0 deliveries in the queue" in queue(mta, "list", "--older-than", "1h")
    assert "0 deliveries in the queue" in queue(mta, "list", "--state", "held")


def test_show_gives_envelope_and_history(make_mta, sink, sink_port):
    mta, (queue_id,) = deferred_mta(make_mta, sink, sink_port)

    details = json.loads(queue(mta, "show", queue_id.lower(), "--json"))

    assert details["message"]["sender"] == "sender0@example.net"
    assert details["deliveries"][0]["recipients"] == [f"user0@{RELAY_DOMAIN}"]
    assert [(event["status"], event["reply"]) for event in details["events"]] == [("deferred", GREYLISTED)]
    assert details["deliveries"][0]["replies"] == {f"user0@{RELAY_DOMAIN}": GREYLISTED}
    assert "history:" in queue(mta, "show", queue_id)


def test_held_message_waits_for_release(make_mta, sink, sink_port):
    mta, (queue_id,) = deferred_mta(make_mta, sink, sink_port)

    assert f"1 message held: {queue_id}" in queue(mta, "hold", queue_id)
    assert f"unchanged, as already held or with no delivery left in the queue: {queue_id}" in queue(
        mta, "hold", queue_id)
    assert "0 deliveries made due now" in queue(mta, "flush")
    assert queue_id in queue(mta, "list", "--state", "held")
    metrics = http_get(mta.http_port, "/metrics")[1]
    assert 'mta_queue_depth{state="held"} 1.0' in metrics
    assert 'mta_queue_depth{state="deferred"} 0.0' in metrics

    assert f"1 message released: {queue_id}" in queue(mta, "release", queue_id, "--actor", "alice")
    assert len(sink.wait_for(1)) == 1
    # The message auditor appends its own entries meanwhile, so only queue actions are compared.
    actions = query(mta.database_url, "SELECT actor, action FROM audit_log WHERE action LIKE 'queue %' ORDER BY id")
    assert [(row["actor"], row["action"]) for row in actions][-1] == ("alice", "queue release")
    assert [row["action"] for row in actions] == ["queue hold", "queue hold", "queue flush", "queue release"]


def body_object(mta, queue_id: str) -> Path:
    (row,) = query(mta.database_url, "SELECT body_key FROM message WHERE id = $1", queue_id)
    return LocalStore(mta.workdir / "var" / "blobs")._path(row["body_key"])


def test_delete_removes_and_records_it(make_mta, sink, sink_port):
    # Bodies go to the body store, so the delete must remove the object too.
    mta, (queue_id,) = deferred_mta(make_mta, sink, sink_port, inline_max_size=0)
    body = body_object(mta, queue_id)
    assert body.exists()

    assert f"1 message deleted: {queue_id}" in queue(mta, "delete", queue_id)

    assert not body.exists()

    assert "0 deliveries in the queue" in queue(mta, "list")
    events = json.loads(queue(mta, "show", queue_id, "--json"))["events"]
    assert [event["status"] for event in events] == ["deferred", "deleted"]
    assert json.loads(queue(mta, "show", queue_id, "--json"))["message"]["completed_at"] is not None


def test_bounce_sends_one_notification(make_mta, sink, sink_port):
    mta, (queue_id,) = deferred_mta(make_mta, sink, sink_port, inline_max_size=0)
    body = body_object(mta, queue_id)

    assert f"1 message bounced: {queue_id}" in queue(mta, "bounce", queue_id)

    assert not body.exists()

    notification = sink.wait_for(1)[0]
    assert notification.sender == "<>"
    assert notification.recipients == ["sender0@example.net"]
    assert b"5.0.0 returned to sender by the mail operator" in notification.data
    assert b"Final-Recipient: rfc822; user0@relay.example" in notification.data
    events = json.loads(queue(mta, "show", queue_id, "--json"))["events"]
    assert [event["status"] for event in events] == ["deferred", "bounced"]


def test_summary_counts_by_domain(make_mta, sink, sink_port):
    mta, _ = deferred_mta(make_mta, sink, sink_port, count=2)

    lines = queue(mta, "summary").splitlines()

    assert lines[1].split()[:3] == ["TOTAL", "2", "2"]
    assert lines[2].split()[:3] == [RELAY_DOMAIN, "2", "2"]


@pytest.mark.parametrize("args, message", [
    (["show", "NOT-A-QUEUE-ID"], "invalid queue id 'NOT-A-QUEUE-ID'"),
    (["hold", "AAAAAAAAAAAAAAAA"], "queue id not found: AAAAAAAAAAAAAAAA"),
    (["show", "AAAAAAAAAAAAAAAA"], "queue id not found: AAAAAAAAAAAAAAAA"),
    (["list", "--state", "sleeping"], "invalid choice: 'sleeping'"),
    (["list", "--older-than", "5 weeks"], "invalid age '5 weeks'"),
    (["summary", "--top", "0"], "--top must be at least 1"),
])
def test_bad_ids_and_filters_exit_2(shared_mta, args, message):
    result = shared_mta.cli("queue", *args)

    assert result.returncode == 2
    assert message in result.stderr


def test_audit_log_refuses_changes(shared_mta):
    async def change() -> None:
        connection = await asyncpg.connect(shared_mta.database_url)
        try:
            await connection.execute("INSERT INTO audit_log (actor, action) VALUES ('test', 'queue test')")
            await connection.execute("UPDATE audit_log SET actor = 'someone else'")
        finally:
            await connection.close()

    with pytest.raises(asyncpg.RaiseError, match="audit_log is append-only: UPDATE is not allowed"):
        asyncio.run(change())


def test_show_keeps_each_recipients_reply(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port, retry_schedule=[3600.0]))
    first, second = f"one@{RELAY_DOMAIN}", f"two@{RELAY_DOMAIN}"
    sink.script.rcpt_replies = deque([GREYLISTED, "452 4.2.2 mailbox full"])
    with smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=30) as client:
        client.sendmail("sender@example.net", [first, second], b"Subject: two\r\n\r\nhello\r\n")
    assert wait_until(lambda: mta.log().count("status=deferred") == 2)

    (row,) = [json.loads(line) for line in queue(mta, "list", "--json").splitlines()]
    details = queue(mta, "show", row["message_id"])

    assert row["replies"] == {first: GREYLISTED, second: "452 4.2.2 mailbox full"}
    assert f"<{second}>: 452 4.2.2 mailbox full" in details


def test_delete_of_leased_message_exits_1(make_mta, sink, sink_port):
    mta, (queue_id,) = deferred_mta(make_mta, sink, sink_port)
    # As if another node were delivering it now.
    query(mta.database_url, "UPDATE delivery SET lease_owner = 'other-node', lease_until = now() + interval '1 hour'"
                            " WHERE message_id = $1", queue_id)

    result = mta.cli("queue", "delete", queue_id)

    assert result.returncode == 1
    assert "0 messages deleted" in result.stdout
    assert f"being delivered now, not changed: {queue_id}" in result.stderr
    assert query(mta.database_url, "SELECT 1 FROM delivery WHERE message_id = $1", queue_id)
