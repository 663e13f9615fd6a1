"""SMTP replies as data: a code, an RFC 3463 enhanced code and a text.

Every reply the session sends is named here once, so the same condition is
never replied to in two ways.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class SmtpReply:
    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        # RFC 2034 gives 354 no enhanced code.
        return f"{self.code} {self.enhanced} {self.text}" if self.enhanced else f"{self.code} {self.text}"

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
DMARC_REJECTED = SmtpReply(550, "5.7.1", "message rejected by the DMARC policy of {domain}")
UNKNOWN_USER = SmtpReply(550, "5.1.1", "mailbox unknown")
BARE_LINE_ENDING = SmtpReply(
    550, "5.5.2", "message contains a bare CR or LF; lines must end with CRLF (RFC 5321 section 2.3.8)")
SENDER_NOT_OWNED = SmtpReply(553, "5.7.1", "sender address not owned by the authenticated user")
AUTHOR_NOT_OWNED = SmtpReply(553, "5.7.1", "From header address not owned by the authenticated user")
NUL_IN_DATA = SmtpReply(554, "5.6.0", "message contains NUL characters")
ONE_FROM_REQUIRED = SmtpReply(554, "5.6.0", "message must have exactly one From header field")
HEADER_MISSING = SmtpReply(554, "5.6.0", "message has no header section")
LINE_TOO_LONG = SmtpReply(554, "5.6.0", "{detail}; fold or encode it before sending")

AUTH_SUCCEEDED = SmtpReply(235, "2.7.0", "authentication succeeded")
AUTH_FAILED = SmtpReply(535, "5.7.8", "authentication credentials invalid")
AUTH_MALFORMED = SmtpReply(501, "5.5.2", "malformed authentication data")
AUTH_CANCELLED = SmtpReply(501, "5.0.0", "authentication cancelled")
AUTH_NOT_HERE = SmtpReply(502, "5.5.1", "AUTH is not available on this port, use the submission port")
AUTH_THROTTLED = SmtpReply(454, "4.7.0", "too many failed authentications, try again later")
TLS_FAILED = SmtpReply(421, "4.7.0", "TLS handshake failed")
TOO_MANY_CONNECTIONS = SmtpReply(421, "4.7.0", "too many connections from your address, try again later")
TOO_MANY_ERRORS = SmtpReply(421, "4.7.0", "too many errors in this session, closing")
TALKED_FIRST = SmtpReply(554, "5.5.1", "protocol error: data sent before the greeting")
TOO_MANY_COMMANDS = SmtpReply(421, "4.7.0", "too many commands without a message, closing")
IDLE_TIMEOUT = SmtpReply(421, "4.4.2", "timed out after {seconds} s without input, closing")
DATA_TIMEOUT = SmtpReply(421, "4.4.2", "message not completed within {seconds} s, closing")
SESSION_TIMEOUT = SmtpReply(421, "4.4.2", "session time limit of {seconds} s exceeded, closing")
START_DATA = SmtpReply(354, "", "End data with <CR><LF>.<CR><LF>")
NEED_RECIPIENT = SmtpReply(503, "5.5.1", "need RCPT command")
NEED_HELO = SmtpReply(503, "5.5.1", "send EHLO or HELO first")
AUTH_REQUIRED = SmtpReply(530, "5.7.0", "authentication required")
DATA_SYNTAX = SmtpReply(501, "5.5.4", "Syntax: DATA")
DATA_AFTER_BDAT = SmtpReply(503, "5.5.1", "DATA not allowed after BDAT in one transaction")
BDAT_SYNTAX = SmtpReply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]; closing, as the chunk cannot be found")
CHUNK_RECEIVED = SmtpReply(250, "2.0.0", "{size} octets received")
MESSAGE_TOO_BIG = SmtpReply(552, "5.3.4", "message exceeds the size limit of {limit} octets")
DSN_SYNTAX = SmtpReply(501, "5.5.4", "invalid DSN parameter: {detail}")
PARAMETER_NOT_HERE = SmtpReply(555, "5.5.4", "parameter not allowed in this command: {parameters}")

# Enhanced codes for aiosmtpd's own replies, which mostly lack them
# (RFC 2034, RFC 3463). Replies our handlers send already carry one.
_ENHANCED_FOR_CODE = {
    221: "2.0.0", 250: "2.0.0", 220: "2.0.0", 252: "2.0.0",
    421: "4.4.2", 451: "4.3.0", 452: "4.3.1",
    500: "5.5.2", 501: "5.5.4", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4",
    530: "5.7.0", 535: "5.7.8", 538: "5.7.11", 550: "5.0.0", 552: "5.3.4", 553: "5.1.3",
    554: "5.0.0", 555: "5.5.4",
}
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}\b")


def with_enhanced_code(status: str, hostname: str) -> str:
    """Insert an RFC 3463 code into a one-line reply that has none.

    The greeting, the EHLO and HELO replies, 334 challenges and 354 are left
    alone: RFC 2034 section 3 gives them no enhanced code.
    """
    if len(status) < 4 or status[3] != " " or _HAS_ENHANCED.match(status):
        return status
    code = int(status[:3]) if status[:3].isdigit() else 0
    text = status[4:]
    if code not in _ENHANCED_FOR_CODE or text == "HELP" or text.startswith(hostname):
        return status
    return f"{code} {_ENHANCED_FOR_CODE[code]} {text.removeprefix('Error: ')}"
