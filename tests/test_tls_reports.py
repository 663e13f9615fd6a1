"""TLS reporting (RFC 8460): sessions counted per policy, and the daily report mailed and posted."""

from __future__ import annotations

import gzip
import json
import ssl
import threading
from collections.abc import Iterator
from datetime import date
from email import message_from_bytes
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme

from mta.delivery.tlsrpt import build_report
from mta.delivery.tlsrpt_send import parse_tlsrpt
from tests.conftest import REMOTE_MX_ADDRESS, query
from tests.mx import send_mx, wait_until
from tests.pgcluster import free_port
from tests.sink import sink_on

DOMAIN = "rpt.example"
REPORTS = "reports.example"


class ReportReceiver(BaseHTTPRequestHandler):
    received: list[tuple[dict, bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def https_receiver(authority) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ReportReceiver)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(REPORTS).configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    ReportReceiver.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def records(dns, https_receiver) -> Iterator[None]:
    dns.add(DOMAIN, "MX", f"10 mx.{DOMAIN}.")
    dns.add(f"mx.{DOMAIN}", "A", REMOTE_MX_ADDRESS)
    dns.add(REPORTS, "MX", f"10 mx.{DOMAIN}.")
    dns.add(REPORTS, "A", "127.0.0.1")
    dns.add(f"_smtp._tls.{DOMAIN}", "TXT",
            f"v=TLSRPTv1; rua=mailto:tls@{REPORTS},https://{REPORTS}:{https_receiver}/v1/tlsrpt")
    yield
    for name in (DOMAIN, f"mx.{DOMAIN}", REPORTS, f"_smtp._tls.{DOMAIN}"):
        dns.remove(name)


def start_mta(make_mta, authority, tmp_path, port: int, **tls):
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    return make_mta({"smtp": {"relay_networks": ["127.0.0.1/32"]},
                     "delivery": {"smtp_port": port, "retry_schedule": [60.0],
                                  "tls": {"ca_file": str(ca_file)} | tls,
                                  "tls_reports": {"flush_seconds": 1.0, "interval": 1.0}}})


def server_context(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(f"mx.{DOMAIN}").configure_cert(context)
    return context


def report_attachment(data: bytes) -> dict:
    message = message_from_bytes(data, policy=default_policy)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "tlsrpt"
    parts = [part for part in message.iter_attachments() if part.get_content_type() == "application/tlsrpt+gzip"]
    assert len(parts) == 1
    return json.loads(gzip.decompress(parts[0].get_content()))


def test_daily_report_mailed_and_posted(make_mta, authority, tmp_path, records, https_receiver):
    port = free_port(REMOTE_MX_ADDRESS)
    mta = start_mta(make_mta, authority, tmp_path, port)

    with sink_on(REMOTE_MX_ADDRESS, port, tls_context=server_context(authority)) as sink:
        assert send_mx(mta, "sender@example.net", f"user@{DOMAIN}")[0] == 250
        assert len(sink.wait_for(1, timeout=10)) == 1
        assert wait_until(lambda: query(mta.database_url, "SELECT 1 FROM tls_report_count"))
        # The day ends: reports cover only days that are over.
        query(mta.database_url, "UPDATE tls_report_count SET day = day - 1")
        arrived = sink.wait_for(2, timeout=20)

    report_mail = arrived[1]
    assert report_mail.recipients == [f"tls@{REPORTS}"]
    assert report_mail.sender == "noreply-tlsrpt@example.com"
    assert b"DKIM-Signature:" in report_mail.data
    assert f"TLS-Report-Domain: {DOMAIN}".encode() in report_mail.data

    report = report_attachment(report_mail.data)
    assert report["organization-name"] == "mta.example.com"
    assert len(report["policies"]) == 1
    policy = report["policies"][0]
    assert policy["policy"] == {"policy-type": "no-policy-found", "policy-domain": DOMAIN}
    assert policy["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 0}

    assert wait_until(lambda: ReportReceiver.received)
    headers, body = ReportReceiver.received[0]
    assert headers["Content-Type"] == "application/tlsrpt+gzip"
    assert json.loads(gzip.decompress(body))["report-id"] == report["report-id"]
    sent = query(mta.database_url, "SELECT report_id FROM tls_report_sent")
    assert [row["report_id"] for row in sent] == [report["report-id"]]


def test_starttls_failure_counted(make_mta, authority, tmp_path, records):
    port = free_port(REMOTE_MX_ADDRESS)
    mta = start_mta(make_mta, authority, tmp_path, port, policy={DOMAIN: "encrypt"})

    with sink_on(REMOTE_MX_ADDRESS, port):
        assert send_mx(mta, "sender@example.net", f"user@{DOMAIN}")[0] == 250
        rows = wait_until(lambda: query(mta.database_url, "SELECT * FROM tls_report_count"))

    assert len(rows) == 1
    assert rows[0]["result_type"] == "starttls-not-supported"
    assert rows[0]["receiving_ip"] == REMOTE_MX_ADDRESS
    assert rows[0]["mx_host"] == f"mx.{DOMAIN}"
    assert rows[0]["sessions"] == 1


@pytest.mark.parametrize("texts, expected", [
    (["v=TLSRPTv1; rua=mailto:a@example.org"], ["mailto:a@example.org"]),
    (["v=TLSRPTv1;rua=mailto:a@example.org,https://r.example/x"], ["mailto:a@example.org", "https://r.example/x"]),
    (["v=spf1 -all", "v=TLSRPTv1; rua=mailto:a@example.org"], ["mailto:a@example.org"]),
    (["v=TLSRPTv1; rua=mailto:a@example.org", "v=TLSRPTv1; rua=mailto:b@example.org"], None),
    (["v=TLSRPTv1; rua=ftp://example.org/"], None),
    (["v=TLSRPTv2; rua=mailto:a@example.org"], None),
    ([], None),
])
def test_record_parsing(texts, expected):
    assert parse_tlsrpt(texts) == expected


def test_report_groups_failures_by_policy():
    rows = [
        {"policy_type": "sts", "policy_string": "version: STSv1\nmode: enforce", "mx_host": "mx.d.example",
         "result_type": "success", "sending_ip": "", "receiving_ip": "", "sessions": 7},
        {"policy_type": "sts", "policy_string": "version: STSv1\nmode: enforce", "mx_host": "mx.d.example",
         "result_type": "certificate-expired", "sending_ip": "192.0.2.1", "receiving_ip": "198.51.100.2",
         "sessions": 2},
    ]

    report = build_report("org", "postmaster@o.example", "id-1", date(2026, 12, 4), "d.example", rows)

    assert report["date-range"] == {"start-datetime": "2026-12-04T00:00:00Z", "end-datetime": "2026-12-04T23:59:59Z"}
    assert len(report["policies"]) == 1
    entry = report["policies"][0]
    assert entry["policy"]["policy-string"] == ["version: STSv1", "mode: enforce"]
    assert entry["summary"] == {"total-successful-session-count": 7, "total-failure-session-count": 2}
    assert entry["failure-details"] == [{"result-type": "certificate-expired", "sending-mta-ip": "192.0.2.1",
                                         "receiving-mx-hostname": "mx.d.example", "receiving-ip": "198.51.100.2",
                                         "failed-session-count": 2}]
