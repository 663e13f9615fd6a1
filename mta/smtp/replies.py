"""SMTP replies as data: a code, an RFC 3463 enhanced code and a text.

Every reply the session sends is named here once, so the same condition is
never answered two ways.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SmtpReply:
    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    def format(self, **values: str) -> str:
        return f"{self.code} {self.enhanced} {self.text.format(**values)}"


SENDER_OK = SmtpReply(250, "2.1.0", "sender ok")
RECIPIENT_OK = SmtpReply(250, "2.1.5", "recipient ok")
QUEUED = SmtpReply(250, "2.0.0", "OK queued as {queue_id}")

TEMPORARY_FAILURE = SmtpReply(451, "4.3.0", "temporary failure, try again later (ref {ref})")
TOO_MANY_RECIPIENTS = SmtpReply(452, "4.5.3", "too many recipients")

BAD_SENDER_SYNTAX = SmtpReply(501, "5.1.7", "invalid sender address")
BAD_RECIPIENT_SYNTAX = SmtpReply(501, "5.1.3", "invalid recipient address")
RELAY_DENIED = SmtpReply(550, "5.7.1", "relay access denied")
UNKNOWN_USER = SmtpReply(550, "5.1.1", "mailbox unknown")
BARE_LINE_ENDING = SmtpReply(
    550, "5.5.2", "message contains a bare CR or LF; lines must end with CRLF (RFC 5321 section 2.3.8)")
SENDER_NOT_OWNED = SmtpReply(553, "5.7.1", "sender address not owned by the authenticated user")
NUL_IN_DATA = SmtpReply(554, "5.6.0", "message contains NUL characters")
ONE_FROM_REQUIRED = SmtpReply(554, "5.6.0", "message must have exactly one From header field")
HEADER_MISSING = SmtpReply(554, "5.6.0", "message has no header section")

AUTH_SUCCEEDED = SmtpReply(235, "2.7.0", "authentication succeeded")
AUTH_FAILED = SmtpReply(535, "5.7.8", "authentication credentials invalid")
AUTH_MALFORMED = SmtpReply(501, "5.5.2", "malformed authentication data")
AUTH_CANCELLED = SmtpReply(501, "5.0.0", "authentication cancelled")
