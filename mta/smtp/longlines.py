"""Re-encoding of submitted mail whose lines are too long to travel.

RFC 5322 section 2.1.1 caps a line at 998 octets, and receivers disagree on
what to do beyond it: some reject, some truncate. Mail from the internet
keeps its lines. Mail this host is about to sign is submitted, or relayed
for its own networks. In such mail, each part with an over-long line is
re-encoded as quoted-printable before signing, so the signature covers what
leaves. RFC 6409 section 8 allows a submission server this fix.

Every other octet stays as it came: only the parts that need it are
rewritten, with their Content-Transfer-Encoding field replaced. A header
line over the limit cannot be encoded that way, and such a message is
rejected.

The same re-encoding downgrades 8-bit parts to 7 bits for a server that does
not offer 8BITMIME (RFC 6152 section 3), in ``seven_bit``.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable
from email.parser import BytesHeaderParser

from mta.rfc5322 import header_section

MAX_LINE = 998

_ENCODING_FIELD = re.compile(rb"^content-transfer-encoding[ \t]*:.*\r\n(?:[ \t].*\r\n)*",
                             re.IGNORECASE | re.MULTILINE)
_MIME_VERSION_FIELD = re.compile(rb"^mime-version[ \t]*:", re.IGNORECASE | re.MULTILINE)
_BARE_LF = re.compile(rb"(?<!\r)\n")
# Encodings that leave a line as it is, so a long line may stand in them.
_IDENTITY_ENCODINGS = {"", "7bit", "8bit", "binary"}


class LineTooLong(ValueError):
    """A line over 998 octets that re-encoding cannot shorten: in a header, or in an encoded part."""


def has_long_line(data: bytes) -> bool:
    # One pass in C. A regular expression for 999 non-break octets rescans each line from every offset.
    return len(data) > MAX_LINE and max(map(len, data.split(b"\r\n"))) > MAX_LINE


def shorten_lines(data: bytes) -> bytes:
    """Return the message with every part that has a line over 998 octets quoted-printable encoded.

    Raise LineTooLong when a header line is too long, or when a part
    already in base64 or quoted-printable still has a long line.
    """
    if not has_long_line(data):
        return data
    return _shorten_entity(data, top_level=True, needs=has_long_line)


def _needs_seven_bit(data: bytes) -> bool:
    return not data.isascii() or has_long_line(data)


def seven_bit(data: bytes) -> bytes:
    """Return the message with every part that has 8-bit octets (or a long line) quoted-printable encoded.

    Header fields stay as they are, because RFC 2047 encoded words would
    change what a signature covers; 8-bit octets in them still travel.
    Raise LineTooLong when a part already in base64 or quoted-printable has
    8-bit octets or a long line.
    """
    if data.isascii() and not has_long_line(data):
        return data
    return _shorten_entity(data, top_level=True, needs=_needs_seven_bit)


def _shorten_entity(entity: bytes, top_level: bool, needs: Callable[[bytes], bool]) -> bytes:
    header = header_section(entity)
    if needs is has_long_line and has_long_line(header):
        raise LineTooLong("a header line is longer than 998 octets")
    if header:
        body_start = len(header) + 2
    elif entity.startswith(b"\r\n"):
        body_start = 2
    else:
        body_start = len(entity)
    body = entity[body_start:]
    if not needs(body):
        return entity

    fields = BytesHeaderParser().parsebytes(header)
    if fields.get_content_maintype() == "multipart" and fields.get_boundary():
        boundary = fields.get_boundary().encode("ascii", "replace")
        return entity[:body_start] + _shorten_parts(body, boundary, needs)

    encoding = "".join(str(fields.get("Content-Transfer-Encoding", "")).split()).lower()[:40]
    if encoding not in _IDENTITY_ENCODINGS:
        raise LineTooLong(f"a part in {encoding} has 8-bit octets or a line longer than 998 octets")
    header = _ENCODING_FIELD.sub(b"", header) + b"Content-Transfer-Encoding: quoted-printable\r\n"
    if top_level and not _MIME_VERSION_FIELD.search(header):
        # Without it, RFC 2045 section 4 lets readers ignore the encoding field.
        header += b"MIME-Version: 1.0\r\n"
    return header + b"\r\n" + _quoted_printable(body)


def _quoted_printable(body: bytes) -> bytes:
    encoded = binascii.b2a_qp(body, quotetabs=False, istext=True)
    # b2a_qp copies the line ending of the first line, and a body of one line has none.
    return _BARE_LF.sub(b"\r\n", encoded)


def _shorten_parts(body: bytes, boundary: bytes, needs: Callable[[bytes], bool]) -> bytes:
    """Re-encode each part between the boundary lines of a multipart body that needs it."""
    # A delimiter is CRLF "--" boundary at a line start (RFC 2046 section 5.1.1).
    delimiter = re.compile(rb"(?:^|\r\n)--" + re.escape(boundary) + rb"(?:--)?[ \t]*(?=\r\n|$)")
    pieces, position = [], 0
    for match in delimiter.finditer(body):
        pieces.append(body[position:match.start()])
        pieces.append(body[match.start():match.end()])
        position = match.end()
    pieces.append(body[position:])

    # Even pieces are the preamble, the parts and the epilogue; odd ones are delimiters.
    last_part = len(pieces) - 2
    for index in range(2, last_part + 1, 2):
        part = pieces[index]
        if part.startswith(b"\r\n") and needs(part):
            pieces[index] = b"\r\n" + _shorten_entity(part[2:], top_level=False, needs=needs)
    if has_long_line(pieces[0]) or has_long_line(pieces[-1]):
        raise LineTooLong("the preamble or epilogue of a multipart body has a line longer than 998 octets")
    return b"".join(pieces)
