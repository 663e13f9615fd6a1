"""A streaming MIME walker that finds attachments as the email package's parser would, fed in pieces.

``email.parser.BytesParser`` with ``policy.default`` (Python 3.11) keeps the
whole message and its parts in memory. This walker follows the same rules
while holding about one piece: lines end in CRLF, CR or LF; a header
section ends at an empty line or at the first line that is not a header
field; a boundary line of any enclosing multipart ends a part; the line
break before a boundary belongs to the boundary; message/* parts hold a
whole message, and message/delivery-status blocks of header fields. Header
fields of each part are parsed by the email package itself, so content
types, dispositions and filenames are read by its rules.

For each leaf part that is an attachment (see mta.mailbox.attachments) the
walker returns a PartStart, the raw content in pieces, and PART_END. A
multipart whose start boundary never comes is a leaf to the email package,
so when such a part is an attachment its preamble is returned as content
and PART_CANCELLED follows if the start boundary does come after all.

Two deliberate differences from the email package bound the cost of a
hostile message. A line that starts with "--" and has no line break within
MAX_LINE_HELD octets is content, never a boundary, although the email
package would take a boundary followed by that much white space as one. A
message or multipart part nested deeper than MAX_NESTING levels is an opaque
leaf, so no attachment inside it is found.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from mta.mailbox.attachments import is_attachment

# Octets of a line without a line break held before its start is returned as content.
MAX_LINE_HELD = 64 * 1024
# Message and multipart parts nested deeper than this are read as opaque leaves, so a hostile message
# cannot exhaust the stack (the email package of Python 3.11 raises RecursionError at 1,000 levels).
MAX_NESTING = 50

_EOL = re.compile(rb"\r\n|\r|\n")
# A field name and colon, an mbox "From " line or a continuation line (email.feedparser.headerRE).
_HEADER_LINE = re.compile(rb"^(From |[\041-\071\073-\176]*:|[\t ])")
_LINE_DASHES = re.compile(rb"[\r\n]--")
_NEED_MORE = object()

Reader = Generator[object, None, bytes]


@dataclass(frozen=True)
class PartStart:
    """The start of an attachment's content: its number among attachments and its header fields."""

    position: int
    headers: EmailMessage


PART_END = object()
PART_CANCELLED = object()


class MimeWalker:
    """Feed a message in pieces; each call returns the events of the attachments it completed or advanced."""

    def __init__(self):
        self._lines = _Lines()
        self._events: list = []
        self._position = 0
        self._parse = self._root()
        self._finished = False
        self._run()

    def feed(self, piece: bytes) -> list:
        """Return PartStart, content pieces (bytes), PART_END and PART_CANCELLED events, in order."""
        self._lines.feed(piece)
        self._run()
        return self._take_events()

    def close(self) -> list:
        """End the message and return the last events."""
        self._lines.close()
        self._run()
        return self._take_events()

    def _take_events(self) -> list:
        # Cleared in place, because each attachment being read appends to this same list.
        events = self._events.copy()
        self._events.clear()
        return events

    def _run(self) -> None:
        if self._finished:
            return
        try:
            next(self._parse)
        except StopIteration:
            self._finished = True

    def _root(self) -> Generator:
        leaf = yield from self._part(digest_parent=False, depth=0)
        if leaf is not None:
            leaf.finish(strip=False)

    def _part(self, digest_parent: bool, depth: int) -> Generator:
        """Parse one message or body part; return the leaf whose last line break an enclosing multipart strips."""
        headers = _parse_headers((yield from self._header_lines()))
        if digest_parent:
            headers.set_default_type("message/rfc822")

        maintype = headers.get_content_maintype()
        if depth >= MAX_NESTING and maintype in ("message", "multipart"):
            # Deliberately unlike the email package: nothing inside is an attachment.
            return (yield from self._leaf(None))
        if headers.get_content_type() == "message/delivery-status":
            return (yield from self._delivery_status(depth))
        if maintype == "message":
            return (yield from self._part(digest_parent=False, depth=depth + 1))
        if maintype != "multipart":
            return (yield from self._leaf(self._start_leaf(headers, strippable=True)))

        # A multipart that turns out to have no parts is a leaf, and the line break before a boundary stays in it.
        leaf = self._start_leaf(headers, strippable=False)
        boundary = headers.get_boundary()
        if boundary is None:
            return (yield from self._leaf(leaf))
        digest = headers.get_content_type() == "multipart/digest"
        started = yield from self._multipart(_Boundary(boundary), digest, leaf, depth)
        if started:
            if leaf is not None:
                self._cancel(leaf)
            return None
        return leaf

    def _header_lines(self) -> Generator:
        lines = []
        while True:
            line = yield from self._lines.readline()
            if not line:
                break
            if not _HEADER_LINE.match(line):
                # The empty line ends the header section and is dropped. Any other line starts the body.
                if line[:1] not in (b"\r", b"\n"):
                    self._lines.unread(line)
                break
            lines.append(line)

        # The email package takes a "From " line last in a header section as the first line of the body.
        if len(lines) > 1 and lines[-1].startswith(b"From "):
            self._lines.unread(lines.pop())
        return lines

    def _start_leaf(self, headers: EmailMessage, strippable: bool) -> _Leaf | None:
        if not is_attachment(headers):
            return None
        self._position += 1
        self._events.append(PartStart(self._position, headers))
        return _Leaf(self._events, strippable)

    def _cancel(self, leaf: _Leaf) -> None:
        self._position -= 1
        leaf.cancel()

    def _leaf(self, leaf: _Leaf | None) -> Generator:
        """Read a leaf's content up to the end of its part, passing it to leaf when that is an attachment."""
        while True:
            run = yield from self._lines.read_run()
            if run is None:
                run = yield from self._lines.readline()
            if not run:
                return leaf
            if leaf is not None:
                leaf.feed(run)

    def _multipart(self, boundary: _Boundary, digest: bool, leaf: _Leaf | None, depth: int) -> Generator:
        """Parse the parts of a multipart; return False when its start boundary never comes."""
        if not (yield from self._preamble(boundary, leaf)):
            return False

        while True:
            # The email package makes no part of boundary lines that follow each other.
            while True:
                line = yield from self._lines.readline()
                if not line or not boundary.match(line):
                    self._lines.unread(line)
                    break

            self._lines.matchers.append(boundary.match)
            last = yield from self._part(digest_parent=digest, depth=depth + 1)
            if last is not None:
                last.finish(strip=last.strippable)
            self._lines.matchers.pop()

            line = yield from self._lines.readline()
            if not line:
                # The end of the message or an enclosing boundary, with no close boundary.
                return True
            if boundary.match(line).group("end"):
                break

        yield from self._skip_to_end()
        return True

    def _preamble(self, boundary: _Boundary, leaf: _Leaf | None) -> Generator:
        """Read up to the first boundary line; return whether it is a start boundary (not a close one)."""
        while True:
            run = yield from self._lines.read_run()
            if run is None:
                run = yield from self._lines.readline()
                if run:
                    found = boundary.match(run)
                    if found is not None:
                        if found.group("end"):
                            # A close boundary before any start boundary: the rest is dropped.
                            yield from self._skip_to_end()
                            return False
                        return True
            if not run:
                return False
            if leaf is not None:
                leaf.feed(run)

    def _delivery_status(self, depth: int) -> Generator:
        """Parse message/delivery-status: blocks of header fields, each a part, separated by empty lines."""
        while True:
            self._lines.matchers.append(_is_empty_line)
            last = yield from self._part(digest_parent=False, depth=depth + 1)
            self._lines.matchers.pop()

            yield from self._lines.readline()
            line = yield from self._lines.readline()
            if not line:
                return last
            self._lines.unread(line)
            if last is not None:
                last.finish(strip=False)

    def _skip_to_end(self) -> Generator:
        while True:
            run = yield from self._lines.read_run()
            if run is None:
                run = yield from self._lines.readline()
            if not run:
                return


class _Leaf:
    """An attachment being read: passes its content on, holding back the line break that may end it."""

    def __init__(self, events: list, strippable: bool):
        self._events = events
        self.strippable = strippable
        self._pending_break = b""

    def feed(self, data: bytes) -> None:
        eol = _line_break_at_end(data)
        content = self._pending_break + data[:len(data) - len(eol)]
        if content:
            self._events.append(content)
        self._pending_break = eol

    def finish(self, strip: bool) -> None:
        if self._pending_break and not strip:
            self._events.append(self._pending_break)
        self._events.append(PART_END)

    def cancel(self) -> None:
        self._events.append(PART_CANCELLED)


class _Boundary:
    """The boundary lines of one multipart: "--" boundary, an optional "--", blanks, a line break."""

    def __init__(self, boundary: str):
        try:
            separator = b"--" + boundary.encode("ascii", "surrogateescape")
        except UnicodeEncodeError:
            # A boundary decoded (RFC 2231) to characters outside ASCII never matches a line of octets.
            separator = None
        self._pattern = None if separator is None else re.compile(
            re.escape(separator) + rb"(?P<end>--)?[ \t]*(?:\r\n|\r|\n)?$")

    def match(self, line: bytes) -> re.Match | None:
        if self._pattern is None:
            return None
        return self._pattern.match(line)


class _Lines:
    """Lines of the message as they arrive, with the boundaries that end the current part (its matchers).

    Each octet is searched for line breaks about once, however the lines
    are cut into pieces, so a long line costs time in proportion to its length.
    """

    def __init__(self):
        self._buffer = bytearray()
        self._position = 0
        # buffer[position:scanned] contains no CR or LF, so a search for a line break resumes at scanned.
        self._scanned = 0
        self._closed = False
        # Inside a line whose start was already returned, so the rest cannot be a boundary.
        self._mid_line = False
        self.matchers: list[Callable[[bytes], object]] = []

    def feed(self, piece: bytes) -> None:
        # CPython drops the front of a bytearray by moving its start, without copying what remains.
        del self._buffer[:self._position]
        self._scanned -= self._position
        self._position = 0
        self._buffer += piece

    def close(self) -> None:
        self._closed = True

    def unread(self, line: bytes) -> None:
        start = self._position - len(line)
        if start >= 0 and self._buffer[start:self._position] == line:
            self._position = start
        else:
            self._buffer[self._position:self._position] = line
        self._scanned = self._position

    def readline(self) -> Reader:
        """Return the next whole line, or b"" at the end of the message or at a line a matcher matches.

        NOTE: the line is held whole until it ends, so a header line or a
        line of message/delivery-status costs memory in proportion to its length.
        """
        while True:
            end = self._line_end()
            if end is not None:
                break
            yield _NEED_MORE

        line = bytes(self._buffer[self._position:end])
        if line and not self._mid_line and any(matcher(line) for matcher in self.matchers):
            return b""
        self._position = end
        self._mid_line = False
        return line

    def read_run(self) -> Generator[object, None, bytes | None]:
        """Return whole lines that no matcher can match, or the start of a long line.

        Returns None when the next line may match and must be read with
        readline(), and b"" at the end of the message.
        """
        while True:
            run = self._take_run()
            if run is not _NEED_MORE:
                return run
            yield _NEED_MORE

    def _take_run(self):
        buffer, start = self._buffer, self._position
        if _is_empty_line in self.matchers:
            # Inside message/delivery-status any line may be the empty one that ends a block.
            return None
        if self._closed and start == len(buffer):
            return b""
        if not self._mid_line:
            if len(buffer) - start < 2 and not self._closed:
                return _NEED_MORE
            if buffer.startswith(b"--", start):
                may_match = self._may_be_boundary()
                if may_match is not False:
                    return may_match

        resume = max(start, self._scanned)
        found = _LINE_DASHES.search(buffer, resume)
        if found is not None:
            end = found.start() + 1
        elif self._closed:
            end = len(buffer)
        else:
            # A CR last in the buffer may be the first half of a CRLF.
            end = max(buffer.rfind(b"\n", resume), buffer.rfind(b"\r", resume, len(buffer) - 1)) + 1

        if end > start:
            self._position = end
            self._mid_line = False
            return bytes(buffer[start:end])
        end = len(buffer) - 1 if buffer.endswith(b"\r") else len(buffer)
        self._scanned = end
        if len(buffer) - start > MAX_LINE_HELD:
            self._position = end
            self._mid_line = True
            return bytes(buffer[start:end])
        return _NEED_MORE

    def _may_be_boundary(self):
        """Return None for a line starting with "--" that readline() must read, else _NEED_MORE or False.

        False means the line has no line break within MAX_LINE_HELD octets,
        so it is read as content, like any other long line.
        """
        end = self._line_end()
        if end is not None and end - self._position <= MAX_LINE_HELD:
            return None
        if end is None and len(self._buffer) - self._position <= MAX_LINE_HELD:
            return _NEED_MORE
        return False

    def _line_end(self) -> int | None:
        found = _EOL.search(self._buffer, max(self._position, self._scanned))
        if found is None:
            self._scanned = len(self._buffer)
            return len(self._buffer) if self._closed else None
        if found.group() == b"\r" and found.end() == len(self._buffer) and not self._closed:
            self._scanned = found.start()
            return None
        return found.end()


def _is_empty_line(line: bytes) -> bool:
    return line[:1] in (b"\r", b"\n")


def _line_break_at_end(data: bytes) -> bytes:
    if data.endswith(b"\r\n"):
        return b"\r\n"
    if data.endswith((b"\r", b"\n")):
        return data[-1:]
    return b""


def _parse_headers(lines: list[bytes]) -> EmailMessage:
    return BytesParser(policy=policy.default).parsebytes(b"".join(lines), headersonly=True)
