"""The local body store's streaming and listing methods, on a temporary directory."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from mta.storage.local import READ_SIZE, LocalStore
from mta.storage.store import StoreError


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def test_put_stream_round_trip(tmp_path):
    store = LocalStore(tmp_path)
    data = os.urandom(3 * READ_SIZE + 17)

    await store.put_stream("ABCDEF", chunks_of(data, 100_000))

    assert await store.get("ABCDEF") == data
    pieces = [piece async for piece in store.get_stream("ABCDEF")]
    assert b"".join(pieces) == data
    assert max(len(piece) for piece in pieces) == READ_SIZE


async def test_put_stream_failure_leaves_nothing(tmp_path):
    store = LocalStore(tmp_path)

    async def failing() -> AsyncIterator[bytes]:
        yield b"first part"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.put_stream("ABCDEF", failing())

    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []
    with pytest.raises(StoreError, match="failed to read object ABCDEF"):
        await store.get("ABCDEF")


async def test_list_keys_by_prefix(tmp_path):
    store = LocalStore(tmp_path)
    keys = ["AB01", "AB02", "AC01", "ZZ99"]
    for key in keys:
        await store.put(key, key.encode())
    # A temporary file of a put in progress is no object.
    (tmp_path / "AB" / "03" / "AB03.tmp").parent.mkdir(parents=True)
    (tmp_path / "AB" / "03" / "AB03.tmp").write_bytes(b"partial")

    assert [key async for key in store.list_keys()] == keys
    assert [key async for key in store.list_keys("AB")] == ["AB01", "AB02"]
    assert [key async for key in store.list_keys("A")] == ["AB01", "AB02", "AC01"]
    assert [key async for key in store.list_keys("Q")] == []

    await store.delete("AB01")
    assert [key async for key in store.list_keys("AB")] == ["AB02"]


async def test_get_stream_missing_object(tmp_path):
    store = LocalStore(tmp_path)

    with pytest.raises(StoreError, match="failed to read object NOPE"):
        async for _ in store.get_stream("NOPE"):
            pass
