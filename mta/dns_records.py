"""The DNS records a local domain publishes so that its mail is delivered and trusted.

MX, SPF (RFC 7208), DKIM (RFC 6376), DMARC (RFC 7489), MTA-STS (RFC 8461)
and TLS-RPT (RFC 8460), built from the configuration and the DKIM keys in the database.
``mta dns records`` prints them and ``mta dns check`` compares them with
the nameservers' answers.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT

from mta.config import Config, DnsConfig
from mta.delivery.mta_sts import POLICY_PATH, Policy
from mta.dkim_keys import PublicKey

# RFC 1035 section 3.3.14: one character-string of a TXT record contains at most 255 octets.
TXT_STRING_MAX = 255
# Preference of the first MX host. Each further host gets 10 more.
MX_PREFERENCE_STEP = 10
# RFC 8461 section 3.1: the id is 1 to 32 letters and digits.
POLICY_ID_LENGTH = 32


@dataclass(frozen=True)
class Record:
    """One RRset to publish."""

    # MX, SPF, DKIM, DMARC, MTA-STS or TLS-RPT.
    kind: str
    # Absolute owner name, with the trailing dot.
    name: str
    # "MX" or "TXT".
    rdtype: str
    # MX data such as "10 host.example.com.", or the one TXT text before it is split into strings.
    values: tuple[str, ...]


@dataclass(frozen=True)
class DomainRecords:
    domain: str
    ttl: int
    records: tuple[Record, ...]
    mta_sts_policy: Policy

    @property
    def policy_url(self) -> str:
        return f"https://mta-sts.{self.domain}{POLICY_PATH}"

    @property
    def policy_text(self) -> str:
        return policy_text(self.mta_sts_policy)


def build(config: Config, domain: str, dkim_keys: list[PublicKey]) -> DomainRecords:
    """Build every record of a local domain from the configuration and its published DKIM keys."""
    domain = domain.lower().rstrip(".")
    hosts = mx_hosts(config)
    policy = Policy(mode=config.dns.mta_sts_mode, mx=tuple(hosts), max_age=config.dns.mta_sts_max_age)

    records = [
        Record("MX", absolute(domain), "MX", mx_values(hosts)),
        Record("SPF", absolute(domain), "TXT", (spf_text(config),)),
    ]
    for key in dkim_keys:
        records.append(Record("DKIM", absolute(f"{key.selector}._domainkey.{domain}"), "TXT", (key.txt_value(),)))
    records += [
        Record("DMARC", absolute(f"_dmarc.{domain}"), "TXT", (dmarc_text(config.dns, domain),)),
        Record("MTA-STS", absolute(f"_mta-sts.{domain}"), "TXT", (f"v=STSv1; id={policy_id(policy)}",)),
        Record("TLS-RPT", absolute(f"_smtp._tls.{domain}"), "TXT", (tlsrpt_text(config.dns, domain),)),
    ]
    return DomainRecords(domain, config.dns.ttl, tuple(records), policy)


def absolute(name: str) -> str:
    """Return name as an absolute DNS name in ASCII, with the trailing dot."""
    return dns.name.from_text(name, origin=dns.name.root).to_text()


def mx_hosts(config: Config) -> list[str]:
    """Return the public MX host names, lower case and without the trailing dot."""
    names = config.dns.mx or [config.server.hostname]
    return [name.lower().rstrip(".") for name in names]


def mx_values(hosts: list[str]) -> tuple[str, ...]:
    return tuple(f"{MX_PREFERENCE_STEP * (index + 1)} {absolute(host)}" for index, host in enumerate(hosts))


def source_addresses(config: Config) -> list[str]:
    """Return the addresses outbound mail leaves from, as configured, without repeats."""
    addresses = list(config.delivery.source.addresses) or config.delivery.source_addresses
    return list(dict.fromkeys(addresses))


def spf_text(config: Config) -> str:
    """Return the SPF record: the source addresses, or without them this host's name (a:), then -all."""
    addresses = source_addresses(config)
    if addresses:
        mechanisms = [f"ip{ipaddress.ip_address(address).version}:{address}" for address in addresses]
    else:
        # Without bound source addresses the kernel picks the source address,
        # so the record allows the A and AAAA addresses of this host's name.
        mechanisms = [f"a:{config.server.hostname.rstrip('.')}"]
    return " ".join(["v=spf1", *mechanisms, "-all"])


def dmarc_text(settings: DnsConfig, domain: str) -> str:
    rua = settings.dmarc_rua or f"postmaster@{domain}"
    return f"v=DMARC1; p={settings.dmarc_policy}; rua=mailto:{rua}"


def tlsrpt_text(settings: DnsConfig, domain: str) -> str:
    rua = settings.tlsrpt_rua or f"tls-reports@{domain}"
    return f"v=TLSRPTv1; rua=mailto:{rua}"


def policy_text(policy: Policy) -> str:
    """Return the policy file served at https://mta-sts.DOMAIN/.well-known/mta-sts.txt."""
    return "".join(f"{line}\n" for line in policy.lines())


def policy_id(policy: Policy) -> str:
    """Return an id derived from the policy file, so that it changes whenever the policy does.

    Senders fetch the policy again only when the id in the TXT record changes
    (RFC 8461 section 3.1).
    """
    return hashlib.sha256(policy_text(policy).encode("utf-8")).hexdigest()[:POLICY_ID_LENGTH]


def txt_strings(text: str) -> list[bytes]:
    """Split a TXT value into the character-strings of one record, each at most 255 octets."""
    raw = text.encode("utf-8")
    return [raw[start:start + TXT_STRING_MAX] for start in range(0, len(raw), TXT_STRING_MAX)] or [b""]


def zone_lines(records: DomainRecords) -> list[str]:
    """Return one zone-file line per record: owner, TTL, class, type and data."""
    width = max(len(record.name) for record in records.records)
    lines = []
    for record in records.records:
        for value in record.values:
            data = value if record.rdtype != "TXT" else txt_data(value)
            lines.append(f"{record.name:<{width}} {records.ttl} IN {record.rdtype:<3} {data}")
    return lines


def txt_data(text: str) -> str:
    """Return TXT data as quoted character-strings, with quotes and backslashes escaped."""
    rdata = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, txt_strings(text))
    return rdata.to_text()
