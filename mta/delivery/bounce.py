"""Delivery status notifications (RFC 3464) for recipients that failed.

A notification is a multipart/report with a human-readable part, a
message/delivery-status part with one block per failed recipient, and the
original message's header section. It is sent with the null reverse-path
(RFC 5321 section 6.1), so a notification that fails is never answered by
another one.
"""

from __future__ import annotations

import email.utils
import secrets
from datetime import datetime, timezone

from mta.delivery.outcome import Reply
from mta.rfc5322 import header_section

_CRLF = b"\r\n"


def build_dsn(hostname: str, queue_id: str, sender: str, arrival: datetime,
              failures: list[tuple[str, Reply]], original: bytes) -> bytes:
    """Return the notification to ``sender`` as CRLF-terminated bytes."""
    boundary = f"{queue_id}.{secrets.token_hex(8)}/{hostname}"
    now = email.utils.format_datetime(datetime.now(timezone.utc))
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {now}",
        f"Message-ID: <{queue_id}.{secrets.token_hex(6)}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"This is the mail system at host {hostname}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "",
    ]
    for recipient, reply in failures:
        lines.append(f"<{recipient}>: {_one_line(str(reply))}")

    lines += [
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {hostname}",
        f"X-Queue-ID: {queue_id}",
        f"Arrival-Date: {email.utils.format_datetime(arrival)}",
    ]
    for recipient, reply in failures:
        lines += [
            "",
            f"Final-Recipient: rfc822; {recipient}",
            "Action: failed",
            f"Status: {reply.enhanced}",
            f"Diagnostic-Code: smtp; {_one_line(str(reply))}",
        ]

    lines += ["", f"--{boundary}", "Content-Type: text/rfc822-headers", ""]
    text = _CRLF.join(line.encode() for line in lines) + _CRLF
    closing = _CRLF + f"--{boundary}--".encode() + _CRLF
    return text + header_section(original) + closing


def _one_line(text: str) -> str:
    """Keep a remote reply on one line, in ASCII, so it cannot inject headers."""
    return " ".join(text.split()).encode("ascii", "replace").decode()
