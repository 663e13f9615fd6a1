"""Where mail for a domain goes: a static route, or its MX hosts from DNS.

Resolution follows RFC 5321 section 5.1: MX records in preference order with
a random choice among equal preferences; a domain without MX records is its
own implicit MX; a null MX (RFC 7505: one record, preference 0, target ".")
means the domain accepts no mail and fails at once. Temporary DNS failures
defer, a domain that does not exist fails.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.resolver

from mta.delivery.outcome import Reply


@dataclass(frozen=True)
class Target:
    host: str
    address: str
    port: int
    # Whether DNSSEC vouched for the MX answer and this host's address (RFC 7672 section 2.2).
    secure: bool = False


class ResolveError(Exception):
    def __init__(self, reply: Reply):
        super().__init__(str(reply))
        self.reply = reply


class Resolver:
    def __init__(self, nameservers: list[str], dns_port: int, routes: dict[str, tuple[str, int]],
                 smtp_port: int = 25, timeout: float = 10.0, dnssec: bool = False):
        self.routes = {domain.lower().rstrip("."): target for domain, target in routes.items()}
        self.smtp_port = smtp_port
        self._dns = dns.asyncresolver.Resolver(configure=False)
        self._dns.nameservers = list(nameservers)
        self._dns.port = dns_port
        self._dns.lifetime = timeout
        # Responses are cached for their TTL, so a busy site costs one lookup.
        self._dns.cache = dns.resolver.LRUCache(10_000)
        if dnssec:
            # The DO bit asks the validating resolver to report validation with the AD flag.
            self._dns.use_edns(0, dns.flags.DO, 1232)

    @property
    def dns(self) -> dns.asyncresolver.Resolver:
        """The resolver with the configured nameservers, for other lookups of delivery."""
        return self._dns

    def route_for(self, domain: str) -> tuple[str, int] | None:
        return self.routes.get(domain)

    async def targets(self, domain: str) -> list[Target]:
        """Return the addresses to try in order, or raise ResolveError."""
        route = self.route_for(domain)
        if route is not None:
            host, port = route
            addresses, _ = await self._addresses(host)
            return [Target(host, address, port) for address in addresses]

        hosts, mx_secure = await self._mx_hosts(domain)
        targets = []
        for host in hosts:
            try:
                addresses, secure = await self._addresses(host)
            except ResolveError:
                continue
            targets.extend(Target(host, address, self.smtp_port, mx_secure and secure) for address in addresses)

        if not targets:
            raise ResolveError(Reply(451, f"4.4.4 no address found for the mail exchangers of {domain}"))
        return targets

    async def _mx_hosts(self, domain: str) -> tuple[list[str], bool]:
        """Return the MX hosts in the order to try, and whether DNSSEC vouched for them."""
        try:
            answer = await self._dns.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            raise ResolveError(Reply(550, f"5.1.2 domain {domain} does not exist")) from None
        except dns.resolver.NoAnswer as error:
            response = error.kwargs.get("response")
            return [domain], response is not None and bool(response.flags & dns.flags.AD)
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.YXDOMAIN) as error:
            raise ResolveError(Reply(451, f"4.4.3 DNS lookup of MX for {domain} failed: {_brief(error)}")) from None

        records = list(answer)
        if len(records) == 1 and records[0].preference == 0 and records[0].exchange.to_text() == ".":
            raise ResolveError(Reply(556, f"5.1.10 domain {domain} accepts no mail (null MX)"))

        by_preference: dict[int, list[str]] = {}
        for record in records:
            by_preference.setdefault(record.preference, []).append(record.exchange.to_text().rstrip("."))

        ordered = []
        for preference in sorted(by_preference):
            hosts = by_preference[preference]
            random.shuffle(hosts)
            ordered.extend(hosts)
        return ordered, bool(answer.response.flags & dns.flags.AD)

    async def _addresses(self, host: str) -> tuple[list[str], bool]:
        """Return the host's addresses, IPv6 first, and whether DNSSEC vouched for every answer."""
        try:
            ipaddress.ip_address(host)
            return [host], False
        except ValueError:
            pass

        addresses = []
        secure = True
        for record_type in ("AAAA", "A"):
            try:
                answer = await self._dns.resolve(host, record_type)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except (dns.exception.Timeout, dns.resolver.NoNameservers) as error:
                raise ResolveError(Reply(451, f"4.4.3 DNS lookup of {host} failed: {_brief(error)}")) from None
            addresses.extend(record.to_text() for record in answer)
            secure = secure and bool(answer.response.flags & dns.flags.AD)

        if not addresses:
            raise ResolveError(Reply(451, f"4.4.4 host {host} has no address"))
        return addresses, secure


def _brief(error: Exception) -> str:
    """Name a DNS failure in a few words; dnspython's own text repeats every server's error."""
    if isinstance(error, dns.exception.Timeout):
        return "timed out"
    if isinstance(error, dns.resolver.NoNameservers):
        return "no nameserver gave a usable answer"
    return type(error).__name__
