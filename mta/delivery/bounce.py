"""Delivery status notifications (RFC 3464): failed, delayed, and successes that were asked for.

A notification is a multipart/report with a human-readable part, a
message/delivery-status part with one block per failed or delayed recipient
(Action: failed or delayed), and the original message's header section. It is sent with the null reverse-path
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
              failures: list[tuple[str, Reply]], original: bytes,
              delays: list[tuple[str, Reply]] = (), retry_until: datetime | None = None, *,
              successes: list[tuple[str, Reply]] = (), success_action: str = "relayed", envid: str = "",
              orcpts: dict[str, str] | None = None, full: bool = False) -> bytes:
    """Return the notification to ``sender`` as CRLF-terminated bytes.

    delays are recipients still being retried, reported with Action: delayed
    and, when retry_until is given, the time the queue gives up on them.
    successes are recipients whose client asked to hear of success (NOTIFY),
    reported with success_action: "delivered" for a local mailbox, "relayed"
    for a server that was not asked to report further. envid and orcpts
    (original recipient per recipient, "type;address") come from the DSN
    parameters, and full returns the whole message instead of its header
    section (RET=FULL).
    """
    boundary = f"{queue_id}.{secrets.token_hex(8)}/{hostname}"
    now = email.utils.format_datetime(datetime.now(timezone.utc))
    orcpts = orcpts or {}
    if failures:
        subject = "Undelivered Mail Returned to Sender"
    elif delays:
        subject = "Delayed Mail (still being retried)"
    else:
        subject = "Successful Mail Delivery Report"
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
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
    ]
    if failures:
        lines += ["Your message could not be delivered to one or more recipients.", ""]
        lines += [f"<{recipient}>: {_one_line(str(reply))}" for recipient, reply in failures]
    if delays:
        until = f" until {email.utils.format_datetime(retry_until)}" if retry_until else ""
        if failures:
            lines.append("")
        else:
            lines += ["This is a warning only: you do not need to send your message again.", ""]
        lines += [f"Delivery to these recipients is delayed, and the mail system keeps trying{until}.", ""]
        lines += [f"<{recipient}>: {_one_line(str(reply))}" for recipient, reply in delays]
    if successes:
        lines += ["" if failures or delays else "Your message was delivered.", "",
                  f"Your message was {success_action} to these recipients, as you asked to be told:", ""]
        lines += [f"<{recipient}>: {_one_line(str(reply))}" for recipient, reply in successes]

    lines += [
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {hostname}",
    ]
    if envid:
        lines.append(f"Original-Envelope-Id: {_one_line(envid)}")
    lines += [
        f"X-Queue-ID: {queue_id}",
        f"Arrival-Date: {email.utils.format_datetime(arrival)}",
    ]
    for action, pairs in (("failed", failures), ("delayed", delays), (success_action, successes)):
        for recipient, reply in pairs:
            lines.append("")
            if recipient in orcpts:
                lines.append(f"Original-Recipient: {_one_line(orcpts[recipient])}")
            lines += [
                f"Final-Recipient: rfc822; {recipient}",
                f"Action: {action}",
                f"Status: {reply.enhanced}",
                f"Diagnostic-Code: smtp; {_one_line(str(reply))}",
            ]
            if action == "delayed" and retry_until is not None:
                lines.append(f"Will-Retry-Until: {email.utils.format_datetime(retry_until)}")

    returned = "message/rfc822" if full else "text/rfc822-headers"
    lines += ["", f"--{boundary}", f"Content-Type: {returned}", ""]
    text = _CRLF.join(line.encode() for line in lines) + _CRLF
    closing = _CRLF + f"--{boundary}--".encode() + _CRLF
    content = original if full else header_section(original)
    if content and not content.endswith(_CRLF):
        content += _CRLF
    return text + content + closing


def _one_line(text: str) -> str:
    """Keep a remote reply on one line, in ASCII, so it cannot inject headers."""
    return " ".join(text.split()).encode("ascii", "replace").decode()
