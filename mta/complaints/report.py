"""Parse an Abuse Reporting Format report (RFC 5965) without I/O.

A report is a ``multipart/report; report-type=feedback-report`` message
with three parts: a human-readable text, a ``message/feedback-report`` part
of fields (Feedback-Type is required; Original-Rcpt-To may name the
complaining recipient), and the original message as ``message/rfc822`` or
its header section as ``text/rfc822-headers``.

The original is matched to our queue by the queue id that our Received
field carries (``by HOST with PROTOCOL id QUEUEID``, mta.smtp.stamp), or by
the Message-ID that we add to submitted mail without one
(``<QUEUEID.random@HOST>``). A Message-ID chosen by the sender's own client
is not stored in the queue, so it cannot be matched.
"""

from __future__ import annotations

import email
import email.message
import email.utils
import re
from dataclasses import dataclass, field
from email.policy import compat32

# RFC 5965 section 7.3 registers abuse, fraud, other and virus; RFC 6430 adds not-spam.
_FEEDBACK_TYPE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_RECEIVED_ID = re.compile(r"\bby\s+\S+\s+with\s+\S+\s+id\s+([A-Z2-7]{16})\b")
_MESSAGE_ID = re.compile(r"<([A-Z2-7]{16})\.[0-9a-f]+@")
# Recipients taken from one report: real reports name one, so a few more
# leave room for an aggregated report without letting one report name many.
MAX_RECIPIENTS = 3
# Parts looked at. A report has three, so any beyond these are ignored.
MAX_PARTS = 5


class ReportError(ValueError):
    """The message is not a feedback report that can be used, for the reason given."""


@dataclass(frozen=True)
class FeedbackReport:
    # Lower case, such as abuse or not-spam.
    feedback_type: str
    # Original-Rcpt-To addresses, without angle brackets; often missing or redacted.
    recipients: list[str] = field(default_factory=list)
    # Queue ids found in the original's header section, most recent hop first.
    queue_ids: list[str] = field(default_factory=list)


def parse_report(data: bytes) -> FeedbackReport:
    """Return the report in data, or raise ReportError saying what is missing or malformed."""
    try:
        message = email.message_from_bytes(data, policy=compat32)
        fields, original = _report_parts(message)
    except (ValueError, TypeError, LookupError) as error:
        raise ReportError(f"unreadable MIME structure: {error}") from None

    # str(): compat32 returns a Header object, not a str, for a field with octets outside ASCII.
    feedback_type = str(fields.get("Feedback-Type") or "").strip().lower()
    if not _FEEDBACK_TYPE.fullmatch(feedback_type):
        raise ReportError(f"invalid or missing Feedback-Type: {feedback_type[:40]!r}")
    recipients = [_bare_address(value) for value in fields.get_all("Original-Rcpt-To", [])]
    queue_ids = _queue_ids(original)
    if not queue_ids:
        raise ReportError("no queue id of ours in the original message's Received or Message-ID fields")
    return FeedbackReport(feedback_type, [address for address in recipients if address][:MAX_RECIPIENTS], queue_ids)


def _report_parts(message: email.message.Message) -> tuple[email.message.Message, email.message.Message]:
    """Return the feedback-report fields and the original message's header section."""
    if message.get_content_type() != "multipart/report":
        raise ReportError(f"not a multipart/report but {message.get_content_type()}")
    report_type = email.utils.collapse_rfc2231_value(message.get_param("report-type") or "")
    if report_type.lower() != "feedback-report":
        raise ReportError("multipart/report without report-type=feedback-report")

    parts = message.get_payload()
    if not isinstance(parts, list):
        raise ReportError("multipart/report without parts: no boundary parameter, or no boundary in the body")

    fields = original = None
    for part in parts[:MAX_PARTS]:
        content_type = part.get_content_type()
        if content_type == "message/feedback-report" and fields is None:
            fields = _inner_message(part)
        elif content_type == "message/rfc822" and original is None:
            original = _inner_message(part)
        elif content_type == "text/rfc822-headers" and original is None:
            original = email.message_from_bytes(part.get_payload(decode=True) or b"", policy=compat32)
    if fields is None:
        raise ReportError("no message/feedback-report part")
    if original is None:
        raise ReportError("no message/rfc822 or text/rfc822-headers part with the original message")
    return fields, original


def _inner_message(part: email.message.Message) -> email.message.Message:
    payload = part.get_payload()
    if isinstance(payload, list) and payload:
        return payload[0]
    # A part the parser left as text, such as one with a transfer encoding.
    return email.message_from_bytes(part.get_payload(decode=True) or b"", policy=compat32)


def _queue_ids(original: email.message.Message) -> list[str]:
    found = []
    for value in original.get_all("Received", []):
        found += _RECEIVED_ID.findall(" ".join(str(value).split()))
    for value in original.get_all("Message-ID", []):
        found += _MESSAGE_ID.findall(str(value))
    return list(dict.fromkeys(found))


def _bare_address(value: object) -> str:
    return str(value).strip().strip("<>").strip().lower()
