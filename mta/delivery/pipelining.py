"""Command pipelining for the SMTP client (RFC 2920).

With PIPELINING offered, MAIL, every RCPT and DATA go out in one write and
their replies are read after it, so a message costs two round trips (the
group, then the body) instead of one per command.

aiosmtplib's protocol reads one reply per command it sends and drops data
that arrives while a parsed reply waits to be picked up, so several replies
in one packet would be lost. ``PipeliningProtocol`` keeps every octet while
a group is in flight and hands over one reply per read. Outside a group it
behaves as aiosmtplib's own. It relies on internals of aiosmtplib's
SMTPProtocol (checked with aiosmtplib 5.1): ``enable`` returns False when
they are missing, and the caller then sends one command at a time.
"""

from __future__ import annotations

from aiosmtplib.errors import SMTPException, SMTPResponseException
from aiosmtplib.protocol import MAX_RESPONSE_LENGTH, SMTPProtocol
from aiosmtplib.response import SMTPResponse

_INTERNALS = ("_buffer", "_response_waiter", "_response_pending", "_command_lock", "_read_response_from_buffer",
              "_set_response_exception")


class PipelineBroken(Exception):
    """The connection failed before every reply of a group arrived."""

    def __init__(self, replies: list[SMTPResponse], error: BaseException):
        super().__init__(str(error))
        self.replies = replies
        self.error = error


class PipeliningProtocol(SMTPProtocol):
    # True while a group's replies are being read.
    pipelining = False

    def data_received(self, data: bytes) -> None:
        if not self.pipelining:
            super().data_received(data)
            return
        if self._response_waiter is None:
            return

        self._buffer.extend(data)
        if len(self._buffer) > MAX_RESPONSE_LENGTH:
            del self._buffer[:]
            self._set_response_exception(self._response_waiter, SMTPResponseException(-1, "Response too long"))
            return
        self._hand_over()

    def _hand_over(self) -> None:
        """Complete the waiting read with the next whole reply in the buffer, if there is one."""
        waiter = self._response_waiter
        if waiter is None or waiter.done():
            return
        try:
            response = self._read_response_from_buffer()
        except SMTPResponseException as error:
            self._set_response_exception(waiter, error)
            return
        if response is not None:
            waiter.set_result(response)

    async def read_response(self, timeout: float | None = None) -> SMTPResponse:
        if self.pipelining:
            # A reply may have arrived in the same packet as the previous one.
            self._hand_over()
        return await super().read_response(timeout)


def enable(protocol: SMTPProtocol | None) -> bool:
    """Give an open connection's protocol the pipelining behaviour; return whether it has it."""
    if protocol is None or not all(hasattr(protocol, name) for name in _INTERNALS):
        return False
    if type(protocol) is SMTPProtocol:
        protocol.__class__ = PipeliningProtocol
        # uvloop keeps the bound data_received of the protocol it was given, so it must be given it again.
        if protocol.transport is not None:
            protocol.transport.set_protocol(protocol)
    return isinstance(protocol, PipeliningProtocol)


async def exchange(protocol: PipeliningProtocol, commands: list[bytes], timeout: float) -> list[SMTPResponse]:
    """Send a group of commands in one write and return their replies in order.

    Raise PipelineBroken with the replies read so far when the connection
    fails or a reply times out.
    """
    replies: list[SMTPResponse] = []
    async with protocol._command_lock:
        protocol.pipelining = True
        try:
            protocol._response_pending = True
            protocol.write(b"".join(commands))
            for _ in commands:
                replies.append(await protocol.read_response(timeout=timeout))
        except (SMTPException, OSError, TimeoutError) as error:
            raise PipelineBroken(replies, error) from error
        finally:
            protocol.pipelining = False
    return replies
