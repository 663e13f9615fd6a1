"""One verdict per message arriving on MX: SPF, DKIM and DMARC, the header, and what to do.

SPF and DKIM run side by side, then DMARC weighs them for each From domain.
A DMARC failure under p=reject is handled by ``inbound.dmarc_reject_action``.
A failure under p=quarantine (or a rejection turned into quarantine) sets the
message's quarantine flag. The results go into one Authentication-Results
field on top of the message. The session has already removed forged fields
that name this host (mta.inbound.results.remove_forged).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import dns.asyncresolver
import dns.resolver

from mta.config import InboundConfig
from mta.inbound import dkim_verify, dmarc, spf
from mta.inbound.dkim_verify import DkimResult
from mta.inbound.dmarc import DmarcResult
from mta.inbound.results import results_field
from mta.inbound.spf import SpfResult


@dataclass(frozen=True)
class Verdict:
    message: bytes          # the message with the new field on top
    summary: str            # "spf=pass dkim=pass dmarc=pass", for the log line
    reject: bool            # DMARC p=reject failed and the action is to reject
    quarantine: str | None  # why the message is quarantined, or None
    domain: str = ""        # the From domain whose DMARC result decided


class InboundChecker:
    def __init__(self, config: InboundConfig, hostname: str, nameservers: list[str], dns_port: int,
                 timeout: float = 5.0):
        self.config = config
        self.hostname = hostname
        spf.configure(nameservers, dns_port, timeout)
        self.resolver = dns.asyncresolver.Resolver(configure=False)
        self.resolver.nameservers = list(nameservers)
        self.resolver.port = dns_port
        self.resolver.lifetime = timeout
        self.resolver.cache = dns.resolver.LRUCache(10_000)

    @property
    def enabled(self) -> bool:
        return self.config.spf or self.config.dkim or self.config.dmarc

    async def check(self, message: bytes, client_address: str, sender: str, helo: str,
                    author_domains: list[str]) -> Verdict:
        """Authenticate one message; return it with its Authentication-Results field, and the verdict.

        Every domain among the From addresses is evaluated and the strictest
        outcome applies, so a second From (field or address) cannot hide a
        domain that publishes p=reject (RFC 7489 section 6.6.1).
        """
        spf_result, signatures = await asyncio.gather(self._spf(client_address, sender, helo),
                                                      self._dkim(message))
        results: list[DmarcResult] = []
        if self.config.dmarc:
            results = list(await asyncio.gather(*(dmarc.evaluate(domain, spf_result, signatures or [], self.resolver)
                                                  for domain in author_domains or [""])))

        deciding = max(results, key=_severity, default=None)
        reject, quarantine = self._disposition(deciding)
        field = results_field(self.hostname, spf_result, signatures, results if self.config.dmarc else None)
        return Verdict(message=field + message, summary=_summary(spf_result, signatures, results),
                       reject=reject, quarantine=quarantine, domain=deciding.domain if deciding else "")

    async def _spf(self, client_address: str, sender: str, helo: str) -> SpfResult | None:
        if not self.config.spf:
            return None
        return await spf.check(client_address, sender, helo)

    async def _dkim(self, message: bytes) -> list[DkimResult] | None:
        if not self.config.dkim:
            return None
        return await dkim_verify.verify(message, self.resolver)

    def _disposition(self, result: DmarcResult | None) -> tuple[bool, str | None]:
        if result is None or result.result != "fail":
            return False, None
        reason = f"DMARC failure for {result.domain} under p={result.published}"
        if result.policy == "reject":
            action = self.config.dmarc_reject_action
            if action == "reject":
                return True, None
            return False, reason if action == "quarantine" else None
        if result.policy == "quarantine":
            return False, reason
        return False, None


# Outcomes from mildest to strictest: a failure under p=reject decides over everything else.
_RESULT_ORDER = ("pass", "none", "permerror", "temperror", "fail")
_POLICY_ORDER = ("none", "quarantine", "reject")


def _severity(result: DmarcResult) -> tuple[int, int]:
    return _RESULT_ORDER.index(result.result), _POLICY_ORDER.index(result.policy)


def _summary(spf_result: SpfResult | None, signatures: list[DkimResult] | None,
             dmarc_results: list[DmarcResult]) -> str:
    parts = []
    if spf_result is not None:
        parts.append(f"spf={spf_result.result}")
    if signatures is not None:
        parts.append("dkim=" + (",".join(signature.result for signature in signatures) or "none"))
    if dmarc_results:
        parts.append("dmarc=" + ",".join(result.result for result in dmarc_results))
    return " ".join(parts)
