"""Compare the records a local domain should publish with the configured nameservers' answers.

Only ``[delivery] nameservers`` are queried, never the system resolver. The
comparison is loose where receivers are: a DKIM record matches by its p=
key, a DMARC record by its p= policy, an SPF record when it allows every
source address, MX as a set of host names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

import dns.exception
import dns.resolver

from mta.delivery.mta_sts import parse_txt
from mta.delivery.tlsrpt_send import parse_tlsrpt
from mta.dns_records import DomainRecords, Record
from mta.inbound.dmarc import parse_tags

OK = "OK"
MISSING = "MISSING"
DIFFERENT = "DIFFERENT"


class NameserverError(Exception):
    """A DNS query that timed out or got an error response such as SERVFAIL."""


@dataclass(frozen=True)
class Finding:
    record: Record
    status: str
    # The published values of the record's kind: MX data, or the TXT texts that compete with it.
    found: tuple[str, ...]
    # Why the record is DIFFERENT, empty for the other statuses.
    reason: str = ""


def make_resolver(nameservers: list[str], port: int, timeout: float) -> dns.resolver.Resolver:
    """Return a resolver that queries only these nameservers and gives up after timeout seconds per query."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = list(nameservers)
    resolver.port = port
    resolver.timeout = timeout
    resolver.lifetime = timeout
    return resolver


def check(expected: DomainRecords, resolver: dns.resolver.Resolver) -> list[Finding]:
    """Look up every expected record and compare it with the answer.

    Raises NameserverError at the first query that fails, because the
    records after it would most likely fail the same way.
    """
    findings = []
    for record in expected.records:
        published = lookup(resolver, record.name, record.rdtype)
        compare = _COMPARISONS[record.kind]
        findings.append(compare(record, published))
    return findings


def lookup(resolver: dns.resolver.Resolver, name: str, rdtype: str) -> list[str]:
    """Return the MX data or TXT texts at name, or an empty list for NXDOMAIN or no data."""
    try:
        answer = resolver.resolve(name, rdtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.Timeout:
        raise NameserverError(
            f"DNS query for {name} {rdtype} timed out after {resolver.lifetime:g} s: no answer from "
            f"{', '.join(resolver.nameservers)} port {resolver.port} ([delivery] nameservers and dns_port)"
        ) from None
    except dns.exception.DNSException as error:
        raise NameserverError(f"DNS query for {name} {rdtype} failed: {error}") from None

    if rdtype == "TXT":
        return [b"".join(rdata.strings).decode("utf-8", errors="replace") for rdata in answer]
    return [rdata.to_text() for rdata in answer]


def compare_mx(record: Record, published: list[str]) -> Finding:
    if not published:
        return Finding(record, MISSING, ())

    expected_hosts = {_host(value) for value in record.values}
    found_hosts = {_host(value) for value in published}
    if expected_hosts == found_hosts:
        return Finding(record, OK, tuple(published))

    reasons = []
    if expected_hosts - found_hosts:
        reasons.append(f"missing host {', '.join(sorted(expected_hosts - found_hosts))}")
    if found_hosts - expected_hosts:
        reasons.append(f"unexpected host {', '.join(sorted(found_hosts - expected_hosts))}")
    return Finding(record, DIFFERENT, tuple(published), "; ".join(reasons))


def compare_spf(record: Record, published: list[str]) -> Finding:
    found = [text for text in published if text.lower().split()[:1] == ["v=spf1"]]
    if not found:
        return Finding(record, MISSING, ())
    if len(found) > 1:
        return Finding(record, DIFFERENT, tuple(found),
                       f"{len(found)} SPF records, which receivers treat as a permanent error (RFC 7208 section 4.5)")

    terms = [term.lower() for term in found[0].split()[1:]]
    for mechanism in record.values[0].split()[1:-1]:
        if not _spf_allows(terms, mechanism):
            return Finding(record, DIFFERENT, tuple(found),
                           f"{mechanism} is not allowed (include:, redirect= and mx are not followed)")
    # +all passes mail from any host, so forged mail would pass DMARC too.
    if "all" in terms or "+all" in terms:
        return Finding(record, DIFFERENT, tuple(found), "+all lets any host send for the domain")
    return Finding(record, OK, tuple(found))


def compare_dkim(record: Record, published: list[str]) -> Finding:
    if not published:
        return Finding(record, MISSING, ())

    expected_key = parse_tags(record.values[0])["p"]
    for text in published:
        if "".join(parse_tags(text).get("p", "").split()) == expected_key:
            return Finding(record, OK, tuple(published))
    return Finding(record, DIFFERENT, tuple(published), "p= is not this domain's public key")


def compare_dmarc(record: Record, published: list[str]) -> Finding:
    found = [text for text in published if _version(text) == "v=dmarc1"]
    if not found:
        return Finding(record, MISSING, ())
    if len(found) > 1:
        return Finding(record, DIFFERENT, tuple(found),
                       f"{len(found)} DMARC records, so receivers apply none (RFC 7489 section 6.6.3)")

    expected_policy = parse_tags(record.values[0])["p"]
    found_policy = parse_tags(found[0]).get("p", "").lower()
    if found_policy == expected_policy:
        return Finding(record, OK, tuple(found))
    return Finding(record, DIFFERENT, tuple(found), f"p={found_policy or '(none)'}, expected p={expected_policy}")


def compare_mta_sts(record: Record, published: list[str]) -> Finding:
    found = [text for text in published if _version(text) == "v=stsv1"]
    if not found:
        return Finding(record, MISSING, ())

    expected_id = parse_tags(record.values[0])["id"]
    found_id = parse_txt(found)
    if found_id == expected_id:
        return Finding(record, OK, tuple(found))
    if found_id is None:
        return Finding(record, DIFFERENT, tuple(found), "no valid STSv1 record with an id (RFC 8461 section 3.1)")
    return Finding(record, DIFFERENT, tuple(found),
                   f"id={found_id} is not the id of the current policy file: publish the file from "
                   "mta dns records --policy-file, then this id")


def compare_tlsrpt(record: Record, published: list[str]) -> Finding:
    found = [text for text in published if _version(text) == "v=tlsrptv1"]
    if not found:
        return Finding(record, MISSING, ())

    expected_uri = parse_tags(record.values[0])["rua"].lower()
    uris = parse_tlsrpt(found)
    if uris is None:
        return Finding(record, DIFFERENT, tuple(found), "no valid TLSRPTv1 record with a rua= (RFC 8460 section 3)")
    if expected_uri not in [uri.lower() for uri in uris]:
        return Finding(record, DIFFERENT, tuple(found), f"rua= does not list {expected_uri}")
    return Finding(record, OK, tuple(found))


_COMPARISONS: dict[str, Callable[[Record, list[str]], Finding]] = {
    "MX": compare_mx,
    "SPF": compare_spf,
    "DKIM": compare_dkim,
    "DMARC": compare_dmarc,
    "MTA-STS": compare_mta_sts,
    "TLS-RPT": compare_tlsrpt,
}


def _host(mx_data: str) -> str:
    return mx_data.split()[-1].lower().rstrip(".")


def _version(text: str) -> str:
    """Return the first tag of a DMARC, STS or TLSRPT record without spaces, in lower case, such as v=dmarc1."""
    return text.split(";")[0].replace(" ", "").lower()


def _spf_allows(terms: list[str], mechanism: str) -> bool:
    """Return whether the published terms pass mail that the expected mechanism allows."""
    # NOTE: include:, redirect= and mx are not followed, so a record that allows
    # the source only through them is reported DIFFERENT.
    if mechanism.startswith(("ip4:", "ip6:")):
        address = ipaddress.ip_address(mechanism[4:])
        return any(address in network for network in _spf_networks(terms))
    name = mechanism.lower().rstrip(".")
    return any(term.lstrip("+").rstrip(".") == name for term in terms)


def _spf_networks(terms: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for term in terms:
        term = term.removeprefix("+")
        if not term.startswith(("ip4:", "ip6:")):
            continue
        try:
            networks.append(ipaddress.ip_network(term[4:], strict=False))
        except ValueError:
            continue
    return networks
