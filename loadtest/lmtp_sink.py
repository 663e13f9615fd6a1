"""A minimal LMTP server on loopback that accepts every message and keeps only its digest.

It plays the mailbox server for loadtest.delivery_memory: LHLO, MAIL, RCPT,
DATA (one 250 per accepted recipient, RFC 2033 section 4.2), RSET and QUIT.
The body is read line by line and undone of dot-stuffing, so memory stays at
one line however large the message is.
"""

from __future__ import annotations

import asyncio
import hashlib

LOOPBACK = "127.0.0.1"
# Maximum line length read, far above a base64 or text line.
MAX_LINE = 1024 * 1024


class LmtpSink:
    def __init__(self):
        self.port = 0
        # SHA-256 hex digest of each message received, dot-stuffing undone.
        self.digests: list[str] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._session, LOOPBACK, 0, limit=MAX_LINE)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        recipients = 0
        try:
            writer.write(b"220 lmtp-sink.loadtest.invalid LMTP\r\n")
            while line := await reader.readuntil(b"\n"):
                verb = line[:4].upper()
                if verb == b"LHLO":
                    writer.write(b"250-lmtp-sink.loadtest.invalid\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb == b"RCPT":
                    recipients += 1
                    writer.write(b"250 2.1.5 OK\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    self.digests.append(await _read_data(reader))
                    writer.write(b"250 2.0.0 stored\r\n" * recipients)
                    recipients = 0
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    break
                else:
                    recipients = 0 if verb == b"RSET" else recipients
                    writer.write(b"250 2.0.0 OK\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()


async def _read_data(reader: asyncio.StreamReader) -> str:
    digest = hashlib.sha256()
    while (line := await reader.readuntil(b"\n")) != b".\r\n":
        digest.update(line[1:] if line.startswith(b".") else line)
    return digest.hexdigest()
