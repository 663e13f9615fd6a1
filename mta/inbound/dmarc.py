"""DMARC (RFC 7489): the author domain's policy, and whether SPF or DKIM passed for it.

A message passes when SPF passed for a domain aligned with the From domain,
or a DKIM signature passed with an aligned d= domain. Relaxed alignment
(the default) compares organisational domains, found with the public
suffix list that the publicsuffixlist package ships; strict alignment
compares whole domains.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver
from publicsuffixlist import PublicSuffixList

from mta.inbound.dkim_verify import DkimResult
from mta.inbound.spf import SpfResult

_suffixes = PublicSuffixList()
_POLICIES = ("none", "quarantine", "reject")


@dataclass(frozen=True)
class DmarcResult:
    result: str        # pass, fail, none, temperror, permerror
    domain: str        # the From domain
    policy: str        # the disposition for a failing message after pct: none, quarantine, reject
    published: str     # the p= (or sp=) value as published, for the header comment


class DmarcRecordError(ValueError):
    """A DMARC record without a valid p= tag."""


def organisational_domain(domain: str) -> str:
    """Return the registered domain under its public suffix, or the domain itself when it is a suffix."""
    domain = domain.lower().rstrip(".")
    return _suffixes.privatesuffix(domain) or domain


def is_public_suffix(domain: str) -> bool:
    """Return whether domain is a public suffix (such as com or co.uk), under which anyone may register."""
    return _suffixes.privatesuffix(domain.lower().rstrip(".")) is None


def aligned(domain: str, author_domain: str, mode: str) -> bool:
    domain, author_domain = domain.lower().rstrip("."), author_domain.lower().rstrip(".")
    if mode == "s":
        return domain == author_domain
    return organisational_domain(domain) == organisational_domain(author_domain)


def parse_tags(text: str) -> dict[str, str]:
    """Parse a DKIM or DMARC tag list such as "v=DMARC1; p=reject" into lower-case names and stripped values."""
    tags = {}
    for part in text.split(";"):
        name, separator, value = part.partition("=")
        if separator:
            tags[name.strip().lower()] = value.strip()
    return tags


def parse_record(text: str) -> dict[str, str]:
    """Return the tags of a DMARC record, or raise DmarcRecordError."""
    tags = parse_tags(text)
    if tags.get("v") != "DMARC1":
        raise DmarcRecordError("record does not start with v=DMARC1")
    if tags.get("p", "").lower() not in _POLICIES:
        raise DmarcRecordError(f"invalid p= tag: {tags.get('p', '')!r}")
    return tags


async def _record(resolver: dns.asyncresolver.Resolver, domain: str) -> str | None:
    """Return the DMARC record published for domain, or None; DNS failures raise."""
    try:
        answer = await resolver.resolve(f"_dmarc.{domain}", "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    records = [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]
    records = [record for record in records if record.replace(" ", "").startswith("v=DMARC1")]
    # RFC 7489 section 6.6.3: anything but exactly one record counts as none.
    return records[0] if len(records) == 1 else None


async def evaluate(author_domain: str, spf: SpfResult | None, signatures: list[DkimResult],
                   resolver: dns.asyncresolver.Resolver) -> DmarcResult:
    """Evaluate the DMARC policy of the From domain against the SPF and DKIM results."""
    author_domain = author_domain.lower().rstrip(".")
    if not author_domain:
        return DmarcResult("none", "", "none", "")

    organisation = organisational_domain(author_domain)
    try:
        text = await _record(resolver, author_domain)
        inherited = text is None and organisation != author_domain
        if inherited:
            text = await _record(resolver, organisation)
    except dns.exception.DNSException:
        return DmarcResult("temperror", author_domain, "none", "")
    if text is None:
        return DmarcResult("none", author_domain, "none", "")

    try:
        tags = parse_record(text)
    except DmarcRecordError:
        return DmarcResult("permerror", author_domain, "none", "")

    published = tags.get("sp", tags["p"]).lower() if inherited else tags["p"].lower()
    if published not in _POLICIES:
        published = tags["p"].lower()
    if _passes(author_domain, spf, signatures, tags):
        return DmarcResult("pass", author_domain, "none", published)
    if (spf is not None and spf.result == "temperror") or any(s.result == "temperror" for s in signatures):
        # A check that could not finish may have passed: never a permanent failure for that.
        return DmarcResult("temperror", author_domain, "none", published)
    return DmarcResult("fail", author_domain, _sampled(published, tags.get("pct", "100")), published)


def _passes(author_domain: str, spf: SpfResult | None, signatures: list[DkimResult], tags: dict[str, str]) -> bool:
    spf_mode, dkim_mode = tags.get("aspf", "r").lower(), tags.get("adkim", "r").lower()
    if spf is not None and spf.result == "pass" and aligned(spf.domain, author_domain, spf_mode):
        return True
    return any(signature.result == "pass" and aligned(signature.domain, author_domain, dkim_mode)
               for signature in signatures)


def _sampled(policy: str, pct: str) -> str:
    """Apply pct=: a failing message outside the sample gets the next milder policy (RFC 7489 section 6.6.4)."""
    try:
        percent = min(100, max(0, int(pct)))
    except ValueError:
        percent = 100
    if percent == 100 or random.uniform(0, 100) < percent:
        return policy
    return {"reject": "quarantine", "quarantine": "none"}.get(policy, policy)
