"""The Authentication-Results header field (RFC 8601) that this host adds, and forged ones it removes.

The field names this host as the authentication service (its
``server.hostname``). A field already in the message that names the same
service was not written here, so it is removed before the new one goes on
top: otherwise a sender could forge a pass (RFC 8601 section 5).
"""

from __future__ import annotations

import re

from mta.inbound.dkim_verify import DkimResult
from mta.inbound.dmarc import DmarcResult
from mta.inbound.spf import SpfResult
from mta.rfc5322 import header_section

_RESULTS_FIELD = re.compile(rb"^authentication-results[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)(?:\r\n|\Z)",
                            re.IGNORECASE | re.MULTILINE)
# The authserv-id is the first token or quoted string of the value, before an optional version and ";".
_SERVICE_ID = re.compile(rb'^\s*(?:\([^)]*\)\s*)*("[^"]*"|[^\s;(]+)')
# RFC 8601 values are tokens or quoted strings; anything else in a property is quoted.
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+\-./=?^_`{|}~@]+$")


def remove_forged(message: bytes, service_id: str) -> tuple[bytes, int]:
    """Return the message without Authentication-Results fields that name this host, and how many went."""
    header = header_section(message)
    removed = 0

    def keep_or_drop(match: re.Match) -> bytes:
        nonlocal removed
        found = _SERVICE_ID.match(match.group(1).replace(b"\r\n", b""))
        named = found.group(1).decode("ascii", "replace").strip('"').rstrip(".").lower() if found else ""
        if named == service_id.lower().rstrip("."):
            removed += 1
            return b""
        return match.group(0)

    cleaned = _RESULTS_FIELD.sub(keep_or_drop, header)
    if not removed:
        return message, 0
    return cleaned + message[len(header):], removed


def _value(text: str) -> str:
    if _TOKEN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def results_field(service_id: str, spf: SpfResult | None, signatures: list[DkimResult] | None,
                  dmarc: list[DmarcResult] | None) -> bytes:
    """Build the Authentication-Results field, folded one method per line."""
    methods = []
    if spf is not None:
        property_name = "smtp.mailfrom" if spf.identity == "mailfrom" else "smtp.helo"
        methods.append(f"spf={spf.result} {property_name}={_value(spf.domain)}")
    if signatures is not None:
        if not signatures:
            methods.append("dkim=none")
        for signature in signatures:
            methods.append(f"dkim={signature.result} header.d={_value(signature.domain)}"
                           f" header.s={_value(signature.selector)} header.b={_value(signature.signature)}")
    for result in dmarc or []:
        comment = f" (p={result.published} dis={result.policy})" if result.published else ""
        methods.append(f"dmarc={result.result}{comment} header.from={_value(result.domain)}")
    if not methods:
        methods.append("none")
    return ("Authentication-Results: " + service_id + ";\r\n\t" + ";\r\n\t".join(methods) + "\r\n").encode()
