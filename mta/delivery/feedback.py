"""Classes of remote replies, so delivery can act on receivers' feedback.

- ``throttled``: the receiver requests less traffic (421, or a temporary
  reply with wording such as "rate limit", "too many connections" or
  "server busy"). The site is slowed down: its window narrows and it pauses
  for all nodes, instead of the reply counting as a failure. Greylisting
  (a 4.7.1 that names it) concerns one message, not the site, and is only
  retried.
- ``unknown_user``: the mailbox does not exist (X.1.1, X.1.10, or the usual
  wording in a 5xx). The address goes on the suppression list of the
  sender's domain.
- ``mailbox_full`` (X.2.2), ``reputation`` (a 5xx X.7.x block naming a
  blocklist or reputation), and ``other``.

Wording differs between providers, so the patterns below are an estimate
kept in one place. Enhanced status codes (RFC 3463) decide first.
"""

from __future__ import annotations

import re

from mta.delivery.outcome import Reply

THROTTLED = "throttled"
UNKNOWN_USER = "unknown_user"
MAILBOX_FULL = "mailbox_full"
REPUTATION = "reputation"
OTHER = "other"
CLASSES = (THROTTLED, UNKNOWN_USER, MAILBOX_FULL, REPUTATION, OTHER)

_THROTTLE_WORDS = re.compile(
    r"rate limit|too many (connections|messages)|temporarily (deferred|rate)"
    r"|throttl|server busy|unusual (rate|volume)|receiving mail at a rate", re.IGNORECASE)
_GREYLIST_WORDS = re.compile(r"gr[ae]y-?list", re.IGNORECASE)
_UNKNOWN_WORDS = re.compile(
    r"user unknown|unknown user|no such (user|mailbox|recipient)|does not exist|recipient not found"
    r"|invalid (recipient|mailbox)|mailbox (unavailable|not found)", re.IGNORECASE)
# A rejection of the envelope sender applies to every recipient, so it is no evidence about their mailboxes.
_SENDER_WORDS = re.compile(r"\bsender\b|mail from", re.IGNORECASE)
_REPUTATION_WORDS = re.compile(r"block|blacklist|spamhaus|reputation|\brbl\b|listed", re.IGNORECASE)


def classify(reply: Reply) -> str:
    """Return the class of a remote reply, one of CLASSES."""
    enhanced = reply.enhanced
    if reply.code >= 500:
        unknown = enhanced in ("5.1.1", "5.1.10") or (
            reply.code == 550 and enhanced in ("5.0.0", "5.1.0") and _UNKNOWN_WORDS.search(reply.text))
        if unknown and not _SENDER_WORDS.search(reply.text):
            return UNKNOWN_USER
        if enhanced == "5.2.2":
            return MAILBOX_FULL
        if enhanced.startswith("5.7.") and _REPUTATION_WORDS.search(reply.text):
            return REPUTATION
        return OTHER
    if 400 <= reply.code < 500:
        if enhanced == "4.2.2":
            return MAILBOX_FULL
        if _GREYLIST_WORDS.search(reply.text):
            return OTHER
        if enhanced.startswith("4.2."):
            # X.2.x concerns one mailbox (RFC 3463), such as its own rate of mail: not the whole site.
            return OTHER
        if reply.code == 421 or _THROTTLE_WORDS.search(reply.text):
            return THROTTLED
    return OTHER
