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
# A method result such as "dkim=pass", then its properties, each a token or a quoted string.
_METHOD_RESULT = re.compile(r"\s*([a-z0-9-]+)\s*=\s*([a-z0-9-]+)", re.IGNORECASE)
_PROPERTY = re.compile(r'([a-z0-9.-]+)=("(?:[^"\\]|\\.)*"|[^\s";]+)', re.IGNORECASE)
# The property naming the authenticated domain, for each method whose pass names one.
_PASSING_PROPERTY = {"dkim": "header.d", "spf": "smtp.mailfrom"}


def remove_forged(message: bytes, service_id: str) -> tuple[bytes, int]:
    """Return the message without Authentication-Results fields that name this host, and how many went."""
    header = header_section(message)
    removed = 0

    def keep_or_drop(match: re.Match) -> bytes:
        nonlocal removed
        if _names_service(match.group(1), service_id):
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


def passed_domains(header: bytes, service_id: str) -> set[str]:
    """Return the domains that passed in this host's Authentication-Results field: DKIM d= and SPF MAIL FROM.

    Only the topmost field naming this host counts. The session removed any
    such field the client sent (remove_forged), so that one was written here
    at accept. SPF checked against the HELO name does not count, because a
    HELO name says nothing about who wrote the message.
    """
    for match in _RESULTS_FIELD.finditer(header):
        if _names_service(match.group(1), service_id):
            return _passed_in(match.group(1).replace(b"\r\n", b"").decode("ascii", "replace"))
    return set()


def _names_service(value: bytes, service_id: str) -> bool:
    found = _SERVICE_ID.match(value.replace(b"\r\n", b""))
    named = found.group(1).decode("ascii", "replace").strip('"').rstrip(".").lower() if found else ""
    return named == service_id.lower().rstrip(".")


def _passed_in(value: str) -> set[str]:
    domains = set()
    # The first statement is the authserv-id; the others are one method result each.
    for statement in _split_unquoted(value, ";")[1:]:
        result = _METHOD_RESULT.match(statement)
        if result is None or result.group(2).lower() != "pass":
            continue
        domain_property = _PASSING_PROPERTY.get(result.group(1).lower())
        for name, text in _PROPERTY.findall(statement[result.end():]):
            if name.lower() == domain_property:
                domains.add(_unquote(text).lower().rstrip("."))
    return domains - {""}


def _split_unquoted(text: str, separator: str) -> list[str]:
    """Split text at separator where it is not inside a quoted string, so a quoted value cannot add a statement."""
    parts, current, quoted, escaped = [], [], False, False
    for character in text:
        if escaped:
            escaped = False
        elif quoted and character == "\\":
            escaped = True
        elif character == '"':
            quoted = not quoted
        elif character == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(character)
    parts.append("".join(current))
    return parts


def _unquote(text: str) -> str:
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text
