"""MTA-STS: policies fetched over HTTPS from a loopback server with a test CA, enforced, tested and cached."""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest
import trustme

from mta.delivery.mta_sts import Policy, PolicyError, parse_policy, parse_txt
from tests.conftest import REMOTE_MX_ADDRESS, query
from tests.mx import send_mx, wait_until
from tests.pgcluster import free_port
from tests.sink import sink_on

POLICY_ADDRESS = "127.0.0.9"


class PolicyServer:
    """An HTTPS server that serves one MTA-STS policy per host name and counts the requests."""

    def __init__(self, authority: trustme.CA, address: str = POLICY_ADDRESS):
        self.policies: dict[str, str] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = self.headers.get("Host", "")
                server.requests.append(host)
                body = server.policies.get(host)
                if body is None or self.path != "/.well-known/mta-sts.txt":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *_: object) -> None:
                pass

        server_class = http.server.ThreadingHTTPServer
        if ":" in address:
            server_class = type("Ipv6Server", (server_class,), {"address_family": socket.AF_INET6})
        self.httpd = server_class((address, 0), Handler)
        self.port = self.httpd.server_address[1]
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        authority.issue_cert("mta-sts.sts.example", "mta-sts.testing.example", "mta-sts.six.example") \
            .configure_cert(context)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> PolicyServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def policy_server(authority, dns) -> Iterator[PolicyServer]:
    with PolicyServer(authority) as server:
        for domain in ("sts.example", "testing.example"):
            dns.add(domain, "MX", f"10 mx.{domain}.")
            dns.add(f"mx.{domain}", "A", REMOTE_MX_ADDRESS)
            dns.add(f"mta-sts.{domain}", "A", POLICY_ADDRESS)
        yield server
        for domain in ("sts.example", "testing.example"):
            for name in (domain, f"mx.{domain}", f"mta-sts.{domain}", f"_mta-sts.{domain}"):
                dns.remove(name)


def publish(dns, server: PolicyServer, domain: str, policy_id: str, mode: str, mx: str) -> None:
    dns.remove(f"_mta-sts.{domain}")
    dns.add(f"_mta-sts.{domain}", "TXT", f"v=STSv1; id={policy_id};")
    server.policies[f"mta-sts.{domain}"] = f"version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: 86400\n"


def start_mta(make_mta, authority, tmp_path, smtp_port: int, policy_port: int):
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    return make_mta({"smtp": {"relay_networks": ["127.0.0.1/32"]},
                     "delivery": {"smtp_port": smtp_port, "retry_schedule": [60.0], "tls": {"ca_file": str(ca_file)},
                                  "mta_sts": {"port": policy_port}}})


def mx_context(authority: trustme.CA, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(name).configure_cert(context)
    return context


def test_enforce_delivers_with_verified_certificate(make_mta, authority, tmp_path, dns, policy_server):
    port = free_port(REMOTE_MX_ADDRESS)
    publish(dns, policy_server, "sts.example", "20261205", "enforce", "mx.sts.example")
    mta = start_mta(make_mta, authority, tmp_path, port, policy_server.port)

    with sink_on(REMOTE_MX_ADDRESS, port, tls_context=mx_context(authority, "mx.sts.example")) as sink:
        assert send_mx(mta, "sender@example.net", "user@sts.example")[0] == 250
        assert len(sink.wait_for(1)) == 1
        assert send_mx(mta, "sender@example.net", "second@sts.example")[0] == 250
        assert len(sink.wait_for(2)) == 2

    # The policy was fetched once and then taken from the cache.
    assert policy_server.requests == ["mta-sts.sts.example"]
    assert "MTA-STS policy of sts.example fetched: id 20261205, mode enforce" in mta.log()
    assert "certificate verified" in mta.log()
    rows = query(mta.database_url, "SELECT policy_id, mode, mx FROM mta_sts_policy WHERE domain = 'sts.example'")
    assert [tuple(row) for row in rows] == [("20261205", "enforce", ["mx.sts.example"])]


def test_policy_host_with_ipv6_only(make_mta, authority, tmp_path, dns):
    port = free_port(REMOTE_MX_ADDRESS)
    with PolicyServer(authority, "::1") as server:
        dns.add("six.example", "MX", "10 mx.six.example.")
        dns.add("mx.six.example", "A", REMOTE_MX_ADDRESS)
        dns.add("mta-sts.six.example", "AAAA", "::1")
        publish(dns, server, "six.example", "six1", "enforce", "mx.six.example")
        mta = start_mta(make_mta, authority, tmp_path, port, server.port)
        try:
            with sink_on(REMOTE_MX_ADDRESS, port, tls_context=mx_context(authority, "mx.six.example")) as sink:
                assert send_mx(mta, "sender@example.net", "user@six.example")[0] == 250
                assert len(sink.wait_for(1)) == 1
        finally:
            for name in ("six.example", "mx.six.example", "mta-sts.six.example", "_mta-sts.six.example"):
                dns.remove(name)

    assert server.requests == ["mta-sts.six.example"]
    assert "MTA-STS policy of six.example fetched: id six1, mode enforce" in mta.log()


def test_enforce_defers_on_bad_certificate_never_in_clear(make_mta, authority, tmp_path, dns, policy_server):
    port = free_port(REMOTE_MX_ADDRESS)
    publish(dns, policy_server, "sts.example", "20261206", "enforce", "mx.sts.example")
    mta = start_mta(make_mta, authority, tmp_path, port, policy_server.port)

    with sink_on(REMOTE_MX_ADDRESS, port, tls_context=mx_context(authority, "impostor.example")) as sink:
        assert send_mx(mta, "sender@example.net", "user@sts.example")[0] == 250
        assert wait_until(lambda: "status=deferred (451 4.7.5 TLS with" in mta.log())
        assert sink.messages == []

    assert "(verify, by MTA-STS)" in mta.log()


def test_enforce_defers_when_no_mx_matches(make_mta, authority, tmp_path, dns, policy_server):
    port = free_port(REMOTE_MX_ADDRESS)
    publish(dns, policy_server, "sts.example", "20261207", "enforce", "*.elsewhere.example")
    mta = start_mta(make_mta, authority, tmp_path, port, policy_server.port)

    with sink_on(REMOTE_MX_ADDRESS, port, tls_context=mx_context(authority, "mx.sts.example")) as sink:
        assert send_mx(mta, "sender@example.net", "user@sts.example")[0] == 250
        assert wait_until(lambda: "4.7.5 no MX host of sts.example matches its MTA-STS policy" in mta.log())
        assert sink.messages == []


def test_testing_mode_delivers_and_logs(make_mta, authority, tmp_path, dns, policy_server):
    port = free_port(REMOTE_MX_ADDRESS)
    publish(dns, policy_server, "testing.example", "1", "testing", "mx.other.example")
    mta = start_mta(make_mta, authority, tmp_path, port, policy_server.port)

    with sink_on(REMOTE_MX_ADDRESS, port) as sink:
        assert send_mx(mta, "sender@example.net", "user@testing.example")[0] == 250
        assert len(sink.wait_for(1)) == 1

    assert "MTA-STS testing policy of testing.example does not list MX host mx.testing.example" in mta.log()


@pytest.mark.parametrize("text, message", [
    ("version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 10\n", "invalid version"),
    ("version: STSv1\nmode: strict\nmx: a.example\nmax_age: 10\n", "invalid mode"),
    ("version: STSv1\nmode: enforce\nmax_age: 10\n", "no mx patterns"),
    ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 99999999\n", "invalid max_age"),
])
def test_invalid_policies_refused(text, message):
    with pytest.raises(PolicyError, match=message):
        parse_policy(text)


@pytest.mark.parametrize("records, expected", [
    (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
    (["v=STSv1; id=a1;", "v=STSv1; id=a2;"], None),
    (["v=spf1 -all"], None),
    (["v=STSv1; id=not-alphanumeric;"], None),
])
def test_txt_record_id(records, expected):
    assert parse_txt(records) == expected


@pytest.mark.parametrize("host, expected", [
    ("mx1.example.net", True),
    ("MX1.EXAMPLE.NET.", True),
    ("a.b.example.net", False),
    ("example.net", False),
    ("mail.example.org", True),
])
def test_mx_patterns(host, expected):
    policy = Policy("enforce", ("*.example.net", "mail.example.org"), 86400)
    assert policy.allows(host) is expected


def test_recent_results_bounded(monkeypatch):
    from mta.delivery import mta_sts

    monkeypatch.setattr(mta_sts, "MAX_RECENT", 4)
    checker = mta_sts.MtaSts(None, None, "")
    far = mta_sts.time.monotonic() + 1000
    checker._recent = {"gone.example": (0.0, None)} | {f"d{number}.example": (far, None) for number in range(4)}

    checker._forget_expired()

    assert list(checker._recent) == ["d2.example", "d3.example"]
