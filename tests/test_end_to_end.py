"""The main job end to end against the real ``mta serve`` process.

Real parts only: PostgreSQL, the loopback DNS server, swaks over STARTTLS with
AUTH, SMTP sinks on 127.0.0.2, and a kill -9 of the MTA.
"""

from __future__ import annotations

import re
import smtplib
import subprocess
import time
from collections import deque

import dkim
import dns.resolver
import pytest

from tests.conftest import SOURCE_ADDRESS, query
from tests.mx import RELAY_DOMAIN, relay_config, send_mx, wait_until
from tests.opendkim import opendkim_report
from tests.pgcluster import PgCluster

PASSWORD = "correct horse battery"


def add_alice(mta) -> None:
    result = mta.cli("user", "add", "alice@example.com", "--password-stdin", input_text=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr


def publish_dkim(mta, dns_server) -> None:
    result = mta.cli("dkim", "records")
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        name = line.split(" ", 1)[0]
        # Each MTA makes its own key: replace the record of an earlier test.
        dns_server.remove(name, "TXT")
        dns_server.add(name, "TXT", txt_strings(line))


def txt_strings(zone_line: str) -> str:
    """Return the TXT value of a zone-file line, its quoted strings joined."""
    return "".join(re.findall(r'"([^"]*)"', zone_line))


def txt_lookup(dns_server):
    """Return a dkimpy dnsfunc that queries the loopback DNS server."""
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = dns_server.port
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(answer[0].strings)
    return lookup


def test_swaks_submission_arrives_signed(make_mta, sink, dns, tmp_path):
    mta = make_mta()
    add_alice(mta)
    publish_dkim(mta, dns)

    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{mta.submission_port}", "-tls", "--auth", "PLAIN",
         "--auth-user", "alice@example.com", "--auth-password", PASSWORD,
         "--from", "alice@example.com", "--to", "bob@example.net",
         "--header", "Subject: first message", "--body", "Hello Bob.", "--timeout", "30"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 OK queued as" in result.stdout

    messages = sink.wait_for(1)
    assert len(messages) == 1
    received = messages[0]
    assert received.peer == SOURCE_ADDRESS
    assert received.recipients == ["bob@example.net"]
    assert received.sender == "alice@example.com"
    assert received.data.startswith(b"Received: ")
    assert b"ESMTPSA" in received.data.split(b"\r\n\r\n")[0]
    assert dkim.verify(received.data, dnsfunc=txt_lookup(dns))
    assert wait_until(lambda: query(mta.database_url, "SELECT id FROM delivery") == [])

    report = opendkim_report(received.data, dns.host, dns.port, tmp_path)
    assert "verification (s=mta, d=example.com, 2048-bit key) succeeded" in report


def test_submission_signature_breaks_on_tamper(make_mta, sink, dns):
    mta = make_mta()
    add_alice(mta)
    publish_dkim(mta, dns)

    with smtplib.SMTP("127.0.0.1", mta.submission_port, timeout=30) as client:
        client.starttls()
        client.login("alice@example.com", PASSWORD)
        client.sendmail("alice@example.com", ["bob@example.net"],
                        b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: pay\r\n\r\n100 EUR\r\n")

    data = sink.wait_for(1)[0].data
    assert dkim.verify(data, dnsfunc=txt_lookup(dns))
    assert not dkim.verify(b"From: ceo@example.net\r\n" + data, dnsfunc=txt_lookup(dns))
    assert not dkim.verify(data.replace(b"100 EUR", b"900 EUR"), dnsfunc=txt_lookup(dns))


def test_mx_accepts_local_mailbox(make_mta):
    mta = make_mta()
    add_alice(mta)

    code, text = send_mx(mta, "sender@example.net", "alice@example.com")
    assert code == 250, text
    assert b"2.0.0" in text

    rows = wait_until(lambda: query(mta.database_url, "SELECT mailbox FROM mailbox_message"))
    assert [row["mailbox"] for row in rows] == ["alice@example.com"]


def test_mx_rejects_unknown_local_user(make_mta):
    mta = make_mta()

    code, text = send_mx(mta, "sender@example.net", "nobody@example.com")
    assert code == 550
    assert text.startswith(b"5.1.1")


@pytest.mark.parametrize("recipient", ["victim@example.net", "victim@EXAMPLE.NET.", "victim@[192.0.2.55]"])
def test_mx_refuses_relay(make_mta, sink, recipient):
    mta = make_mta()

    code, text = send_mx(mta, "sender@example.net", recipient)
    assert code == 550
    assert text.startswith(b"5.7.1")
    assert query(mta.database_url, "SELECT id FROM message") == []


def test_relay_network_relays_and_signs(make_mta, sink, dns):
    # The MX listener's sessions come from 127.0.0.1 here; 127.0.0.3 is outside the network.
    mta = make_mta({"smtp": {"relay_networks": ["127.0.0.1/32"]}})
    publish_dkim(mta, dns)
    body = b"From: app@example.com\r\nTo: bob@example.net\r\nSubject: invoice\r\n\r\nDue today.\r\n"

    code, text = send_mx(mta, "app@example.com", "bob@example.net", body)
    assert code == 250, text
    with smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=30, source_address=("127.0.0.3", 0)) as client:
        client.ehlo("outsider.example.net")
        client.mail("app@example.com")
        code, text = client.rcpt("bob@example.net")
    assert (code, text[:5]) == (550, b"5.7.1")

    data = sink.wait_for(1)[0].data
    assert dkim.verify(data, dnsfunc=txt_lookup(dns))
    assert b"\r\nMessage-ID: <" in data
    assert "(relay network)" in mta.log()


def test_relay_network_wider_than_limit_is_refused(make_mta):
    mta = make_mta({"smtp": {"relay_networks": ["0.0.0.0/0"]}}, start=False)

    result = mta.cli("check-config")
    assert result.returncode == 2
    assert "smtp.relay_networks entry '0.0.0.0/0' is wider than /8" in result.stderr


def test_submission_requires_auth_before_mail(make_mta):
    mta = make_mta()

    with smtplib.SMTP("127.0.0.1", mta.submission_port, timeout=30) as client:
        client.starttls()
        client.ehlo("client.example.net")
        code, text = client.mail("alice@example.com")
    assert code == 530
    assert text.startswith(b"5.7.0")


def test_killed_mta_delivers_once_after_restart(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port, lease_seconds=2.0))
    sink.script.rcpt_delays = deque([60.0])

    code, text = send_mx(mta, "sender@example.net", f"user@{RELAY_DOMAIN}")
    assert code == 250, text
    assert sink.rcpt_seen.wait(20), "the MTA never started delivering"

    mta.kill()
    assert sink.messages == []

    mta.start()
    messages = sink.wait_for(1)
    assert len(messages) == 1
    time.sleep(3)
    assert len(sink.messages) == 1
    assert query(mta.database_url, "SELECT id FROM delivery") == []


def test_database_outage_gives_451_then_accepts(make_mta, sink, sink_port):
    cluster = PgCluster()
    cluster.init()
    cluster.start()
    try:
        mta = make_mta(relay_config(sink_port), cluster=cluster)
        body = b"Subject: outage\r\n\r\nsame message\r\n"

        with smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=30) as client:
            client.ehlo("client.example.net")
            client.mail("sender@example.net")
            assert client.rcpt(f"user@{RELAY_DOMAIN}")[0] == 250
            cluster.stop()
            code, text = client.data(body)
        assert code == 451
        assert text.startswith(b"4.3.0")

        cluster.start()
        accepted = wait_until(lambda: send_mx(mta, "sender@example.net", f"user@{RELAY_DOMAIN}", body)[0] == 250,
                              timeout=20, interval=0.5)
        assert accepted

        assert len(sink.wait_for(1)) == 1
        time.sleep(1)
        assert len(sink.messages) == 1
        assert len(query(mta.database_url, "SELECT id FROM message")) == 1
    finally:
        cluster.destroy()


def test_temporary_failure_is_retried_once(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port, retry_schedule=[1.0]))
    sink.script.rcpt_replies = deque(["451 4.7.1 greylisted, try again"])

    code, _ = send_mx(mta, "sender@example.net", f"user@{RELAY_DOMAIN}")
    assert code == 250

    assert len(sink.wait_for(1)) == 1
    time.sleep(2)
    assert len(sink.messages) == 1
    events = query(mta.database_url, "SELECT status FROM delivery_event ORDER BY id")
    assert [row["status"] for row in events] == ["deferred", "delivered"]


def test_permanent_failure_bounces_to_sender(make_mta, sink, dns):
    mta = make_mta()
    add_alice(mta)
    sink.script.rcpt_replies = deque(["550 5.1.1 no such user"])

    with smtplib.SMTP("127.0.0.1", mta.submission_port, timeout=30) as client:
        client.starttls()
        client.login("alice@example.com", PASSWORD)
        client.sendmail("alice@example.com", ["nobody@fail.example"],
                        b"From: alice@example.com\r\nTo: nobody@fail.example\r\nSubject: lost\r\n\r\nhi\r\n")

    sql = ("SELECT m.sender, m.origin FROM mailbox_message b JOIN message m ON m.id = b.message_id"
           " WHERE b.mailbox = 'alice@example.com'")
    bounces = wait_until(lambda: query(mta.database_url, sql))
    assert [(row["sender"], row["origin"]) for row in bounces] == [("", "bounce")]
    assert sink.messages == []


def test_null_sender_failure_is_not_bounced(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port))
    sink.script.rcpt_replies = deque(["550 5.1.1 no such user"])

    code, _ = send_mx(mta, "<>", f"user@{RELAY_DOMAIN}")
    assert code == 250

    events = wait_until(lambda: query(mta.database_url, "SELECT status FROM delivery_event"))
    assert [row["status"] for row in events] == ["bounced"]
    time.sleep(1)
    assert len(query(mta.database_url, "SELECT id FROM message")) == 1
    assert query(mta.database_url, "SELECT id FROM delivery") == []


def test_body_store_failure_gives_451(make_mta, sink, sink_port):
    extra = relay_config(sink_port)
    # Every body goes to the body store, none inline in PostgreSQL.
    extra["storage"] = {"inline_max_size": 0}
    mta = make_mta(extra)
    blobs = mta.workdir / "var" / "blobs"

    # A file where the store's directory should be makes every write fail.
    blobs.rename(blobs.with_name("blobs.moved"))
    blobs.write_bytes(b"")
    code, text = send_mx(mta, "sender@example.net", f"user@{RELAY_DOMAIN}")
    assert code == 451
    assert text.startswith(b"4.3.0")
    assert query(mta.database_url, "SELECT id FROM message") == []

    blobs.unlink()
    blobs.with_name("blobs.moved").rename(blobs)
    code, _ = send_mx(mta, "sender@example.net", f"user@{RELAY_DOMAIN}")
    assert code == 250
    assert len(sink.wait_for(1)) == 1

    # Delivered and finished: the object is gone from the store.
    assert wait_until(lambda: not any(path.is_file() for path in blobs.rglob("*")))


def test_null_mx_bounces_without_connecting(make_mta, sink):
    mta = make_mta()
    add_alice(mta)

    with smtplib.SMTP("127.0.0.1", mta.submission_port, timeout=30) as client:
        client.starttls()
        client.login("alice@example.com", PASSWORD)
        client.sendmail("alice@example.com", ["user@nullmx.example"],
                        b"From: alice@example.com\r\nTo: user@nullmx.example\r\nSubject: typo\r\n\r\nhi\r\n")

    # The failed recipient, then the notification delivered to alice's mailbox.
    sql_events = "SELECT status, reply FROM delivery_event ORDER BY id"
    events = wait_until(lambda: len(rows := query(mta.database_url, sql_events)) == 2 and rows)
    assert [row["status"] for row in events] == ["bounced", "delivered"]
    assert events[0]["reply"].startswith("556 5.1.10")
    sql = "SELECT m.sender FROM mailbox_message b JOIN message m ON m.id = b.message_id"
    assert [row["sender"] for row in wait_until(lambda: query(mta.database_url, sql))] == [""]
    assert not sink.rcpt_seen.is_set()


def test_outage_during_delivery_retries_row(make_mta, sink, sink_port):
    cluster = PgCluster()
    cluster.init()
    cluster.start()
    try:
        mta = make_mta(relay_config(sink_port, lease_seconds=2.0), cluster=cluster)
        sink.script.rcpt_delays = deque([2.0])

        code, _ = send_mx(mta, "sender@example.net", f"user@{RELAY_DOMAIN}")
        assert code == 250
        assert sink.rcpt_seen.wait(20)
        cluster.stop()
        # The first copy arrives while the database is down, so its outcome
        # cannot be recorded: the row must come back when its lease expires.
        assert len(sink.wait_for(1)) == 1
        time.sleep(1)
        cluster.start()

        assert wait_until(lambda: query(mta.database_url, "SELECT id FROM delivery") == [], timeout=30)
        # At least once: the copy whose outcome was lost is sent again.
        assert len(sink.messages) == 2
        assert "retried when its lease expires" in mta.log()
    finally:
        cluster.destroy()


def test_inline_body_removed_after_delivery(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port))
    body = b"Subject: inline\r\n\r\n" + b"line of text\r\n" * 100

    code, _ = send_mx(mta, "sender@example.net", f"user@{RELAY_DOMAIN}", body)
    assert code == 250
    received = sink.wait_for(1)[0].data
    assert received.endswith(body)

    assert wait_until(lambda: query(mta.database_url, "SELECT message_id FROM message_body") == [])
    assert not any(path.is_file() for path in (mta.workdir / "var" / "blobs").rglob("*"))


def test_dot_lines_relayed_intact(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port))
    body = b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nafter a lone dot\r\nend\r\n"

    code, _ = send_mx(mta, "sender@example.net", f"user@{RELAY_DOMAIN}", body)
    assert code == 250

    received = sink.wait_for(1)[0].data
    assert received.endswith(body)
