"""Reading the DATA phase in bulk instead of one await per line.

Only the five octets CR LF "." CR LF end the data (RFC 5321 section
4.1.1.4); a lone LF never does, so ``<LF>.<CR><LF>`` cannot end a message
early (SMTP smuggling). The search runs over whole chunks as they arrive.
Past the size limit the data is dropped while the search goes on, so the
reply comes only after the terminator and memory stays bounded.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

TERMINATOR = b"\r\n.\r\n"
CHUNK_SIZE = 256 * 1024


@dataclass
class DataResult:
    content: bytes | None     # the message with dot-stuffing undone; None when over the limit
    leftover: bytes           # octets after the terminator: pipelined commands


def unstuff(data: bytes) -> bytes:
    """Undo dot-stuffing exactly once (RFC 5321 section 4.5.2)."""
    if data.startswith(b".."):
        data = data[1:]
    return data.replace(b"\r\n..", b"\r\n.")


async def read_data(reader: asyncio.StreamReader, limit: int, on_chunk) -> DataResult:
    """Read up to the end-of-data terminator; return the message and what followed it.

    The message comes back with its final CRLF and without the terminating
    dot line. ``on_chunk`` is called for every chunk, to reset idle timers.
    """
    buffer = bytearray(b"\r\n")  # so a message that is only "." ends at once
    searched = 0
    dropped = False
    while True:
        end = buffer.find(TERMINATOR, searched)
        if end >= 0:
            leftover = bytes(buffer[end + len(TERMINATOR):])
            if dropped or end > limit:
                return DataResult(None, leftover)
            # One copy out of the buffer: slicing a bytearray would copy once more.
            return DataResult(unstuff(bytes(memoryview(buffer)[2:end + 2])), leftover)

        # The terminator may straddle two chunks: search again from its longest possible start.
        searched = max(0, len(buffer) - len(TERMINATOR) + 1)
        if len(buffer) - 2 > limit:
            dropped = True
            del buffer[:searched]
            searched = 0

        chunk = await reader.read(CHUNK_SIZE)
        if not chunk:
            raise ConnectionResetError("connection closed during DATA")
        on_chunk()
        buffer += chunk
