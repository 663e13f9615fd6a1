"""MTA-STS (RFC 8461): a destination's published demand for verified TLS to listed MX hosts.

For each destination domain the ``_mta-sts`` TXT record is looked up. When
it names a policy id that is not the one cached, the policy is fetched from
``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` over verified TLS,
without redirects, and stored in PostgreSQL for its ``max_age``, shared by
all nodes. Without a TXT record a cached policy that has not expired still
applies (section 5.1). The name of the policy host is resolved with the
configured nameservers, never the system resolver.

- ``enforce``: only MX hosts matching the policy's ``mx`` patterns are
  tried, each with a certificate verified for its name. Mail that cannot
  go that way is deferred, never sent to another host or in clear.
- ``testing``: delivery goes on as without a policy, and each host that
  would have failed is logged.
- ``none``, or no policy: nothing changes.
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from dataclasses import dataclass

import aiohttp
import asyncpg
import dns.asyncresolver
import dns.exception
import dns.resolver

log = logging.getLogger("mta.delivery")

POLICY_PATH = "/.well-known/mta-sts.txt"
# Section 3.3: a policy is at most 64 KiB; max_age at most 31557600 s.
MAX_POLICY_OCTETS = 64 * 1024
MAX_AGE_LIMIT = 31_557_600
FETCH_TIMEOUT = 30.0
# Domains whose recent result a node keeps in memory; past it, expired and then the oldest are dropped.
MAX_RECENT = 10_000
# Seconds a node keeps a domain's policy (or its absence) before it checks the TXT record again.
CHECK_INTERVAL = 300.0
_POLICY_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")

_LOAD = "SELECT policy_id, mode, mx, max_age, expires_at > now() AS fresh FROM mta_sts_policy WHERE domain = $1"
_STORE = """
INSERT INTO mta_sts_policy (domain, policy_id, mode, mx, max_age, expires_at)
VALUES ($1, $2, $3, $4, $5::integer, now() + make_interval(secs => $5::integer))
ON CONFLICT (domain) DO UPDATE SET policy_id = EXCLUDED.policy_id, mode = EXCLUDED.mode, mx = EXCLUDED.mx,
    max_age = EXCLUDED.max_age, fetched_at = now(), expires_at = EXCLUDED.expires_at
"""


class PolicyError(ValueError):
    """A policy that cannot be fetched or read; the domain is then treated as having none."""


@dataclass(frozen=True)
class Policy:
    mode: str
    mx: tuple[str, ...]
    max_age: int
    policy_id: str = ""

    def lines(self) -> tuple[str, ...]:
        """Return the policy as the lines of its file, as TLS reports quote it (RFC 8460 section 4.4)."""
        return ("version: STSv1", f"mode: {self.mode}", *(f"mx: {pattern}" for pattern in self.mx),
                f"max_age: {self.max_age}")

    def allows(self, host: str) -> bool:
        """Return whether an MX host name matches one of the policy's patterns (section 4.1)."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            pattern = pattern.lower().rstrip(".")
            if pattern.startswith("*."):
                head, _, rest = host.partition(".")
                if head and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def parse_policy(text: str) -> Policy:
    """Read a policy file (section 3.2), or raise PolicyError."""
    fields: dict[str, list[str]] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        name, separator, value = line.partition(":")
        if not separator:
            raise PolicyError(f"invalid policy line: {line[:80]!r}")
        fields.setdefault(name.strip().lower(), []).append(value.strip())

    if fields.get("version") != ["STSv1"]:
        raise PolicyError(f"invalid version: {fields.get('version')}")
    mode = (fields.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"invalid mode: {mode!r}")
    max_age = (fields.get("max_age") or [""])[0]
    if not max_age.isdigit() or int(max_age) > MAX_AGE_LIMIT:
        raise PolicyError(f"invalid max_age: {max_age!r}")
    mx = tuple(fields.get("mx", []))
    if mode != "none" and not mx:
        raise PolicyError("no mx patterns in a policy that is not mode none")
    return Policy(mode, mx, int(max_age))


def parse_txt(records: list[str]) -> str | None:
    """Return the policy id of the one STSv1 TXT record, or None (section 3.1)."""
    found = [record for record in records if record.replace(" ", "").startswith("v=STSv1;")]
    if len(found) != 1:
        return None
    for part in found[0].split(";"):
        name, _, value = part.strip().partition("=")
        if name == "id" and _POLICY_ID.match(value):
            return value
    return None


class MtaSts:
    def __init__(self, pool: asyncpg.Pool, resolver: dns.asyncresolver.Resolver, ca_file: str, port: int = 443):
        self.pool = pool
        self.resolver = resolver
        self.port = port
        self.context = ssl.create_default_context(cafile=ca_file or None)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        # Domain -> (time.monotonic() until which the result holds, policy or None).
        self._recent: dict[str, tuple[float, Policy | None]] = {}

    async def policy(self, domain: str) -> Policy | None:
        """Return the policy that applies to a destination domain now, or None.

        The result is kept in memory for CHECK_INTERVAL seconds, so busy
        destinations cost no lookup per message.
        """
        domain = domain.lower().rstrip(".")
        known = self._recent.get(domain)
        if known is not None and known[0] > time.monotonic():
            return known[1]
        policy = await self._current(domain)
        if len(self._recent) >= MAX_RECENT:
            self._forget_expired()
        self._recent[domain] = (time.monotonic() + CHECK_INTERVAL, policy)
        return policy

    def _forget_expired(self) -> None:
        """Drop results past their interval, and the oldest half when that is not enough."""
        now = time.monotonic()
        self._recent = {domain: entry for domain, entry in self._recent.items() if entry[0] > now}
        if len(self._recent) >= MAX_RECENT:
            # Entries were added in time order, so the first half is the oldest.
            self._recent = dict(list(self._recent.items())[MAX_RECENT // 2:])

    async def _current(self, domain: str) -> Policy | None:
        cached = await self.pool.fetchrow(_LOAD, domain)
        try:
            policy_id = parse_txt(await self._txt(f"_mta-sts.{domain}"))
        except dns.exception.DNSException as error:
            log.info("MTA-STS TXT lookup for %s failed, using any cached policy: %r", domain, error)
            policy_id = None
        if policy_id is None or (cached is not None and cached["policy_id"] == policy_id and cached["fresh"]):
            return _from_row(cached) if cached is not None and cached["fresh"] else None

        try:
            policy = await self._fetch(domain)
        except (PolicyError, aiohttp.ClientError, OSError, TimeoutError, dns.exception.DNSException) as error:
            # Section 5.1: a failed fetch keeps a cached policy that has not expired.
            log.warning("MTA-STS policy of %s could not be fetched: %s", domain, error)
            return _from_row(cached) if cached is not None and cached["fresh"] else None

        await self.pool.execute(_STORE, domain, policy_id, policy.mode, list(policy.mx), policy.max_age)
        log.info("MTA-STS policy of %s fetched: id %s, mode %s, mx %s, max_age %d", domain, policy_id,
                 policy.mode, ",".join(policy.mx), policy.max_age)
        return Policy(policy.mode, policy.mx, policy.max_age, policy_id)

    async def _txt(self, name: str) -> list[str]:
        try:
            answer = await self.resolver.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]

    async def _fetch(self, domain: str) -> Policy:
        host = f"mta-sts.{domain}"
        address = await self._policy_host_address(host)
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"https://{address}:{self.port}{POLICY_PATH}", headers={"Host": host},
                                   server_hostname=host, ssl=self.context, allow_redirects=False) as response:
                if response.status != 200:
                    raise PolicyError(f"HTTP status {response.status} from {host}")
                if response.content_type != "text/plain":
                    raise PolicyError(f"content type {response.content_type!r} from {host}, expected text/plain")
                body = await response.content.read(MAX_POLICY_OCTETS + 1)
        if len(body) > MAX_POLICY_OCTETS:
            raise PolicyError(f"policy of {host} is over {MAX_POLICY_OCTETS} octets")
        return parse_policy(body.decode("utf-8", "replace"))

    async def _policy_host_address(self, host: str) -> str:
        """Return the policy host's IPv4 address, else its IPv6 one in URL brackets."""
        try:
            answer = await self.resolver.resolve(host, "A")
            return answer[0].address
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            answer = await self.resolver.resolve(host, "AAAA")
            return f"[{answer[0].address}]"


def _from_row(row: asyncpg.Record) -> Policy:
    return Policy(row["mode"], tuple(row["mx"]), row["max_age"], row["policy_id"])
