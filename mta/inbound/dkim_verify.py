"""DKIM verification (RFC 6376) with dkimpy, its key records fetched asynchronously first.

dkimpy fetches a key through a synchronous callback. The records of every
signature are looked up beforehand with the asynchronous resolver, so the
callback only reads a dictionary. Verification, which hashes the body,
runs in the inbound checks' own threads (mta.inbound.executor).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

import dkim
import dns.asyncresolver
import dns.exception
import dns.resolver

from mta.inbound import executor
from mta.rfc5322 import header_section

log = logging.getLogger("mta.inbound")

# Signatures checked per message; more is a cost no sender needs.
MAX_SIGNATURES = 5
_SIGNATURE_FIELD = re.compile(rb"^dkim-signature[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE)
_TAG = re.compile(rb"(?:^|;)\s*([a-z]+)\s*=\s*([^;]*)")


@dataclass(frozen=True)
class DkimResult:
    result: str      # pass, fail, neutral, temperror, permerror (RFC 8601 section 2.7.1)
    domain: str      # the d= tag
    selector: str    # the s= tag
    signature: str   # the first 8 characters of b=, to tell signatures apart (RFC 6008)


def _tags(value: bytes) -> dict[str, str]:
    unfolded = value.replace(b"\r\n", b"")
    return {name.decode(): re.sub(rb"\s+", b"", text).decode("ascii", "replace")
            for name, text in _TAG.findall(unfolded)}


async def _fetch(resolver: dns.asyncresolver.Resolver, name: str) -> bytes | None | Exception:
    try:
        answer = await resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except dns.exception.DNSException as error:
        return error
    return b"".join(answer[0].strings)


async def verify(message: bytes, resolver: dns.asyncresolver.Resolver) -> list[DkimResult]:
    """Verify each DKIM signature of the message, up to MAX_SIGNATURES; return one result per signature."""
    signatures = _SIGNATURE_FIELD.findall(header_section(message))[:MAX_SIGNATURES]
    if not signatures:
        return []

    tags = [_tags(value) for value in signatures]
    names = {f"{tag.get('s', '')}._domainkey.{tag.get('d', '')}." for tag in tags if tag.get("s") and tag.get("d")}
    fetched = dict(zip(names, await asyncio.gather(*(_fetch(resolver, name) for name in names)), strict=True))

    # Hashing the body takes a while for large messages, so it runs off the event loop.
    verdicts = await executor.run(_verify_all, message, tags, fetched)
    return [DkimResult(result=verdict, domain=tag.get("d", "").lower(), selector=tag.get("s", ""),
                       signature=tag.get("b", "")[:8]) for verdict, tag in zip(verdicts, tags, strict=True)]


def _verify_all(message: bytes, tags: list[dict[str, str]], fetched: dict) -> list[str]:
    """Verify each signature with one parse of the message; return one result per signature."""
    try:
        checker = dkim.DKIM(message, minkey=1024)
    except dkim.DKIMException as error:
        log.debug("message not readable for DKIM: %s", error)
        return ["permerror"] * len(tags)
    verdicts = []
    for index, tag in enumerate(tags):
        name = f"{tag.get('s', '')}._domainkey.{tag.get('d', '')}."
        verdicts.append(_verify_one(checker, index, name, fetched.get(name)))
    return verdicts


def _verify_one(checker: dkim.DKIM, index: int, name: str, record: bytes | None | Exception) -> str:
    if isinstance(record, Exception):
        return "temperror"
    if record is None:
        return "permerror"

    def dnsfunc(requested: bytes, timeout: int = 5) -> bytes | None:
        return record if requested.decode().lower() == name.lower() else None

    try:
        return "pass" if checker.verify(idx=index, dnsfunc=dnsfunc) else "fail"
    except dkim.ValidationError as error:
        log.debug("DKIM signature %d not valid: %s", index, error)
        # dkimpy raises for a changed body, which is a failed signature; other validation errors make it unusable.
        return "fail" if "body hash mismatch" in str(error) else "permerror"
    except dkim.DKIMException as error:
        log.debug("DKIM signature %d could not be checked: %s", index, error)
        return "permerror"
