"""The bulk DATA reader: where data ends, dot-stuffing, the size limit, pipelined leftovers."""

from __future__ import annotations

import asyncio

import pytest

from mta.smtp.data import read_data, unstuff


async def read_chunks(chunks: list[bytes], limit: int = 1_000_000):
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    return await read_data(reader, limit, lambda: None)


async def test_data_ends_at_crlf_dot_crlf():
    result = await read_chunks([b"Subject: a\r\n\r\nbody\r\n.\r\nQUIT\r\n"])
    assert result.content == b"Subject: a\r\n\r\nbody\r\n"
    assert result.leftover == b"QUIT\r\n"


async def test_data_lf_dot_crlf_is_not_end():
    result = await read_chunks([b"hello\n.\r\nMAIL FROM:<x@example.com>\r\n\r\n.\r\n"])
    assert result.content == b"hello\n.\r\nMAIL FROM:<x@example.com>\r\n\r\n"
    assert result.leftover == b""


@pytest.mark.parametrize("split", range(1, 6))
async def test_data_terminator_split_across_chunks(split):
    stream = b"line\r\n.\r\n"
    cut = len(stream) - split
    result = await read_chunks([stream[:cut], stream[cut:]])
    assert result.content == b"line\r\n"


async def test_data_empty_message():
    result = await read_chunks([b".\r\nNOOP\r\n"])
    assert result.content == b""
    assert result.leftover == b"NOOP\r\n"


async def test_data_dot_stuffing_undone_once():
    result = await read_chunks([b"..first\r\n...second\r\n.\r\n"])
    assert result.content == b".first\r\n..second\r\n"


async def test_data_over_limit_dropped_until_end():
    body = b"x" * 76 + b"\r\n"
    result = await read_chunks([body * 100, body * 100, b".\r\nRSET\r\n"], limit=1000)
    assert result.content is None
    assert result.leftover == b"RSET\r\n"


async def test_data_over_limit_in_one_chunk():
    result = await read_chunks([b"x" * 2000 + b"\r\n.\r\n"], limit=1000)
    assert result.content is None


async def test_data_at_limit_accepted():
    result = await read_chunks([b"x" * 998 + b"\r\n.\r\n"], limit=1000)
    assert result.content == b"x" * 998 + b"\r\n"


async def test_data_connection_closed_raises():
    with pytest.raises(ConnectionResetError):
        await read_chunks([b"unfinished\r\n"])


def test_unstuff_only_line_starts():
    assert unstuff(b"a..b\r\n..c\r\n") == b"a..b\r\n.c\r\n"
