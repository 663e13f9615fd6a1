"""The plaintext of a queued message for one delivery attempt, whole when small and streamed when large.

A body kept inline in PostgreSQL, or a stored body of at most WHOLE_MAX
octets, is decrypted once and held whole. A larger body stays in the body
store. Loading it (mta.delivery.stored_body) decrypts it once, to learn what MAIL needs before
any octet is sent (its size, whether it is ASCII, its header section) and to
check that every chunk authenticates. Each send then reads and decrypts it
again, one verified chunk at a time, so a delivery keeps about one store read
(1 MiB) of it instead of the ciphertext, the plaintext and a dot-stuffed copy.
The price is a second store read and decryption per attempt of a large body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from mta.rfc5322 import header_section
from mta.storage.crypto import DecryptionError
from mta.storage.store import StoreError

# Largest plaintext, in octets, held whole. Larger bodies are streamed from the store at each send.
WHOLE_MAX = 1024 * 1024


class BodyReadError(Exception):
    """Reading or decrypting a streamed body failed while it was being sent."""


class MessageBody:
    """A message's plaintext with the facts MAIL needs: its size, whether it is ASCII, and its header section."""

    def __init__(self, size: int, ascii: bool, header: bytes | None, data: bytes | None = None,
                 reread: Callable[[], AsyncIterator[bytes]] | None = None):
        self.size = size
        self.ascii = ascii
        self._header = header
        self._data = data
        self._reread = reread

    @classmethod
    def whole(cls, data: bytes) -> MessageBody:
        # The header section is sliced out only when asked for, because most bodies are ASCII and need not be.
        return cls(len(data), data.isascii(), None, data=data)

    @property
    def header(self) -> bytes:
        """The header fields up to and including the CRLF of the last one (mta.rfc5322.header_section)."""
        if self._header is None:
            self._header = header_section(self._data)
        return self._header

    @property
    def streamed(self) -> bool:
        return self._data is None

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the plaintext in order; raise BodyReadError when the store or the decryption fails.

        The body is whole and authentic only when the iterator ends without
        an error, so a caller must not end the SMTP DATA before that.
        """
        if self._data is not None:
            yield self._data
            return

        try:
            async for piece in self._reread():
                yield piece
        except (StoreError, DecryptionError) as error:
            raise BodyReadError(str(error)) from error

    async def read(self) -> bytes:
        """Return the whole plaintext, read again from the store when the body is streamed."""
        if self._data is not None:
            return self._data
        return b"".join([piece async for piece in self.chunks()])
