"""The result of one delivery attempt, per recipient."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}\b")


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    @property
    def enhanced(self) -> str:
        """The RFC 3463 status code, taken from the text or derived from the class."""
        match = _ENHANCED.match(self.text)
        if match:
            return match.group(0)
        return f"{self.code // 100}.0.0"

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


@dataclass
class Outcome:
    relay: str = "none"
    delivered: list[tuple[str, Reply]] = field(default_factory=list)
    deferred: list[tuple[str, Reply]] = field(default_factory=list)
    failed: list[tuple[str, Reply]] = field(default_factory=list)
    # The destination site tried, if any (mta.delivery.sites).
    site: str | None = None
    # No host of the site accepted a connection.
    connection_failed: bool = False
    # The source address of the connection used, when one was chosen.
    source: str | None = None

    def add(self, recipient: str, reply: Reply) -> None:
        if 200 <= reply.code < 300:
            self.delivered.append((recipient, reply))
        elif 400 <= reply.code < 500:
            self.deferred.append((recipient, reply))
        else:
            self.failed.append((recipient, reply))

    def add_all(self, recipients: list[str], reply: Reply) -> None:
        for recipient in recipients:
            self.add(recipient, reply)

    def merge(self, other: "Outcome") -> None:
        """Add the replies of another transaction with the same server."""
        self.delivered.extend(other.delivered)
        self.deferred.extend(other.deferred)
        self.failed.extend(other.failed)
