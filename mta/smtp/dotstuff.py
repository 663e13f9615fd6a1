"""Dot-stuffing of a message sent in pieces after DATA (RFC 5321 section 4.5.2).

A line that starts with a period gets one more, so that no line of the
message reads as the end of data. The message is CRLF-only (the SMTP side
rejects bare CR and LF before queueing), so a line starts at the beginning
of the data and after each CRLF. A piece may end inside a CRLF or right
after one, so the stuffer keeps the last two octets seen.
"""

from __future__ import annotations


class DotStuffer:
    """Stuff one message piece by piece: feed() each piece in order, then end() once."""

    def __init__(self):
        # The last two octets of the message fed so far, before stuffing.
        self._tail = b""
        self._empty = True

    def feed(self, piece: bytes) -> bytes:
        """Return piece with a period added before every period that starts a line."""
        if not piece:
            return piece

        stuffed = piece.replace(b"\r\n.", b"\r\n..")
        if piece[:1] == b"." and (self._empty or self._tail == b"\r\n"):
            stuffed = b"." + stuffed
        elif piece[:2] == b"\n." and self._tail[-1:] == b"\r":
            # The CRLF was cut between the pieces, so replace() above did not see it.
            stuffed = b"\n." + stuffed[1:]

        self._tail = (self._tail + piece[-2:])[-2:]
        self._empty = False
        return stuffed

    def end(self) -> bytes:
        """Return the end of data: the final line's CRLF when the message lacks it, then the lone period."""
        if self._empty or self._tail == b"\r\n":
            return b".\r\n"
        return b"\r\n.\r\n"
