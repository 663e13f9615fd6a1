"""The interface every body store offers: whole objects, streams and listing."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class StoreError(Exception):
    """The body store failed to write, read, list or delete an object."""


@dataclass(frozen=True)
class StoredObject:
    """An object's key and when it was last written, in UTC."""

    key: str
    modified: datetime


class BodyStore(Protocol):
    """Encrypted message bodies by key, each write durable before it returns.

    Every method raises ``StoreError`` when the store fails. ``delete`` of a
    missing key succeeds, so a retried delete is harmless.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def check(self) -> str | None:
        """Return why the store cannot be used now, or None when it can."""

    async def put(self, key: str, data: bytes) -> None: ...

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> None: ...

    async def get(self, key: str) -> bytes: ...

    def get_stream(self, key: str) -> AsyncIterator[bytes]: ...

    def list_keys(self, prefix: str = "") -> AsyncIterator[str]: ...

    def list_objects(self, prefix: str = "") -> AsyncIterator[StoredObject]: ...

    async def delete(self, key: str) -> None: ...

    async def remove_abandoned_writes(self, before: datetime, dry_run: bool = False) -> int:
        """Remove the unfinished writes started before ``before`` and return how many there were.

        These are multipart uploads or temporary files left by a process
        that stopped in the middle of a put: never objects, yet they take space.
        """
