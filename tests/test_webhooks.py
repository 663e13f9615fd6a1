"""Webhooks against the real ``mta serve``: events survive a restart and arrive signed, once per event id."""

from __future__ import annotations

import asyncio
import json
import random
import re
import smtplib
import threading
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mta import db
from mta.webhooks.dispatcher import WebhookDispatcher
from mta.webhooks.settings import WebhooksConfig
from tests.conftest import config_error, create_database, query
from tests.mx import RELAY_DOMAIN, relay_config, send_mx, wait_until
from tests.test_inbound_auth import signed
from tests.test_operations import http_get
from mta.complaints.report import MAX_RECIPIENTS, ReportError, parse_report
from mta.complaints.reporters import reporter_of
from mta.dkim import dns_txt_value
from mta.webhooks.signature import sign, verify

SECRET = "test-secret-0123456789abcdef"


class Receiver:
    """A webhook endpoint on loopback that replies 500 while failing is set, else 204."""

    def __init__(self) -> None:
        self.failing = True
        self.failures: Counter[str] = Counter()
        self.received: list[tuple[dict, bytes]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver.lock:
                    if receiver.failing:
                        receiver.failures[headers["mta-event-id"]] += 1
                        status = 500
                    else:
                        receiver.received.append((headers, body))
                        status = 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        return Handler

    def events(self) -> list[dict]:
        """Return the received events, each event id once."""
        with self.lock:
            by_id = {headers["mta-event-id"]: json.loads(body) for headers, body in self.received}
        return list(by_id.values())


@pytest.fixture
def receiver():
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def webhook_config(url: str) -> dict:
    return {"webhooks": {
        "allow_insecure_loopback": True, "poll_interval": 0.1, "lease_seconds": 2.0,
        "endpoints": {"test": {"url": url, "secret": SECRET, "timeout": 1.0, "backoff": [0.3]}},
    }}


def facts(events: list[dict], queue_ids: set[str]) -> Counter:
    return Counter((event["queue_id"], event["type"], event.get("recipient", ""))
                   for event in events if event["queue_id"] in queue_ids)


def test_events_survive_restart_once_each(make_mta, sink, receiver):
    mta = make_mta({**relay_config(sink.port), **webhook_config(receiver.url)})

    code, text = send_mx(mta, "sender@example.net", f"ok@{RELAY_DOMAIN}")
    assert code == 250, text
    delivered_id = text.decode().split()[-1]
    assert sink.wait_for(1)
    sink.script.rcpt_replies.append("550 5.1.1 no such user")
    code, text = send_mx(mta, "sender@example.net", f"gone@{RELAY_DOMAIN}")
    assert code == 250, text
    bounced_id = text.decode().split()[-1]

    # Four events: accepted and delivered, accepted and bounced.
    assert wait_until(lambda: len(receiver.failures) >= 4, timeout=30)
    assert wait_until(lambda: min(receiver.failures.values()) >= 2, timeout=30)
    backlog = http_get(mta.http_port, "/metrics")[1]
    # The bounce's notification to the sender adds events of its own.
    pending = re.search(r'^mta_webhook_outbox_pending\{endpoint="test"\} (\S+)$', backlog, re.MULTILINE)
    assert pending and float(pending.group(1)) >= 4
    oldest = re.search(r'^mta_webhook_outbox_oldest_seconds\{endpoint="test"\} (\S+)$', backlog, re.MULTILINE)
    assert oldest and float(oldest.group(1)) > 0
    mta.stop()
    receiver.failing = False
    mta.start()

    expected = Counter({(delivered_id, "accepted", ""): 1, (delivered_id, "delivered", f"ok@{RELAY_DOMAIN}"): 1,
                        (bounced_id, "accepted", ""): 1, (bounced_id, "bounced", f"gone@{RELAY_DOMAIN}"): 1})
    queue_ids = {delivered_id, bounced_id}
    assert wait_until(lambda: facts(receiver.events(), queue_ids) == expected, timeout=30), \
        facts(receiver.events(), queue_ids)

    for headers, body in receiver.received:
        assert verify(SECRET.encode(), headers["mta-timestamp"], body, headers["mta-signature"])
        assert json.loads(body)["id"] == headers["mta-event-id"]
        assert headers["content-type"] == "application/json"
    for event_id, failures in receiver.failures.items():
        assert failures >= 2, event_id
    def outbox_rows():
        return query(mta.database_url, "SELECT state, attempts FROM webhook_outbox WHERE payload->>'queue_id' = ANY($1)",
                     list(queue_ids))

    # The dispatcher records the replies after the receiver has the events.
    assert wait_until(lambda: [row["state"] for row in outbox_rows()] == ["delivered"] * 4)
    rows = outbox_rows()
    assert all(row["attempts"] >= 3 for row in rows)


def test_event_payload_fields(make_mta, sink, receiver):
    receiver.failing = False
    mta = make_mta({**relay_config(sink.port), **webhook_config(receiver.url)})

    code, text = send_mx(mta, "sender@example.net", f"ok@{RELAY_DOMAIN}")
    assert code == 250, text
    queue_id = text.decode().split()[-1]
    assert wait_until(lambda: len(facts(receiver.events(), {queue_id})) == 2)

    events = {event["type"]: event for event in receiver.events() if event["queue_id"] == queue_id}
    assert events["accepted"]["sender"] == "sender@example.net"
    assert events["accepted"]["recipients"] == [f"ok@{RELAY_DOMAIN}"]
    assert events["accepted"]["origin"] == "mx"
    assert events["delivered"]["recipient"] == f"ok@{RELAY_DOMAIN}"
    assert events["delivered"]["reply"].startswith("250 ")
    assert events["delivered"]["status"] == "2.0.0"
    assert events["delivered"]["attempt"] == 1


def test_queue_delete_and_bounce_send_events(make_mta, sink, receiver):
    receiver.failing = False
    mta = make_mta({**relay_config(sink.port, retry_schedule=[3600.0]), **webhook_config(receiver.url)})
    sink.script.rcpt_replies = deque(["451 4.7.1 greylisted"] * 3)
    queue_ids = []
    for name in ("deleted", "bounced", "erased"):
        code, text = send_mx(mta, "sender@example.net", f"{name}@{RELAY_DOMAIN}")
        assert code == 250, text
        queue_ids.append(text.decode().split()[-1])
    assert wait_until(lambda: mta.log().count("status=deferred") == 3)

    assert mta.cli("queue", "delete", queue_ids[0]).returncode == 0
    assert mta.cli("queue", "bounce", queue_ids[1]).returncode == 0
    # An erasure of the recipient removes the queued mail to them: a deleted event names their pseudonym.
    assert mta.cli("gdpr", "erase", f"erased@{RELAY_DOMAIN}").returncode == 0
    pseudonym = mta.cli("gdpr", "pseudonym", f"erased@{RELAY_DOMAIN}").stdout.strip()

    expected = {(queue_ids[0], "deleted", f"deleted@{RELAY_DOMAIN}"), (queue_ids[1], "bounced", f"bounced@{RELAY_DOMAIN}"),
                (queue_ids[2], "deleted", pseudonym)}
    assert wait_until(lambda: expected <= set(facts(receiver.events(), set(queue_ids)))), \
        facts(receiver.events(), set(queue_ids))
    operator_events = [event for event in receiver.events() if event["type"] in ("deleted", "bounced")]
    assert [event["by_operator"] for event in operator_events] == [True, True, True]
    assert {event["status"] for event in operator_events} == {"2.0.0", "5.0.0"}


def feedback_report(original: bytes, feedback_type: str = "abuse", *recipients: str) -> bytes:
    """Return an ARF report (RFC 5965) about original, as a mailbox provider sends it."""
    rcpt_fields = "".join(f"Original-Rcpt-To: {recipient}\r\n" for recipient in recipients)
    return (
        "From: fbl@isp.example\r\nTo: fbl@example.com\r\nSubject: complaint\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain\r\n\r\nA user marked this message as spam.\r\n"
        "--b1\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: {feedback_type}\r\nUser-Agent: isp-fbl/1.0\r\nVersion: 1\r\n{rcpt_fields}\r\n"
        "--b1\r\nContent-Type: message/rfc822\r\n\r\n"
    ).encode() + original + b"\r\n--b1--\r\n"


# The reviewer's input: report-type=feedback-report without a boundary, so the payload is a str.
NO_BOUNDARY = b"Content-Type: multipart/report; report-type=feedback-report\r\n\r\nhello\r\n"
REPORTER = "isp.example"


def complaints_config(sink_port: int, url: str) -> dict:
    config = {**relay_config(sink_port), **webhook_config(url)}
    config["webhooks"]["complaints_address"] = "fbl@example.com"
    config["webhooks"]["complaints_from"] = [REPORTER]
    return config


def signing_key(dns, domain: str) -> rsa.RSAPrivateKey:
    """Return a new DKIM key for domain, published as selector s1 on the test DNS server."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    dns.add(f"s1._domainkey.{domain}", "TXT", dns_txt_value(key))
    return key


def send_original(mta, sink, *recipients: str) -> tuple[str, bytes]:
    """Send a message from news@example.net through MX; return its queue id and the copy the sink received."""
    with smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=30) as client:
        client.ehlo("client.example.net")
        client.mail("news@example.net")
        for recipient in recipients:
            client.rcpt(recipient)
        code, text = client.data(b"Subject: news\r\n\r\nhello\r\n")
    assert code == 250, text
    queue_id = text.decode().split()[-1]
    settled = f"SELECT id FROM delivery_event WHERE message_id = '{queue_id}'"
    assert wait_until(lambda: len(query(mta.database_url, settled)) == len(recipients))
    return queue_id, sink.wait_for(1)[0].data


def test_feedback_report_complains_and_suppresses(make_mta, sink, receiver, dns):
    receiver.failing = False
    mta = make_mta(complaints_config(sink.port, receiver.url))
    assert mta.cli("user", "add", "fbl@example.com", "--password-stdin", input_text="fbl-password-1\n").returncode == 0
    key = signing_key(dns, REPORTER)
    # The sink refuses the second recipient, so only the first got the message and may complain about it.
    sink.script.rcpt_replies.extend(["250 2.1.5 OK", "550 5.1.1 no such user"])
    queue_id, original = send_original(mta, sink, f"reader@{RELAY_DOMAIN}", f"refused@{RELAY_DOMAIN}")

    reports = {
        "valid": feedback_report(original, "abuse", f"<refused@{RELAY_DOMAIN}>", f"<reader@{RELAY_DOMAIN}>"),
        "unknown": feedback_report(b"Received: from a by mta.test with ESMTP id AAAAAAAAAAAAAAAA; now\r\n\r\n"),
        "no boundary": b"From: fbl@isp.example\r\nSubject: complaint\r\n" + NO_BOUNDARY,
    }
    report_ids = {}
    for name, report in reports.items():
        code, text = send_mx(mta, "fbl@isp.example", "fbl@example.com", signed(report, REPORTER, "s1", key))
        assert code == 250, text
        report_ids[name] = text.decode().split()[-1]

    complaints = lambda: [event for event in receiver.events() if event["type"] == "complained"]
    assert wait_until(complaints)
    (event,) = complaints()
    assert event["queue_id"] == queue_id
    assert event["recipient"] == f"reader@{RELAY_DOMAIN}"
    assert event["feedback_type"] == "abuse"
    assert event["sender"] == "news@example.net"
    # The refused recipient is suppressed too, but as a bounce (550 5.1.1), not by the report.
    rows = query(mta.database_url, "SELECT sender_domain, address FROM suppression WHERE source = 'complaint'")
    assert [tuple(row) for row in rows] == [("example.net", f"reader@{RELAY_DOMAIN}")]
    # Every report is also kept in the mailbox, an unusable one with a log line.
    assert wait_until(lambda: len(query(mta.database_url, "SELECT id FROM mailbox_message")) == 3)
    assert f"{report_ids['unknown']}: feedback report names no message of ours" in mta.log()
    assert f"{report_ids['no boundary']}: not used as a feedback report" in mta.log()


def test_forged_report_ignored(make_mta, sink, receiver, dns):
    mta = make_mta(complaints_config(sink.port, receiver.url))
    assert mta.cli("user", "add", "fbl@example.com", "--password-stdin", input_text="fbl-password-1\n").returncode == 0
    queue_id, original = send_original(mta, sink, f"reader@{RELAY_DOMAIN}")

    # Signed by a domain that is not a configured reporter, with a forged result claiming the reporter's.
    forged_result = b"Authentication-Results: mta.example.com; dkim=pass header.d=isp.example\r\n"
    report = forged_result + feedback_report(original, "abuse", f"<reader@{RELAY_DOMAIN}>")
    code, text = send_mx(mta, "fbl@isp.example", "fbl@example.com",
                         signed(report, "forger.example", "s1", signing_key(dns, "forger.example")))
    assert code == 250, text
    report_id = text.decode().split()[-1]

    # The handler runs before the mailbox delivery, so once the report is there nothing more can follow.
    assert wait_until(lambda: query(mta.database_url, "SELECT id FROM mailbox_message"))
    assert query(mta.database_url, "SELECT id FROM webhook_outbox WHERE event = 'complained'") == []
    assert query(mta.database_url, "SELECT address FROM suppression") == []
    assert (f"{report_id}: message to the complaints address is not from a configured feedback reporter "
            "(authenticated domains: forger.example)") in mta.log()


@pytest.mark.parametrize("report, expected", [
    (b"Subject: hi\r\n\r\nplain text\r\n", "not a multipart/report"),
    (b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n--b--\r\n',
     "without report-type=feedback-report"),
    (feedback_report(b"Received: from a by mta.test with ESMTP id AAAAAAAAAAAAAAAA; now\r\n\r\n",
                     feedback_type="ab use"), "invalid or missing Feedback-Type"),
    (feedback_report(b"Message-ID: <someone@example.org>\r\n\r\n"), "no queue id of ours"),
    (feedback_report(b"")[:200], "no message/feedback-report part"),
])
def test_malformed_reports_rejected(report, expected):
    with pytest.raises(ReportError, match=expected):
        parse_report(report)


@pytest.mark.parametrize("report", [
    pytest.param(NO_BOUNDARY, id="no boundary"),
    pytest.param(b'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\r\n\r\nno parts\r\n',
                 id="boundary never used"),
    pytest.param(b"Content-Type: text/plain; report-type=feedback-report\r\n\r\nhello\r\n", id="not multipart"),
    pytest.param(bytes(random.Random(5965).randrange(256) for _ in range(4096)), id="binary junk"),
    pytest.param(b'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\r\n\r\n'
                 + b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 20_000 + b"--b--\r\n", id="20000 parts"),
    pytest.param(feedback_report(b"Received: by mta.test with ESMTP id AAAAAAAAAAAAAAAA\r\n\r\n", "ab\xffuse")
                 .replace(b"\xc3\xbf", b"\xff"), id="8-bit Feedback-Type"),
    pytest.param(b'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\r\n\r\n'
                 b"--b\r\nContent-Type: message/feedback-report; boundary=z\r\n\r\n--z\r\n\r\n"
                 b"--b\r\nContent-Type: text/rfc822-headers; charset=no-such-charset\r\n"
                 b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ\r\n--b--\r\n", id="broken inner parts"),
])
def test_hostile_reports_raise_report_error(report):
    with pytest.raises(ReportError):
        parse_report(report)


def test_report_queue_ids_from_received_and_message_id():
    original = (b"Received: from isp by mx.isp.example with ESMTP id XYZ; now\r\n"
                b"Received: from client ([192.0.2.1])\r\n\tby mta.example.com with ESMTPS id 4DS3EJN23MFPI5D4\r\n"
                b"\tfor <bob@example.org>; Sat, 5 Dec 2026 10:00:00 +0000\r\n"
                b"Message-ID: <QQQQQQQQQQQQQQQQ.0a1b2c@mta.example.com>\r\n\r\nbody\r\n")

    report = parse_report(feedback_report(original, "Not-Spam", "<Bob@Example.org>"))

    assert report.queue_ids == ["4DS3EJN23MFPI5D4", "QQQQQQQQQQQQQQQQ"]
    assert report.feedback_type == "not-spam"
    assert report.recipients == ["bob@example.org"]


def test_report_recipients_capped():
    original = b"Received: by mta.example.com with ESMTP id 4DS3EJN23MFPI5D4\r\n\r\n"
    named = [f"<user{number}@example.org>" for number in range(MAX_RECIPIENTS + 5)]

    report = parse_report(feedback_report(original, "abuse", *named))

    assert report.recipients == [f"user{number}@example.org" for number in range(MAX_RECIPIENTS)]


@pytest.mark.parametrize("results, expected", [
    ("mta.example.com; dkim=pass header.d=isp.example header.s=s1", "isp.example"),
    ("mta.example.com;\r\n\tspf=pass smtp.mailfrom=bounces.fbl.isp.example;\r\n\tdkim=none", "isp.example"),
    ("mta.example.com; dkim=fail header.d=isp.example; spf=softfail smtp.mailfrom=isp.example", None),
    ("mta.example.com; spf=pass smtp.helo=isp.example", None),
    ("mta.example.com; dkim=pass header.d=notisp.example", None),
    ('mta.example.com; dkim=pass header.d="x; spf=pass smtp.mailfrom=isp.example"', None),
    ('mta.example.com; dkim=fail header.d=x header.s="a; dkim=pass header.d=isp.example"', None),
    ("other.example; dkim=pass header.d=isp.example", None),
])
def test_reporter_from_authentication_results(results, expected):
    header = f"Authentication-Results: {results}\r\nFrom: fbl@isp.example\r\n".encode()

    assert reporter_of(header, "mta.example.com", [REPORTER]) == expected


def test_only_topmost_results_field_counts():
    header = (b"Authentication-Results: mta.example.com; dkim=none\r\n"
              b"Authentication-Results: mta.example.com; dkim=pass header.d=isp.example\r\n")

    assert reporter_of(header, "mta.example.com", [REPORTER]) is None


@pytest.mark.parametrize("toml, expected", [
    ('[webhooks]\ncomplaints_address = "fbl@example.com"\n', "needs webhooks.complaints_from"),
    ('[webhooks]\ncomplaints_address = "fbl@example.com"\ncomplaints_from = ["co.uk"]\n', "is a public suffix"),
    ('[webhooks]\ncomplaints_address = "fbl@example.com"\ncomplaints_from = ["bad domain"]\n', "invalid domain"),
    ('[webhooks]\ncomplaints_address = "fbl@example.com"\ncomplaints_from = ["isp.example"]\n'
     "[inbound]\nspf = false\ndkim = false\ndmarc = false\n", "needs inbound.spf or inbound.dkim"),
])
def test_complaints_config_errors(tmp_path, toml, expected):
    assert expected in config_error(tmp_path, toml)


def test_no_events_without_endpoints(make_mta, sink):
    mta = make_mta(relay_config(sink.port))

    code, text = send_mx(mta, "sender@example.net", f"ok@{RELAY_DOMAIN}")
    assert code == 250, text
    assert sink.wait_for(1)
    assert wait_until(lambda: query(mta.database_url, "SELECT id FROM delivery") == [])

    assert query(mta.database_url, "SELECT count(*) AS n FROM webhook_outbox")[0]["n"] == 0


def test_signature_covers_timestamp_and_body():
    signature = sign(b"k" * 16, 1700000000, b'{"a": 1}')

    assert signature.startswith("sha256=")
    assert verify(b"k" * 16, "1700000000", b'{"a": 1}', signature)
    assert not verify(b"k" * 16, "1700000001", b'{"a": 1}', signature)
    assert not verify(b"k" * 16, "1700000000", b'{"a": 2}', signature)
    assert not verify(b"x" * 16, "1700000000", b'{"a": 1}', signature)


@pytest.mark.parametrize("endpoint, expected", [
    ({"url": "http://192.0.2.1/hook", "secret": SECRET}, "must be an https:// URL"),
    ({"url": "http://127.0.0.1/hook", "secret": SECRET}, "allow_insecure_loopback"),
    ({"url": "https://hooks.example/", "secret": "short"}, "at least 16 characters"),
    ({"url": "https://hooks.example/"}, "exactly one of secret and secret_file"),
    ({"url": "https://hooks.example/", "secret": SECRET, "events": ["opened"]}, "events must name"),
    ({"url": "https://hooks.example/", "secret": SECRET, "timeout": 500.0}, "timeout must be between"),
])
def test_endpoint_config_errors(tmp_path, endpoint, expected):
    lines = [f"{key} = {json.dumps(value)}" for key, value in endpoint.items()]
    message = config_error(tmp_path, "[webhooks.endpoints.hook]\n" + "\n".join(lines) + "\n")

    assert expected in message


FRESH = "00000000-0000-4000-8000-000000000001"
OLD = "00000000-0000-4000-8000-000000000002"


def test_unconfigured_endpoint_fails_only_old_events(pg):
    url = create_database(pg)

    async def run() -> dict[str, str]:
        connection = await asyncpg.connect(url)
        try:
            await db.migrate(connection)
            # A fresh event may come from a node whose configuration already has the endpoint.
            await connection.execute(
                "INSERT INTO webhook_outbox (event_id, endpoint, event, payload, created_at) VALUES"
                " ($1, 'added-elsewhere', 'accepted', '{}', now()),"
                " ($2, 'removed', 'accepted', '{}', now() - interval '2 days')", FRESH, OLD)
            pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
            try:
                await WebhookDispatcher(url, WebhooksConfig(), {}, "node")._fail_unconfigured(pool)
            finally:
                await pool.close()
            rows = await connection.fetch("SELECT event_id, state FROM webhook_outbox")
        finally:
            await connection.close()
        return {str(row["event_id"]): row["state"] for row in rows}

    assert asyncio.run(run()) == {FRESH: "pending", OLD: "failed"}
