"""Responses whose body is produced piece by piece, so a large message never sits whole in memory.

Status and headers go out before the first piece, so an error in the middle
cannot become an error response. It is logged, and the connection is then
closed early, so the client gets fewer octets than Content-Length (or no
final chunk) and can tell the body is incomplete.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from mta.storage.crypto import DecryptionError
from mta.storage.store import StoreError

log = logging.getLogger("mta.api")


def stream(pieces: AsyncIterator[bytes], media_type: str | None, description: str, size: int | None = None,
           headers: dict[str, str] | None = None) -> StreamingResponse:
    """Return a response that sends the pieces; description names the content in the log line of a failure."""
    headers = {"X-Content-Type-Options": "nosniff", **(headers or {})}
    if size is not None:
        headers["Content-Length"] = str(size)
    return StreamingResponse(_logged(pieces, description), media_type=media_type, headers=headers)


async def _logged(pieces: AsyncIterator[bytes], description: str) -> AsyncIterator[bytes]:
    try:
        async for piece in pieces:
            yield piece
    except (DecryptionError, StoreError) as error:
        log.error("api: sending %s failed after the response started, closing the connection: %s", description, error)
        raise
