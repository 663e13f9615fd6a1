"""Content-Transfer-Encoding undone piece by piece, with the results of the email package on the whole payload.

``email.message.Message.get_payload(decode=True)`` (Python 3.11) decodes
base64 with ``binascii.a2b_base64`` in its lenient mode, quoted-printable
with ``binascii.a2b_qp`` and leaves any other encoding as it is. The
decoders here take the raw payload in pieces cut anywhere and return the
same octets, holding only the few characters an escape or a base64 quad
may still need.
"""

from __future__ import annotations

import binascii
import re
from email.message import Message

_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# Everything that is neither a base64 digit nor the pad is skipped by the lenient decoder.
_NOT_BASE64 = bytes(octet for octet in range(256) if octet not in _BASE64_ALPHABET + b"=")
_UUENCODE = ("x-uuencode", "uuencode", "uue", "x-uue")
# Quoted-printable held back at most: a line longer than this without an escape at its end is decoded in parts.
_QP_MAX_HELD = 64 * 1024
# An escape "=" CR that starts a soft line break of a2b_qp, which drops everything up to the next LF.
# The "=" before the CR starts an escape only when the run of "=" it ends has odd length.
_QP_CR_BREAK = re.compile(rb"(?:^|[^=])(?:==)*=\r")
_EQUALS = ord("=")
_HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")


class TransferDecoder:
    """A payload taken as it is: 7bit, 8bit, binary and any encoding the email package does not know."""

    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


def decoder_for(cte: str) -> TransferDecoder:
    """Return a decoder for a Content-Transfer-Encoding value, lower-cased as the email package does."""
    if cte == "base64":
        return Base64Decoder()
    if cte == "quoted-printable":
        return QuotedPrintableDecoder()
    if cte in _UUENCODE:
        return _WholeDecoder(cte)
    return TransferDecoder()


class Base64Decoder(TransferDecoder):
    """Lenient base64: other characters are skipped and decoding stops at the pad that completes a quad.

    NOTE: when the digits number one more than a multiple of 4, the email
    package returns the encoded text itself (line breaks removed). This
    decoder cannot know that before the end, so it returns the digits
    decoded and drops the stray one.
    """

    def __init__(self):
        # Digits of the quad in progress, fewer than 4.
        self._quad = b""
        self._pads = 0
        self._done = False

    def feed(self, data: bytes) -> bytes:
        if self._done:
            return b""

        digits = data.translate(None, _NOT_BASE64)
        if b"=" not in digits:
            return self._decode_quads(digits)

        out = []
        while digits and not self._done:
            pad = digits.find(b"=")
            if pad < 0:
                out.append(self._decode_quads(digits))
                break
            if pad > 0:
                out.append(self._decode_quads(digits[:pad]))
                self._pads = 0
            out.append(self._pad())
            digits = digits[pad + 1:]
        return b"".join(out)

    def finish(self) -> bytes:
        if self._done or len(self._quad) < 2:
            return b""
        return binascii.a2b_base64(self._quad + b"==")

    def _decode_quads(self, digits: bytes) -> bytes:
        if not digits:
            return b""
        self._pads = 0
        digits = self._quad + digits
        whole = len(digits) - len(digits) % 4
        self._quad = digits[whole:]
        return binascii.a2b_base64(digits[:whole])

    def _pad(self) -> bytes:
        # A pad after fewer than 2 digits of a quad is skipped, and pads in a row count towards completing one.
        if len(self._quad) < 2:
            return b""
        self._pads += 1
        if len(self._quad) + self._pads < 4:
            return b""
        self._done = True
        return binascii.a2b_base64(self._quad + b"=" * (4 - len(self._quad)))


class QuotedPrintableDecoder(TransferDecoder):
    """Quoted-printable as binascii.a2b_qp decodes it, cut only where an escape cannot continue."""

    def __init__(self):
        self._held = b""
        # Inside an "=" CR soft line break, which a2b_qp ends only at the next LF.
        self._skipping = False

    def feed(self, data: bytes) -> bytes:
        held = self._held + data
        if self._skipping:
            newline = held.find(b"\n")
            if newline < 0:
                self._held = b""
                return b""
            self._skipping = False
            held = held[newline + 1:]

        # After a LF no escape continues, because an escape never ends with a LF it has not consumed.
        cut = held.rfind(b"\n") + 1
        if len(held) - cut > _QP_MAX_HELD:
            return self._decode_long_line(held, cut)
        self._held = held[cut:]
        return binascii.a2b_qp(held[:cut])

    def finish(self) -> bytes:
        held, self._held = self._held, b""
        return b"" if self._skipping else binascii.a2b_qp(held)

    def _decode_long_line(self, held: bytes, line_start: int) -> bytes:
        """Decode a long line without a LF up to a point no escape spans, or up to an "=" CR break."""
        line = held[line_start:]
        found = _QP_CR_BREAK.search(line)
        if found is not None:
            self._skipping = True
            self._held = b""
            return binascii.a2b_qp(held[:line_start + found.end() - 2])

        cut = _qp_safe_cut(held, line_start)
        self._held = held[cut:]
        return binascii.a2b_qp(held[:cut])


def _qp_safe_cut(held: bytes, line_start: int) -> int:
    """Return the last cut near the end of held that splits no escape, or line_start when there is none.

    held[line_start:] starts where an escape may start and contains no "=" CR
    break. An escape that spans a cut starts with "=" in one of the 2 octets
    before it. Either "=" is just before the cut (and does not close an "=="
    pair), or "=" and a hex digit are, with another hex digit after the cut. One of the
    last 4 positions is always such a cut, so the search stays near the end
    however long the line is.
    """
    for cut in range(len(held) - 1, max(line_start, len(held) - 5), -1):
        if held[cut - 1] == _EQUALS:
            # A run of "=" pairs up from its start, so an even run ends with a whole "==".
            run = cut - line_start - len(held[line_start:cut].rstrip(b"="))
            if run % 2 == 0:
                return cut
        elif not (cut - 2 >= line_start and held[cut - 2] == _EQUALS
                  and held[cut - 1] in _HEX_DIGITS and held[cut] in _HEX_DIGITS):
            return cut
    return line_start


class _WholeDecoder(TransferDecoder):
    """uuencode, kept whole and decoded by the email package at the end.

    NOTE: a uuencoded part is held in memory whole, because it is rare and
    its decoding in the email package has its own lenient rules.
    """

    def __init__(self, cte: str):
        self._cte = cte
        self._pieces: list[bytes] = []

    def feed(self, data: bytes) -> bytes:
        self._pieces.append(data)
        return b""

    def finish(self) -> bytes:
        part = Message()
        part["Content-Transfer-Encoding"] = self._cte
        part.set_payload(b"".join(self._pieces).decode("ascii", "surrogateescape"))
        return part.get_payload(decode=True)
