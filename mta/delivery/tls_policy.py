"""Outbound TLS policy per destination domain, like Postfix's smtp_tls_policy_maps.

- ``none``: never STARTTLS.
- ``may`` (the default): STARTTLS when the server offers it, TLS 1.2 or
  newer, certificate not checked (opportunistic TLS, RFC 7435).
- ``encrypt``: STARTTLS required. A server that does not offer it (4.7.4),
  or a failed handshake (4.7.5), defers the mail to that host, so the next
  MX host is tried. The certificate is not checked.
- ``verify``: as ``encrypt``, and the certificate must chain to a trusted
  authority (``ca_file``, or the system's) and name the MX host.

The table maps a domain, or ``.example.org`` for its subdomains, to a mode.
A host with DNSSEC-secure TLSA records gets the mode ``dane`` instead, unless
the table names its domain (mta.delivery.dane).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

MODES = ("none", "may", "encrypt", "verify")


@dataclass(frozen=True)
class TlsRequirement:
    mode: str
    # Where the mode comes from, for replies and logs: "default", "policy table", "MTA-STS", "DANE".
    source: str = "default"
    # The host's TLSA records, for the mode "dane".
    tlsa: tuple = ()
    # The MTA-STS policy's lines, for TLS reports.
    policy_lines: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.mode in ("encrypt", "verify", "dane")


def opportunistic_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def verifying_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class TlsPolicies:
    def __init__(self, default: str, table: dict[str, str], ca_file: str = ""):
        self.default = TlsRequirement(default)
        self.table = {domain.lower().rstrip("."): TlsRequirement(mode, "policy table")
                      for domain, mode in table.items()}
        self.opportunistic = opportunistic_context()
        self.verifying = verifying_context(ca_file)

    def for_domain(self, domain: str) -> TlsRequirement:
        """Return the requirement for a destination domain: its entry, a parent's ".domain" entry, or the default."""
        domain = domain.lower().rstrip(".")
        found = self.table.get(domain)
        if found is not None:
            return found
        labels = domain.split(".")
        for start in range(1, len(labels)):
            found = self.table.get("." + ".".join(labels[start:]))
            if found is not None:
                return found
        return self.default

    def context(self, requirement: TlsRequirement) -> ssl.SSLContext:
        return self.verifying if requirement.mode == "verify" else self.opportunistic
