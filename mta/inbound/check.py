"""One verdict per message arriving on MX: SPF, DKIM and DMARC, the header, and what to do.

SPF and DKIM run side by side, then DMARC weighs them for the From domain.
A DMARC failure under p=reject is handled by ``inbound.dmarc_reject_action``;
one under p=quarantine (or a rejection turned into quarantine) sets the
message's quarantine flag. The results go into one Authentication-Results
field on top of the message, after forged ones naming this host are removed.
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
from mta.inbound.results import remove_forged, results_field
from mta.inbound.spf import SpfResult


@dataclass(frozen=True)
class Verdict:
    message: bytes          # the message with forged fields removed and the new field on top
    summary: str            # "spf=pass dkim=pass dmarc=pass", for the log line
    reject: bool            # DMARC p=reject failed and the action is to reject
    quarantine: str | None  # why the message is quarantined, or None


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
                    author_domain: str) -> Verdict:
        """Authenticate one message; return it with its Authentication-Results field, and the verdict."""
        spf_result, signatures = await asyncio.gather(self._spf(client_address, sender, helo),
                                                      self._dkim(message))
        dmarc_result = None
        if self.config.dmarc:
            dmarc_result = await dmarc.evaluate(author_domain, spf_result, signatures or [], self.resolver)

        reject, quarantine = self._disposition(dmarc_result)
        cleaned, _ = remove_forged(message, self.hostname)
        field = results_field(self.hostname, spf_result, signatures, dmarc_result)
        return Verdict(message=field + cleaned, summary=_summary(spf_result, signatures, dmarc_result),
                       reject=reject, quarantine=quarantine)

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


def _summary(spf_result: SpfResult | None, signatures: list[DkimResult] | None,
             dmarc_result: DmarcResult | None) -> str:
    parts = []
    if spf_result is not None:
        parts.append(f"spf={spf_result.result}")
    if signatures is not None:
        parts.append("dkim=" + (",".join(signature.result for signature in signatures) or "none"))
    if dmarc_result is not None:
        parts.append(f"dmarc={dmarc_result.result}")
    return " ".join(parts)
