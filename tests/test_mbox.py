"""The mboxrd conversion of mta.gdpr.mbox, fed in pieces split at every awkward place."""

from __future__ import annotations

import random
import re

from mta.gdpr.mbox import MAX_HELD_LINE, MboxrdConverter

MESSAGE = (b"From: a@example.net\r\nSubject: x\r\n\r\nFrom here on\r\n>From quoted\r\n>>From twice\r\n"
           b"not From \r\nbare\rCR\r\n\r\nFrom the end")


def converted_whole(body: bytes) -> bytes:
    """The conversion of a body held whole: CRLF to LF, one more '>' on each '>*From ' line, an empty line."""
    lines = body.replace(b"\r\n", b"\n").split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    quoted = [b">" + line if re.match(rb">*From ", line) else line for line in lines]
    return b"".join(line + b"\n" for line in quoted) + b"\n"


def converted_in_pieces(body: bytes, cuts: list[int]) -> bytes:
    converter = MboxrdConverter()
    output = []
    for start, end in zip([0, *cuts], [*cuts, len(body)]):
        output.append(converter.feed(body[start:end]))
    output.append(converter.finish())
    return b"".join(output)


def test_every_single_cut_matches_whole():
    expected = converted_whole(MESSAGE)

    assert b"\n>From here on\n>>From quoted\n>>>From twice\nnot From \nbare\rCR\n\n>From the end\n\n" in expected
    for cut in range(len(MESSAGE) + 1):
        assert converted_in_pieces(MESSAGE, [cut]) == expected, cut


def test_random_pieces_match_whole():
    generator = random.Random(7)
    for _ in range(200):
        body = b"".join(generator.choice([b"From ", b">", b"\r", b"\n", b"\r\n", b"x"]) for _ in range(60))
        cuts = sorted(generator.sample(range(len(body) + 1), 5))
        assert converted_in_pieces(body, cuts) == converted_whole(body), (body, cuts)


def test_long_line_written_in_parts():
    long_line = b"From " + b"y" * (3 * MAX_HELD_LINE) + b"\r\nFrom next\r\n"
    cuts = list(range(1000, len(long_line), 1000))
    converter = MboxrdConverter()

    first = converter.feed(long_line[:MAX_HELD_LINE + 10])

    assert first.startswith(b">From yyy")
    assert converted_in_pieces(long_line, cuts) == converted_whole(long_line)
