"""The DSN extension's parameters (RFC 3461): RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT.

aiosmtpd upper-cases every parameter and rejects those it does not know, so
the session takes the DSN parameters out of the command line first, with
their case others, and checks them here. ENVID and ORCPT are xtext (RFC 3461
section 4): "+" and two upper-case hex digits stand for one octet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mta.smtp import replies

MAIL_PARAMETERS = ("RET", "ENVID")
RCPT_PARAMETERS = ("NOTIFY", "ORCPT")
NOTIFY_VALUES = ("SUCCESS", "FAILURE", "DELAY")
# Without NOTIFY, a sender hears about failures and delays (RFC 3461 section 4.1 leaves it to the MTA).
DEFAULT_NOTIFY = ("FAILURE", "DELAY")
MAX_ENVID = 100

_XTEXT = re.compile(r"^(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*$")
_ORCPT = re.compile(r"^(?P<type>[A-Za-z0-9][A-Za-z0-9-]*);(?P<address>.+)$")


class DsnError(ValueError):
    """A DSN parameter is malformed or in the wrong command, and the reply names it."""

    def __init__(self, reply: str):
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True)
class RecipientDsn:
    notify: tuple[str, ...] = DEFAULT_NOTIFY
    # The original recipient as "type;address", xtext decoded, or "".
    orcpt: str = ""


def take_dsn_parameters(params: str) -> tuple[str, dict[str, str] | DsnError]:
    """Split a MAIL or RCPT parameter string into the other parameters and the DSN ones, by keyword.

    A keyword given twice makes the second item a DsnError instead.
    """
    others, dsn = [], {}
    repeated = None
    for param in params.split():
        keyword, _, value = param.partition("=")
        if keyword.upper() not in MAIL_PARAMETERS + RCPT_PARAMETERS:
            others.append(param)
        elif keyword.upper() in dsn:
            repeated = DsnError(replies.DSN_SYNTAX.format(detail=f"{keyword.upper()} given twice"))
        else:
            dsn[keyword.upper()] = value
    return " ".join(others), repeated or dsn


def check_for_command(dsn: dict[str, str], allowed: tuple[str, ...]) -> None:
    """Raise DsnError for a DSN parameter that belongs to the other command (555, RFC 5321 section 4.1.1.11)."""
    wrong = sorted(set(dsn) - set(allowed))
    if wrong:
        raise DsnError(replies.PARAMETER_NOT_HERE.format(parameters=", ".join(wrong)))


def parse_mail(dsn: dict[str, str]) -> tuple[str, str]:
    """Return (ret, envid) from MAIL's DSN parameters; ret is "FULL", "HDRS" or ""."""
    ret = dsn.get("RET", "")
    if "RET" in dsn and ret.upper() not in ("FULL", "HDRS"):
        raise DsnError(replies.DSN_SYNTAX.format(detail=f"RET must be FULL or HDRS, got {ret!r}"))
    envid = dsn.get("ENVID", "")
    if "ENVID" in dsn and (not envid or len(envid) > MAX_ENVID or not _XTEXT.match(envid)):
        raise DsnError(replies.DSN_SYNTAX.format(detail=f"ENVID must be xtext of 1 to {MAX_ENVID} characters"))
    return ret.upper(), decode_xtext(envid)


def parse_rcpt(dsn: dict[str, str]) -> RecipientDsn:
    notify = DEFAULT_NOTIFY
    if "NOTIFY" in dsn:
        values = tuple(value.strip().upper() for value in dsn["NOTIFY"].split(","))
        if values != ("NEVER",) and (not values or any(value not in NOTIFY_VALUES for value in values)):
            raise DsnError(replies.DSN_SYNTAX.format(
                detail="NOTIFY must be NEVER, or a list of SUCCESS, FAILURE and DELAY"))
        notify = () if values == ("NEVER",) else values

    orcpt = ""
    if "ORCPT" in dsn:
        match = _ORCPT.match(dsn["ORCPT"])
        if match is None or not _XTEXT.match(match.group("address")):
            raise DsnError(replies.DSN_SYNTAX.format(detail="ORCPT must be addr-type;xtext"))
        orcpt = f"{match.group('type').lower()};{decode_xtext(match.group('address'))}"
    return RecipientDsn(notify, orcpt)


def decode_xtext(text: str) -> str:
    return re.sub(r"\+([0-9A-F]{2})", lambda match: chr(int(match.group(1), 16)), text)
