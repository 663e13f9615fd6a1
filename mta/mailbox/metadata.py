"""Metadata of a delivered message, read from its header section only.

The body is not parsed, so the cost does not grow with attachments. Header
fields are decoded as RFC 2047 requires, with the lenient parsing of
``email.policy.default``: a malformed field gives its raw text, and a
missing or invalid Date: gives the arrival time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy
from email.parser import BytesHeaderParser

# Characters kept of From: and Subject:, so one odd message cannot make a large row.
MAX_TEXT = 1000


@dataclass(frozen=True)
class Metadata:
    size: int
    date: datetime
    from_header: str
    subject: str


def read_metadata(body: bytes, received_at: datetime) -> Metadata:
    """Return the size, date, From: and Subject: of an RFC 5322 message."""
    end = body.find(b"\r\n\r\n")
    return read_header_metadata(body if end < 0 else body[:end + 4], len(body), received_at)


def read_header_metadata(header: bytes, size: int, received_at: datetime) -> Metadata:
    """Return the metadata of a message of size octets from its header section alone."""
    fields = BytesHeaderParser(policy=policy.default).parsebytes(header)
    return Metadata(size=size, date=_date(fields, received_at),
                    from_header=_text(fields, "From"), subject=_text(fields, "Subject"))


def _text(fields, name: str) -> str:
    value = fields.get(name)
    if value is None:
        return ""
    # PostgreSQL text cannot contain NUL, which an encoded word may carry.
    return " ".join(str(value).replace("\x00", "").split())[:MAX_TEXT]


def _date(fields, received_at: datetime) -> datetime:
    value = fields.get("Date")
    parsed = getattr(value, "datetime", None)
    if parsed is None:
        return received_at
    if parsed.tzinfo is None:
        # RFC 5322 "-0000": the time is UTC, its local offset unknown.
        return parsed.replace(tzinfo=timezone.utc)
    return parsed
