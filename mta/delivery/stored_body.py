"""Loading a large queued body from the body store: one checking pass, then a way to stream it again.

The pass decrypts the body once, to learn what MAIL needs before any octet
is sent (its size, whether it is ASCII, its header section) and to check that
every chunk authenticates. A body of at most WHOLE_MAX octets is kept from
this pass and held whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from mta.delivery.body import WHOLE_MAX, MessageBody
from mta.rfc5322 import header_section
from mta.storage.bodies import decrypt_object_stream
from mta.storage.store import BodyStore


async def load_body(store: BodyStore, object_name: str, content_key: bytes, body_key: str) -> MessageBody:
    """Read a stored body once: return it whole when small, or its facts and a way to read it again.

    Raises StoreError and DecryptionError as BodyCodec.open does.
    """
    def reread() -> AsyncIterator[bytes]:
        return decrypt_object_stream(content_key, object_name, store.get_stream(body_key))

    held: list[bytes] | None = []
    size = 0
    ascii = True
    header = _HeaderReader()
    async for piece in reread():
        size += len(piece)
        ascii = ascii and piece.isascii()
        header.feed(piece)
        if held is not None:
            held.append(piece)
            if size > WHOLE_MAX:
                held = None

    if held is not None:
        return MessageBody.whole(b"".join(held))
    return MessageBody(size, ascii, header.section(), reread=reread)


class _HeaderReader:
    """Keep the start of a body until the empty line that ends its header section.

    NOTE: a body without an empty line is all header section, so it is kept whole.
    """

    def __init__(self):
        self._buffer = bytearray()
        self._done = False

    def feed(self, piece: bytes) -> None:
        if self._done:
            return
        # The CRLF CRLF may begin in the octets already kept.
        start = max(0, len(self._buffer) - 3)
        self._buffer += piece
        if self._buffer.startswith(b"\r\n") or self._buffer.find(b"\r\n\r\n", start) >= 0:
            self._done = True

    def section(self) -> bytes:
        return header_section(bytes(self._buffer))
