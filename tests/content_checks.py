"""Before-queue checks that tests load by name, as an operator's own module would be."""

from __future__ import annotations

import asyncio
from typing import Any

from mta.smtp.hooks import BeforeQueueCheck, CheckRequest, CheckResult


class SlowCheck(BeforeQueueCheck):
    def __init__(self, options: dict[str, Any]):
        self.seconds = float(options["seconds"])

    async def check(self, request: CheckRequest) -> CheckResult:
        await asyncio.sleep(self.seconds)
        return CheckResult()


class FailingCheck(BeforeQueueCheck):
    def __init__(self, options: dict[str, Any]):
        self.message = str(options.get("message", "scanner socket refused"))

    async def check(self, request: CheckRequest) -> CheckResult:
        raise ConnectionRefusedError(self.message)


class SubjectCheck(BeforeQueueCheck):
    """Decide by a word in the Subject field, and record the listener and sender in a header field."""

    def __init__(self, options: dict[str, Any]):
        self.options = options

    async def check(self, request: CheckRequest) -> CheckResult:
        header = f"X-Checked: {request.listener} from=<{request.sender}> rcpt={len(request.recipients)}\r\n".encode()
        for action in ("reject", "tempfail", "quarantine"):
            if f"Subject: {action}".encode() in request.data:
                return CheckResult(action=action, reason=f"subject says {action}", header=header)
        return CheckResult(header=header)


def not_a_check(options: dict[str, Any]) -> object:
    return object()
