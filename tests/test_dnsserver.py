"""Tests for the loopback DNS test server, queried with dnspython's asyncio resolver."""

from __future__ import annotations

import socket

import dns.asyncbackend
import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from tests.dnsserver import DnsServer

LONG_TXT = "v=DKIM1; k=rsa; p=" + "A" * 392  # the length of a 2048-bit RSA key record


@pytest.fixture
def server():
    dns_server = DnsServer()
    dns_server.start()
    yield dns_server
    dns_server.stop()


@pytest.fixture
def resolver(server: DnsServer) -> dns.asyncresolver.Resolver:
    # configure=False keeps the system resolver configuration, which points
    # off this machine, out of the test.
    loopback_resolver = dns.asyncresolver.Resolver(configure=False)
    loopback_resolver.nameservers = [server.host]
    loopback_resolver.port = server.port
    loopback_resolver.lifetime = 2.0
    loopback_resolver.cache = None
    return loopback_resolver


def test_start_binds_loopback_port(server: DnsServer):
    assert server.host == "127.0.0.1"
    assert server.port > 0


async def test_mx_record(server: DnsServer, resolver: dns.asyncresolver.Resolver):
    server.add("example.net", "MX", "10 mx.example.net.")
    server.add("example.net.", "MX", "20 backup.example.net.")

    answer = await resolver.resolve("example.net", "MX")

    assert sorted((r.preference, r.exchange.to_text()) for r in answer) == [
        (10, "mx.example.net."),
        (20, "backup.example.net."),
    ]
    assert answer.response.flags & dns.flags.AA


async def test_null_mx_record(server: DnsServer, resolver: dns.asyncresolver.Resolver):
    server.add("nomail.example", "MX", "0 .")

    answer = await resolver.resolve("nomail.example", "MX")

    assert [(r.preference, r.exchange.to_text()) for r in answer] == [(0, ".")]


async def test_address_records(server: DnsServer, resolver: dns.asyncresolver.Resolver):
    server.add("mx.example.net", "A", "127.0.0.2")
    server.add("mx.example.net", "AAAA", "::1")

    a_answer = await resolver.resolve("mx.example.net", "A")
    aaaa_answer = await resolver.resolve("mx.example.net", "AAAA")

    assert [r.address for r in a_answer] == ["127.0.0.2"]
    assert [r.address for r in aaaa_answer] == ["::1"]


async def test_names_case_insensitive(server: DnsServer, resolver: dns.asyncresolver.Resolver):
    server.add("Mixed.Example.NET", "A", "127.0.0.3")

    answer = await resolver.resolve("mixed.example.net.", "A")

    assert [r.address for r in answer] == ["127.0.0.3"]


async def test_long_txt_split_into_strings(server: DnsServer, resolver: dns.asyncresolver.Resolver):
    server.add("sel._domainkey.example.net", "TXT", LONG_TXT)

    answer = await resolver.resolve("sel._domainkey.example.net", "TXT")

    (record,) = list(answer)
    assert [len(s) for s in record.strings] == [255, len(LONG_TXT) - 255]
    assert b"".join(record.strings).decode() == LONG_TXT


async def test_unknown_name_nxdomain(server: DnsServer, resolver: dns.asyncresolver.Resolver):
    server.add("known.example", "A", "127.0.0.2")

    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("unknown.example", "A")


async def test_known_name_without_type_noanswer(server: DnsServer, resolver: dns.asyncresolver.Resolver):
    server.add("known.example", "A", "127.0.0.2")

    with pytest.raises(dns.resolver.NoAnswer) as excinfo:
        await resolver.resolve("known.example", "MX")

    response = excinfo.value.kwargs["response"]
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA


async def test_cname_followed(server: DnsServer, resolver: dns.asyncresolver.Resolver):
    server.add("alias.example", "CNAME", "target.example.net.")
    server.add("target.example.net", "A", "127.0.0.4")

    answer = await resolver.resolve("alias.example", "A")

    assert answer.canonical_name.to_text() == "target.example.net."
    assert [r.address for r in answer] == ["127.0.0.4"]
    answer_types = [rrset.rdtype for rrset in answer.response.answer]
    assert answer_types == [dns.rdatatype.CNAME, dns.rdatatype.A]


async def test_cname_to_unknown_nxdomain(server: DnsServer, resolver: dns.asyncresolver.Resolver):
    server.add("dangling.example", "CNAME", "gone.example.")

    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("dangling.example", "A")


async def test_cname_loop_servfail(server: DnsServer):
    server.add("loop1.example", "CNAME", "loop2.example.")
    server.add("loop2.example", "CNAME", "loop1.example.")

    query = dns.message.make_query("loop1.example", "A")
    response = await dns.asyncquery.udp(query, server.host, port=server.port, timeout=2)

    assert response.rcode() == dns.rcode.SERVFAIL


async def test_query_over_tcp(server: DnsServer, resolver: dns.asyncresolver.Resolver):
    server.add("sel._domainkey.example.net", "TXT", LONG_TXT)

    answer = await resolver.resolve("sel._domainkey.example.net", "TXT", tcp=True)

    assert b"".join(next(iter(answer)).strings).decode() == LONG_TXT


async def test_tcp_connection_serves_several_queries(server: DnsServer):
    server.add("one.example", "A", "127.0.0.2")
    server.add("two.example", "A", "127.0.0.3")

    backend = dns.asyncbackend.get_default_backend()
    sock = await backend.make_socket(
        socket.AF_INET, socket.SOCK_STREAM, 0, None, (server.host, server.port), timeout=2
    )
    async with sock:
        first = await dns.asyncquery.tcp(dns.message.make_query("one.example", "A"), server.host, sock=sock, timeout=2)
        second = await dns.asyncquery.tcp(dns.message.make_query("two.example", "A"), server.host, sock=sock, timeout=2)

    assert first.answer[0][0].address == "127.0.0.2"
    assert second.answer[0][0].address == "127.0.0.3"


async def test_udp_without_edns_truncated(server: DnsServer):
    server.add("big.example", "TXT", "x" * 600)

    query = dns.message.make_query("big.example", "TXT", use_edns=False)
    response = await dns.asyncquery.udp(query, server.host, port=server.port, timeout=2, ignore_trailing=True)

    assert response.flags & dns.flags.TC
    assert response.answer == []


async def test_udp_with_large_edns_not_truncated(server: DnsServer):
    server.add("big.example", "TXT", "x" * 600)

    query = dns.message.make_query("big.example", "TXT", use_edns=0, payload=1232)
    response = await dns.asyncquery.udp(query, server.host, port=server.port, timeout=2)

    assert not response.flags & dns.flags.TC
    assert b"".join(response.answer[0][0].strings) == b"x" * 600


async def test_resolver_retries_truncated_over_tcp(server: DnsServer, resolver: dns.asyncresolver.Resolver):
    server.add("big.example", "TXT", "x" * 600)
    resolver.use_edns(False)

    answer = await resolver.resolve("big.example", "TXT")

    assert b"".join(next(iter(answer)).strings) == b"x" * 600


async def test_add_and_remove_while_running(server: DnsServer, resolver: dns.asyncresolver.Resolver):
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("late.example", "A")

    server.add("late.example", "A", "127.0.0.5")
    answer = await resolver.resolve("late.example", "A")
    assert [r.address for r in answer] == ["127.0.0.5"]

    server.add("late.example", "MX", "10 mx.example.net.")
    server.remove("late.example", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        await resolver.resolve("late.example", "A")

    server.remove("late.example")
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("late.example", "MX")


def test_add_rejects_invalid_value(server: DnsServer):
    with pytest.raises(dns.exception.SyntaxError):
        server.add("bad.example", "A", "not-an-address")


def test_stop_twice_is_harmless():
    dns_server = DnsServer()
    dns_server.start()
    dns_server.stop()
    dns_server.stop()
