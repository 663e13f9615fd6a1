"""Messages in mboxrd form, converted piece by piece so a large message is never whole in memory.

Each entry is a ``From_`` line with the envelope sender and arrival time,
then the message, then an empty line. In the message, CRLF line ends become
LF, as mbox readers expect, and every line matching ``>*From `` is quoted
with one more ``>``. Quoting is reversible, which is what mboxrd adds to
the older mbox forms.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

_FROM_LINES = re.compile(rb"^(>*From )", re.MULTILINE)

# Octets of a line without LF held back at most. A longer line is written in
# parts once its start shows whether it needs quoting.
MAX_HELD_LINE = 64 * 1024


def from_line(sender: str, received_at: datetime) -> bytes:
    """Return the line that starts an entry: ``From SENDER DATE`` in UTC, asctime format."""
    when = received_at.astimezone(timezone.utc).strftime("%a %b %d %H:%M:%S %Y")
    envelope = (sender or "MAILER-DAEMON").replace(" ", "_")
    return f"From {envelope} {when}\n".encode()


class MboxrdConverter:
    """Convert one message's octets, fed in pieces of any size, into the lines of its mboxrd entry."""

    def __init__(self) -> None:
        self._held = b""
        # Whether the held octets continue a line that was partly written already.
        self._inside_line = False

    def feed(self, piece: bytes) -> bytes:
        """Return the converted lines that piece completes; hold back the rest."""
        data = self._held + piece
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            undecided = not self._inside_line and not data.lstrip(b">")
            if len(data) <= MAX_HELD_LINE or undecided:
                self._held = data
                return b""
            # A CR at the end may be the first half of a CRLF, so it waits for the next piece.
            cut = len(data) - 1 if data.endswith(b"\r") else len(data)

        converted = self._convert(data[:cut])
        self._inside_line = data[cut - 1:cut] != b"\n"
        self._held = data[cut:]
        return converted

    def finish(self) -> bytes:
        """Return the last line, ended by LF even when the message did not end it, and the empty line."""
        last = self._convert(self._held) + b"\n" if self._held else b""
        self._held = b""
        return last + b"\n"

    def _convert(self, lines: bytes) -> bytes:
        lines = lines.replace(b"\r\n", b"\n")
        if not self._inside_line:
            return _FROM_LINES.sub(rb">\1", lines)

        # The first line began in an earlier piece, so its start was already checked.
        head, newline, rest = lines.partition(b"\n")
        return head + newline + _FROM_LINES.sub(rb">\1", rest)
