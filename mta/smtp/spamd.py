"""A before-queue check that queries SpamAssassin's spamd for a verdict (the SPAMC/1.5 protocol).

Options: ``host`` and ``port`` of spamd (default 127.0.0.1:783), ``user``
(the spamd user whose settings apply), ``reject_score`` (reject at or above
this score; 0 never rejects) and ``quarantine`` (flag messages spamd calls
spam, default true). Every checked message gets an ``X-Spam-Status`` field.
Messages over ``max_size`` octets (default 512 KiB, as spamc's limit) are
passed without a check, as spamc does.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from mta.smtp.hooks import BeforeQueueCheck, CheckRequest, CheckResult

_SPAM_LINE = re.compile(rb"^Spam:\s*(True|False|Yes|No)\s*;\s*(-?[\d.]+)\s*/\s*(-?[\d.]+)", re.IGNORECASE | re.MULTILINE)
_STATUS_LINE = re.compile(rb"^SPAMD/\d+\.\d+\s+(\d+)\s+(.*)$", re.MULTILINE)


class SpamdError(Exception):
    """spamd replied with an error or with something unreadable."""


class SpamdCheck(BeforeQueueCheck):
    def __init__(self, options: dict[str, Any]):
        self.host = str(options.get("host", "127.0.0.1"))
        self.port = int(options.get("port", 783))
        self.user = str(options.get("user", ""))
        self.reject_score = float(options.get("reject_score", 0.0))
        self.quarantine = bool(options.get("quarantine", True))
        self.max_size = int(options.get("max_size", 512 * 1024))

    async def check(self, request: CheckRequest) -> CheckResult:
        if len(request.data) > self.max_size:
            return CheckResult(header=b"X-Spam-Status: unchecked, message over the size spamd is given\r\n")

        is_spam, score, required = await self._ask(request.data)
        status = f"X-Spam-Status: {'Yes' if is_spam else 'No'}, score={score:g} required={required:g}\r\n"
        reason = f"spam score {score:g}, threshold {required:g}"
        if self.reject_score > 0 and score >= self.reject_score:
            return CheckResult(action="reject", reason=reason, header=status.encode())
        if is_spam and self.quarantine:
            return CheckResult(action="quarantine", reason=reason, header=status.encode())
        return CheckResult(header=status.encode())

    async def _ask(self, data: bytes) -> tuple[bool, float, float]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            user = f"User: {self.user}\r\n" if self.user else ""
            writer.write(f"CHECK SPAMC/1.5\r\nContent-length: {len(data)}\r\n{user}\r\n".encode() + data)
            await writer.drain()
            writer.write_eof()
            response = await reader.read()
        finally:
            writer.close()

        status = _STATUS_LINE.search(response)
        if status is None or status.group(1) != b"0":
            raise SpamdError(f"spamd replied {response[:100]!r}")
        verdict = _SPAM_LINE.search(response)
        if verdict is None:
            raise SpamdError(f"spamd reply has no Spam line: {response[:100]!r}")
        return verdict.group(1).lower() in (b"true", b"yes"), float(verdict.group(2)), float(verdict.group(3))
