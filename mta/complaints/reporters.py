"""Decide whether a feedback report comes from a configured reporter (``webhooks.complaints_from``).

Anyone can send mail to the complaints address, so a report is trusted only
when this host authenticated it at accept: its DKIM signing domain (d=) or
its SPF-verified MAIL FROM domain, as written in this host's
Authentication-Results field, must be a configured reporter domain or one of
its subdomains. Mail that arrived without those checks (submission, relay
networks, or with inbound.spf and inbound.dkim off) has no such field and is
never trusted.
"""

from __future__ import annotations

from mta.inbound.results import passed_domains


def reporter_of(header: bytes, service_id: str, reporters: list[str]) -> str | None:
    """Return the configured reporter domain that the header's authenticated domains fall under, or None."""
    configured = [reporter.lower().rstrip(".") for reporter in reporters]
    for domain in sorted(passed_domains(header, service_id)):
        for reporter in configured:
            if domain == reporter or domain.endswith("." + reporter):
                return reporter
    return None
