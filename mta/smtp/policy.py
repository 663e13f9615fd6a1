"""Policy decisions of the SMTP session, as plain functions without sockets.

Each check returns the reply to send, or None when the command may proceed.
One line-ending policy applies to every listener. A bare CR or a bare LF in
message data is rejected with 550 5.5.2 after the end of data, never
repaired. So nothing that another hop could read as a different end of data
(SMTP smuggling) is queued, signed or passed on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mta.rfc5322 import has_bare_line_ending, header_section
from mta.smtp import replies
from mta.smtp.replies import SmtpReply

# RFC 5321 section 4.1.2: dot-atom or quoted-string local part, at most 64 octets.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\xff-]+"
_LOCAL_PART = rf"(?:{_ATOM}(?:\.{_ATOM})*|\"(?:[\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\x20-\x7e])*\")"
_LABEL = r"(?:[A-Za-z0-9\x80-\xff](?:[A-Za-z0-9\x80-\xff-]{0,61}[A-Za-z0-9\x80-\xff])?)"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[^\[\]\\\s]+\])"
_ADDRESS = re.compile(rf"^(?P<local>{_LOCAL_PART})@(?P<domain>{_DOMAIN})$")

_FROM_FIELD = re.compile(rb"^from[ \t]*:", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Listener:
    """Listener rules: MX receives for local domains, submission relays for users."""

    name: str
    requires_auth: bool
    # TLS from the first octet (RFC 8314), instead of STARTTLS.
    implicit_tls: bool = False


def parse_path(argument: str) -> tuple[str | None, str]:
    """Split a MAIL or RCPT argument into its path and the parameters after it.

    Returns None as the path when the brackets are unbalanced. The null path
    comes back as "<>". A source route (``<@relay:user@domain>``) is dropped,
    as RFC 5321 section 4.1.1.3 lets a receiver do; only the mailbox counts.
    """
    argument = argument.strip()
    if not argument.startswith("<"):
        path, _, rest = argument.partition(" ")
        return path, rest.strip()

    end = _closing_bracket(argument)
    if end < 0:
        return None, ""
    path, rest = argument[1:end], argument[end + 1:]
    if rest and not rest.startswith(" "):
        return None, ""
    if path.startswith("@"):
        _, colon, path = path.partition(":")
        if not colon:
            return None, ""
    return (path or "<>"), rest.strip()


def _closing_bracket(argument: str) -> int:
    quoted = escaped = False
    for index, character in enumerate(argument[1:], start=1):
        if escaped:
            escaped = False
        elif character == "\\" and quoted:
            escaped = True
        elif character == '"':
            quoted = not quoted
        elif character == ">" and not quoted:
            return index
    return -1


def valid_address(address: str) -> bool:
    """Check ``local@domain`` syntax with RFC 5321 length limits."""
    if len(address) > 254:
        return False
    match = _ADDRESS.match(address)
    return match is not None and len(match.group("local").encode("utf-8", "surrogateescape")) <= 64


def check_sender(listener: Listener, sender: str, login: str | None) -> SmtpReply | None:
    if sender and not valid_address(sender):
        return replies.BAD_SENDER_SYNTAX
    if listener.requires_auth and (login is None or sender.lower() != login.lower()):
        return replies.SENDER_NOT_OWNED
    return None


def check_recipient(listener: Listener, recipient: str, may_relay: bool, is_local_domain: bool,
                    count_so_far: int, max_recipients: int) -> SmtpReply | None:
    """Decide a RCPT before any lookup of the mailbox itself."""
    if not valid_address(recipient):
        return replies.BAD_RECIPIENT_SYNTAX
    if count_so_far >= max_recipients:
        # RFC 5321 section 4.5.3.1.10: 452 lets the client send the rest later.
        return replies.TOO_MANY_RECIPIENTS
    if not is_local_domain and not may_relay:
        return replies.RELAY_DENIED
    return None


def check_content(data: bytes, require_one_from: bool) -> SmtpReply | None:
    """Check message data after the end of data, before anything is stamped or signed."""
    if has_bare_line_ending(data):
        return replies.BARE_LINE_ENDING
    if b"\x00" in data:
        return replies.NUL_IN_DATA
    if require_one_from and len(_FROM_FIELD.findall(header_section(data))) != 1:
        return replies.ONE_FROM_REQUIRED
    return None
