"""SPF (RFC 7208) with pyspf, its DNS queries sent only to the configured nameservers.

pyspf looks names up synchronously through a module-level function that
would ask the system resolver. That function is replaced at import with one
that refuses to run until ``configure`` names the nameservers, so no query
ever leaves for a resolver the operator did not choose. Each check runs in
a worker thread, because pyspf blocks while it waits for DNS.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import dns.exception
import dns.resolver
import spf

from mta.inbound import executor

# RFC 7208 section 4.6.4 caps the lookups, and pyspf enforces that; this
# caps the time a whole check may take.
CHECK_TIMEOUT = 20.0

_resolver: dns.resolver.Resolver | None = None


@dataclass(frozen=True)
class SpfResult:
    result: str          # pass, fail, softfail, neutral, none, temperror, permerror
    domain: str          # the domain whose policy was checked
    identity: str        # "mailfrom", or "helo" for the null sender
    explanation: str


def configure(nameservers: list[str], port: int, timeout: float = 5.0) -> None:
    """Point pyspf's lookups at these nameservers."""
    global _resolver
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = list(nameservers)
    resolver.port = port
    resolver.lifetime = timeout
    resolver.cache = dns.resolver.LRUCache(10_000)
    _resolver = resolver


def _lookup(name: str, qtype: str, tcpfallback: bool = True, timeout: float = 30) -> list:
    """Resolve a pyspf query, returning records in the shape of pyspf's own dnspython lookup."""
    if _resolver is None:
        raise spf.TempError("DNS: SPF nameservers not configured")
    try:
        answers = _resolver.resolve(name, qtype, lifetime=min(timeout, _resolver.lifetime))
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as error:
        raise spf.TempError(f"DNS {error}") from error
    except dns.exception.DNSException as error:
        raise spf.PermError(f"DNS {error}") from error

    records = []
    for rdata in answers:
        if qtype in ("A", "AAAA"):
            records.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            records.append(((name, qtype), (rdata.preference, rdata.exchange)))
        elif qtype == "PTR":
            records.append(((name, qtype), rdata.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            records.append(((name, qtype), rdata.strings))
    return records


spf.DNSLookup = _lookup


def _check(address: str, sender: str, helo: str) -> SpfResult:
    # RFC 7208 section 2.4: the null sender is checked as postmaster at the HELO name.
    identity = "mailfrom" if sender else "helo"
    domain = sender.rpartition("@")[2] if sender else helo
    result, explanation = spf.check2(i=address, s=sender or f"postmaster@{helo}", h=helo,
                                     querytime=CHECK_TIMEOUT)
    return SpfResult(result=result, domain=domain.lower(), identity=identity, explanation=explanation)


async def check(address: str, sender: str, helo: str) -> SpfResult:
    """Evaluate the SPF policy of the sender's domain (or the HELO name) for the client address."""
    domain = sender.rpartition("@")[2].lower() if sender else helo.lower()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT + 5):
            return await executor.run(_check, address, sender, helo)
    except TimeoutError:
        # Waiting for a free thread took too long; the thread itself stops at pyspf's own limit.
        return SpfResult("temperror", domain, "mailfrom" if sender else "helo", "SPF check timed out")
