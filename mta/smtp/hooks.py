"""Before-queue checks: operators' code that receives each message before the 250.

A check is any object with the ``BeforeQueueCheck`` interface, made by a
factory named in ``[smtp.checks.NAME]``. After the end of data, once the
message has passed this host's own checks, each configured check for the
listener runs in name order with the envelope and the data. Its result
accepts, rejects (550 5.7.1), defers (451 4.7.1), or quarantines the
message, and may add header fields on top. A check that raises or runs past
its ``timeout`` is a failure, and ``on_failure`` decides what follows. With
``tempfail`` the message is deferred, so the client retries and nothing goes
through unchecked. With ``accept`` it passes unchecked, with a warning in
the log.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mta.config import CheckConfig
from mta.smtp.replies import SmtpReply

log = logging.getLogger("mta.smtpd")

ACTIONS = ("accept", "reject", "tempfail", "quarantine")
CHECK_REJECTED = SmtpReply(550, "5.7.1", "message rejected by content check {name}: {reason}")
CHECK_DEFERRED = SmtpReply(451, "4.7.1", "message deferred by content check {name}: {reason}")
CHECK_UNAVAILABLE = SmtpReply(451, "4.7.1", "content check {name} unavailable, try again later")
# A reason reaches the client inside a reply line, so it keeps printable ASCII only.
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


@dataclass(frozen=True)
class CheckRequest:
    """One message as a check receives it."""

    queue_id: str
    session_id: str
    listener: str
    client_address: str
    helo: str
    sender: str
    recipients: tuple[str, ...]
    authenticated_user: str | None
    data: bytes


@dataclass(frozen=True)
class CheckResult:
    """A check's decision on one message."""

    action: str = "accept"
    reason: str = ""
    # Complete header fields, each ending in CRLF, to put on top of the message.
    header: bytes = b""


class BeforeQueueCheck(abc.ABC):
    @abc.abstractmethod
    async def check(self, request: CheckRequest) -> CheckResult:
        """Decide on one message. Raising counts as a failure of the check."""

    async def close(self) -> None:
        """Release connections or other resources at shutdown."""


@dataclass
class Outcome:
    """The combined decision of all checks on one message."""

    reply: str | None = None
    header: bytes = b""
    quarantine: str | None = None
    summary: list[str] = field(default_factory=list)


def load(name: str, config: CheckConfig) -> BeforeQueueCheck:
    """Import the factory a check names and call it with the check's options."""
    module_name, _, attribute = config.factory.partition(":")
    factory: Callable[[dict[str, Any]], BeforeQueueCheck] = getattr(importlib.import_module(module_name), attribute)
    check = factory(dict(config.options))
    if not isinstance(check, BeforeQueueCheck):
        raise TypeError(f"smtp.checks.{name}: {config.factory} returned {type(check).__name__}, "
                        "not a BeforeQueueCheck")
    return check


class BeforeQueueChecks:
    def __init__(self, configs: dict[str, CheckConfig]):
        self._checks = [(name, configs[name], load(name, configs[name])) for name in sorted(configs)]

    def applies_to(self, listener: str) -> bool:
        return any(listener in config.listeners for _, config, _ in self._checks)

    async def run(self, request: CheckRequest) -> Outcome:
        """Run every check for the request's listener; stop at the first that refuses the message."""
        outcome = Outcome()
        for name, config, check in self._checks:
            if request.listener not in config.listeners:
                continue
            result = await self._run_one(name, config, check, request)
            if result is None:
                if config.on_failure == "tempfail":
                    outcome.reply = CHECK_UNAVAILABLE.format(name=name)
                    return outcome
                outcome.summary.append(f"{name}=unchecked")
                continue

            outcome.summary.append(f"{name}={result.action}")
            outcome.header += result.header
            reason = _UNPRINTABLE.sub("?", result.reason)[:200] or "no reason given"
            if result.action == "reject":
                outcome.reply = CHECK_REJECTED.format(name=name, reason=reason)
                return outcome
            if result.action == "tempfail":
                outcome.reply = CHECK_DEFERRED.format(name=name, reason=reason)
                return outcome
            if result.action == "quarantine" and outcome.quarantine is None:
                outcome.quarantine = f"content check {name}: {reason}"
        return outcome

    async def _run_one(self, name: str, config: CheckConfig, check: BeforeQueueCheck,
                       request: CheckRequest) -> CheckResult | None:
        """Return the check's result, or None when it failed or timed out (logged)."""
        try:
            async with asyncio.timeout(config.timeout):
                result = await check.check(request)
        except TimeoutError:
            log.warning("%s: %s: content check %s timed out after %g s (on_failure=%s)", request.session_id,
                        request.queue_id, name, config.timeout, config.on_failure)
            return None
        except Exception as error:  # any failure of operator code is handled by on_failure
            log.warning("%s: %s: content check %s failed: %r (on_failure=%s)", request.session_id,
                        request.queue_id, name, error, config.on_failure)
            return None
        if not isinstance(result, CheckResult) or result.action not in ACTIONS:
            log.warning("%s: %s: content check %s returned an invalid result: %r (on_failure=%s)",
                        request.session_id, request.queue_id, name, result, config.on_failure)
            return None
        return result

    async def close(self) -> None:
        for name, _, check in self._checks:
            try:
                await check.close()
            except Exception as error:  # shutdown goes on whatever one check does
                log.warning("closing content check %s failed: %r", name, error)
