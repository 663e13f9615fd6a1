"""Header stamping before a message is queued: Received, Date, Message-ID, DKIM.

Date and Message-ID are added to submitted mail that lacks them before
signing, never after, so the signature covers them.
"""

from __future__ import annotations

import email.utils
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from mta.addresses import domain_of
from mta.rfc5322 import header_section

_DATE_FIELD = re.compile(rb"^date[ \t]*:", re.IGNORECASE | re.MULTILINE)
_MESSAGE_ID_FIELD = re.compile(rb"^message-id[ \t]*:", re.IGNORECASE | re.MULTILINE)
_FROM_VALUE = re.compile(rb"^from[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Arrival:
    """Session facts recorded in the Received field."""

    helo: str
    peer_address: str
    hostname: str
    protocol: str
    tls: str
    queue_id: str
    recipient: str


def received_field(arrival: Arrival) -> bytes:
    now = email.utils.format_datetime(datetime.now(timezone.utc))
    tls = f"\r\n\t({arrival.tls})" if arrival.tls else ""
    # RFC 5321 section 4.4: name the recipient only when there is exactly one.
    recipient = f"\r\n\tfor <{arrival.recipient}>" if arrival.recipient else ""
    text = (f"Received: from {_clean(arrival.helo)} ([{arrival.peer_address}])\r\n"
            f"\tby {arrival.hostname} with {arrival.protocol} id {arrival.queue_id}{tls}{recipient};"
            f" {now}\r\n")
    return text.encode("utf-8", "surrogateescape")


def add_missing_fields(data: bytes, hostname: str, queue_id: str) -> bytes:
    """Prepend Date and Message-ID when the submitted message has none."""
    headers = header_section(data)
    added = b""
    if not _DATE_FIELD.search(headers):
        added += f"Date: {email.utils.format_datetime(datetime.now(timezone.utc))}\r\n".encode()
    if not _MESSAGE_ID_FIELD.search(headers):
        added += f"Message-ID: <{queue_id}.{secrets.token_hex(6)}@{hostname}>\r\n".encode()
    return added + data


def author_address(data: bytes) -> str:
    """Return the first address in the From field, or ''."""
    match = _FROM_VALUE.search(header_section(data))
    if match is None:
        return ""
    value = match.group(1).decode("utf-8", "replace").replace("\r\n", "")
    addresses = email.utils.getaddresses([value])
    return addresses[0][1] if addresses else ""


def author_domains(data: bytes) -> list[str]:
    """Return the distinct domains of every address in every From field, in order of appearance."""
    values = [match.decode("utf-8", "replace").replace("\r\n", "") for match in _FROM_VALUE.findall(header_section(data))]
    domains = []
    for _, address in email.utils.getaddresses(values):
        domain = domain_of(address)
        if domain and domain not in domains:
            domains.append(domain)
    return domains


def author_domain(data: bytes) -> str:
    """Return the domain of the first address in the From field, or ''."""
    return domain_of(author_address(data))


def _clean(text: str) -> str:
    """Keep client-chosen text to one printable token inside our header."""
    return re.sub(r"[^\x21-\x7e]", "?", text)[:255] or "unknown"
