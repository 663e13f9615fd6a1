"""BDAT (CHUNKING, RFC 3030): message data in chunks of a size given in advance.

Each ``BDAT n`` is followed by exactly n octets, read as they are: no dot
stuffing and no terminator, so no data line can end the message early. The
chunks are collected on the envelope and the one marked LAST hands the
message to the same checks and queueing as DATA. A chunk is always read in
full, even when it is refused, so the octets never reach the command
reader. A BDAT line whose size cannot be read leaves no way to find the
chunk's end, so the session is closed after the 501.
"""

from __future__ import annotations

import asyncio
import re

from aiosmtpd.smtp import syntax

from mta.smtp import replies

_BDAT_ARGUMENT = re.compile(r"^(\d{1,18})(?:\s+(LAST))?\s*$", re.IGNORECASE)
# Octets read at a time from a chunk being discarded.
DISCARD_PIECE = 256 * 1024


class Chunking:
    """The BDAT command, mixed into the SMTP protocol class."""

    @syntax("BDAT chunk-size [LAST]")
    async def smtp_BDAT(self, arg: str) -> None:
        match = _BDAT_ARGUMENT.match(arg or "")
        if match is None:
            await self.push(str(replies.BDAT_SYNTAX))
            self.transport.close()
            return
        size, last = int(match.group(1)), match.group(2) is not None

        rejection = await self._chunk_rejection()
        if rejection is not None:
            if await self._read_chunk(size, keep=False) is not None:
                await self.push(rejection)
            return

        envelope = self.envelope
        if envelope.chunks is None:
            envelope.chunks = bytearray()
        keep = len(envelope.chunks) + size <= self.data_size_limit
        chunk = await self._read_chunk(size, keep)
        if chunk is None:
            return
        if not keep:
            # Over the limit: the transaction ends here, and later chunks of it get 503.
            self._set_post_data_state()
            await self.push(replies.MESSAGE_TOO_BIG.format(limit=str(self.data_size_limit)))
            return

        envelope.chunks += chunk
        if not last:
            await self.push(replies.CHUNK_RECEIVED.format(size=str(size)))
            return
        self._junk_commands = 0
        await self.finish_message(bytes(envelope.chunks))

    async def _chunk_rejection(self) -> str | None:
        """Return the reply that rejects a chunk in this state, or None when the chunk may be taken."""
        if not self.session.host_name:
            return str(replies.NEED_HELO)
        if self._auth_required and not self.session.authenticated:
            return str(replies.AUTH_REQUIRED)
        if self.envelope is None or not self.envelope.rcpt_tos:
            return str(replies.NEED_RECIPIENT)
        if not hasattr(self.envelope, "chunks"):
            self.envelope.chunks = None
        return None

    async def _read_chunk(self, size: int, keep: bool) -> bytes | None:
        """Read a chunk of ``size`` octets, kept or discarded; return None when the session ended meanwhile."""
        timeout = self.handler.config.smtp.data_timeout
        try:
            async with asyncio.timeout(timeout):
                if keep:
                    chunk = await self._reader.readexactly(size)
                    self._reset_timeout()
                    return chunk
                remaining = size
                while remaining:
                    piece = await self._reader.readexactly(min(remaining, DISCARD_PIECE))
                    remaining -= len(piece)
                    self._reset_timeout()
                return b""
        except TimeoutError:
            self._close_with(replies.DATA_TIMEOUT.format(seconds=f"{timeout:g}"), "BDAT timeout")
        except asyncio.IncompleteReadError:
            self.transport.close()
        return None
