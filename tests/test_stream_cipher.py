"""The chunked body format (mta.storage.stream): round trips, tampering, limits and memory.

Every test makes its own random key. Tampering tests cut an object into its
header and chunks by the sizes the format fixes, edit them, and check that
decryption raises the expected DecryptionError subclass.
"""

from __future__ import annotations

import hashlib
import os
import random
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from mta.storage import stream
from mta.storage.crypto import DecryptionError
from mta.storage.stream import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MAX_HEADER_SIZE,
    MAX_KEY_ID_LENGTH,
    MIN_CHUNK_SIZE,
    TAG_SIZE,
    ChunkAuthenticationError,
    InvalidHeaderError,
    StreamDecryptor,
    StreamEncryptor,
    TrailingDataError,
    TruncatedStreamError,
    ciphertext_size,
    decrypt_aiter,
    decrypt_bytes,
    decrypt_iter,
    encrypt_aiter,
    encrypt_bytes,
    encrypt_iter,
    parse_header,
)

KEY_ID = "dk-2026-12-01"
NAME = "4DS3EJN23MFPI5D4"
KIB = 1024
MIB = 1024 * KIB
CHUNK_SIZES = [64 * KIB, 1 * MIB]


def new_key() -> bytes:
    return os.urandom(32)


def split_object(data: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[bytes, list[bytes]]:
    """Cut an object into its header and its chunks' ciphertexts."""
    header_size = len(parse_header(data[:MAX_HEADER_SIZE]).encode())
    unit = chunk_size + TAG_SIZE
    body = data[header_size:]
    return data[:header_size], [body[start : start + unit] for start in range(0, len(body), unit)]


def random_pieces(data: bytes, rng: random.Random, max_size: int) -> Iterator[bytes]:
    """Yield data in pieces of random sizes from 0 to max_size octets."""
    start = 0
    while start < len(data):
        size = rng.randint(0, max_size)
        yield data[start : start + size]
        start += size


# Round trips


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("size_of", [
    lambda chunk: 0,
    lambda chunk: 1,
    lambda chunk: chunk - 1,
    lambda chunk: chunk,
    lambda chunk: chunk + 1,
    lambda chunk: 3 * chunk + 5,
], ids=["empty", "one", "chunk-1", "chunk", "chunk+1", "several"])  # fmt: skip
def test_round_trip_sizes(chunk_size: int, size_of: Callable[[int], int]) -> None:
    key = new_key()
    body = os.urandom(size_of(chunk_size))

    data = encrypt_bytes(body, key, KEY_ID, NAME, chunk_size=chunk_size)

    assert len(data) == ciphertext_size(len(body), KEY_ID, chunk_size)
    assert decrypt_bytes(data, key, NAME) == body


@pytest.mark.parametrize("seed", range(6))
def test_round_trip_random_splits(seed: int) -> None:
    rng = random.Random(seed)
    key = new_key()
    chunk_size = rng.choice([MIN_CHUNK_SIZE, 64 * KIB])
    body = rng.randbytes(rng.randint(0, 4 * chunk_size))

    encryptor = StreamEncryptor(key, KEY_ID, NAME, chunk_size=chunk_size)
    data = b"".join(encryptor.update(piece) for piece in random_pieces(body, rng, 2 * chunk_size))
    data += encryptor.finalize()

    decryptor = StreamDecryptor(key, NAME)
    plaintext = b"".join(decryptor.update(piece) for piece in random_pieces(data, rng, 2 * chunk_size))
    plaintext += decryptor.finalize()

    assert plaintext == body


def test_decrypt_one_octet_at_a_time() -> None:
    key = new_key()
    body = os.urandom(DEFAULT_CHUNK_SIZE + 1)
    data = encrypt_bytes(body, key, KEY_ID, NAME)

    decryptor = StreamDecryptor(key, NAME)
    plaintext = b"".join(decryptor.update(data[i : i + 1]) for i in range(len(data)))
    plaintext += decryptor.finalize()

    assert plaintext == body


def test_encrypt_one_octet_at_a_time() -> None:
    key = new_key()
    body = os.urandom(2 * MIN_CHUNK_SIZE + 3)

    encryptor = StreamEncryptor(key, KEY_ID, NAME, chunk_size=MIN_CHUNK_SIZE)
    data = b"".join(encryptor.update(body[i : i + 1]) for i in range(len(body)))
    data += encryptor.finalize()

    assert decrypt_bytes(data, key, NAME) == body


def test_encrypt_accepts_bytearray_and_memoryview() -> None:
    key = new_key()
    body = os.urandom(3 * MIN_CHUNK_SIZE)

    encryptor = StreamEncryptor(key, KEY_ID, NAME, chunk_size=MIN_CHUNK_SIZE)
    data = encryptor.update(bytearray(body[:100])) + encryptor.update(memoryview(body)[100:])
    data += encryptor.finalize()

    assert decrypt_bytes(memoryview(data), key, NAME) == body


def test_encrypt_copies_reused_buffer() -> None:
    key = new_key()
    body = os.urandom(MIN_CHUNK_SIZE)
    buffer = bytearray(body)
    encryptor = StreamEncryptor(key, KEY_ID, NAME, chunk_size=MIN_CHUNK_SIZE)

    # The held-back chunk must not change when the caller reuses its buffer.
    data = encryptor.update(buffer)
    buffer[:] = bytes(len(buffer))
    data += encryptor.finalize()

    assert decrypt_bytes(data, key, NAME) == body


def test_encrypt_iter_round_trip() -> None:
    key = new_key()
    body = os.urandom(5 * DEFAULT_CHUNK_SIZE + 17)
    pieces = [b"", body[:10], b"", body[10 : 3 * DEFAULT_CHUNK_SIZE], body[3 * DEFAULT_CHUNK_SIZE :]]

    ciphertexts = list(encrypt_iter(pieces, key, KEY_ID, NAME))
    plaintexts = list(decrypt_iter(ciphertexts, key, NAME))

    assert b"".join(plaintexts) == body
    assert all(0 < len(piece) <= DEFAULT_CHUNK_SIZE for piece in plaintexts)


def test_encrypt_iter_yields_one_chunk_at_a_time() -> None:
    key = new_key()
    body = os.urandom(10 * DEFAULT_CHUNK_SIZE)

    ciphertexts = list(encrypt_iter([body], key, KEY_ID, NAME))

    # The header, then ten chunks each yielded on its own.
    assert len(ciphertexts) == 11
    assert max(map(len, ciphertexts)) == DEFAULT_CHUNK_SIZE + TAG_SIZE


def test_encrypt_iter_empty_body() -> None:
    key = new_key()

    data = b"".join(encrypt_iter([], key, KEY_ID, NAME))

    assert len(data) == ciphertext_size(0, KEY_ID)
    assert list(decrypt_iter([data], key, NAME)) == []


async def test_async_iter_round_trip() -> None:
    key = new_key()
    body = os.urandom(2 * DEFAULT_CHUNK_SIZE + 99)

    async def plaintext_source() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 10_000):
            yield body[start : start + 10_000]

    ciphertexts = [piece async for piece in encrypt_aiter(plaintext_source(), key, KEY_ID, NAME)]

    async def ciphertext_source() -> AsyncIterator[bytes]:
        for piece in ciphertexts:
            yield piece

    plaintexts = [piece async for piece in decrypt_aiter(ciphertext_source(), key, NAME)]

    assert b"".join(plaintexts) == body


def test_decryptor_holds_back_last_chunk() -> None:
    key = new_key()
    body = os.urandom(2 * DEFAULT_CHUNK_SIZE)
    header, chunks = split_object(encrypt_bytes(body, key, KEY_ID, NAME))
    decryptor = StreamDecryptor(key, NAME)

    # A full chunk could be the final one until an octet after it arrives.
    first = decryptor.update(header + chunks[0])
    second = decryptor.update(chunks[1])
    last = decryptor.finalize()

    assert first == b""
    assert second == body[:DEFAULT_CHUNK_SIZE]
    assert last == body[DEFAULT_CHUNK_SIZE:]


def test_decryptor_exposes_header() -> None:
    key = new_key()
    data = encrypt_bytes(b"body", key, KEY_ID, NAME, chunk_size=MIN_CHUNK_SIZE)
    decryptor = StreamDecryptor(key, NAME)

    decryptor.update(data[:5])
    before = decryptor.header
    decryptor.update(data[5:])

    assert before is None
    assert decryptor.header is not None
    assert decryptor.header.key_id == KEY_ID
    assert decryptor.header.chunk_size == MIN_CHUNK_SIZE


def test_encryptions_differ() -> None:
    key = new_key()

    first = encrypt_bytes(b"same body", key, KEY_ID, NAME)
    second = encrypt_bytes(b"same body", key, KEY_ID, NAME)

    assert first != second


# Header


def test_parse_header_reads_key_id() -> None:
    data = encrypt_bytes(os.urandom(1000), new_key(), KEY_ID, NAME, chunk_size=MIN_CHUNK_SIZE)

    header = parse_header(data[:MAX_HEADER_SIZE])

    assert header.key_id == KEY_ID
    assert header.chunk_size == MIN_CHUNK_SIZE
    assert header.size == len(header.encode())


def test_parse_header_longest_key_id() -> None:
    key_id = "k" * MAX_KEY_ID_LENGTH
    data = encrypt_bytes(b"", new_key(), key_id, NAME)

    header = parse_header(data)

    assert header.key_id == key_id
    assert header.size == MAX_HEADER_SIZE


def test_parse_header_rejects_incomplete() -> None:
    data = encrypt_bytes(b"", new_key(), KEY_ID, NAME)

    with pytest.raises(InvalidHeaderError, match="incomplete"):
        parse_header(data[:10])


# Each case edits one header field. The offsets follow the layout: magic
# 0-3, version 4, key id length 5, key id from 6, then chunk size and nonce
# prefix. Parsing rejects some edits, and the first chunk's tag catches the rest.
HEADER_EDITS = [
    ("magic", lambda h: b"MTAX" + h[4:], InvalidHeaderError),
    ("version", lambda h: h[:4] + b"\x02" + h[5:], InvalidHeaderError),
    ("key id length zero", lambda h: h[:5] + b"\x00" + h[6:], InvalidHeaderError),
    ("key id length too long", lambda h: h[:5] + bytes([MAX_KEY_ID_LENGTH + 1]) + h[6:], InvalidHeaderError),
    # The chunk size then starts with the key id's last character, far above the maximum.
    ("key id length shorter", lambda h: h[:5] + bytes([h[5] - 1]) + h[6:], InvalidHeaderError),
    ("key id character", lambda h: h[:6] + b"e" + h[7:], ChunkAuthenticationError),
    ("key id invalid character", lambda h: h[:6] + b" " + h[7:], InvalidHeaderError),
    ("chunk size smaller", lambda h: _replace_chunk_size(h, MIN_CHUNK_SIZE), ChunkAuthenticationError),
    ("chunk size larger", lambda h: _replace_chunk_size(h, 1 * MIB), ChunkAuthenticationError),
    ("chunk size too large", lambda h: _replace_chunk_size(h, MAX_CHUNK_SIZE + 1), InvalidHeaderError),
    ("nonce prefix", lambda h: h[:-1] + bytes([h[-1] ^ 1]), ChunkAuthenticationError),
]


def _replace_chunk_size(header: bytes, chunk_size: int) -> bytes:
    offset = 6 + header[5]
    return header[:offset] + chunk_size.to_bytes(4, "big") + header[offset + 4 :]


@pytest.mark.parametrize("edit, expected", [case[1:] for case in HEADER_EDITS], ids=[case[0] for case in HEADER_EDITS])
def test_header_edit_fails(edit: Callable[[bytes], bytes], expected: type[Exception]) -> None:
    key = new_key()
    body = os.urandom(3 * DEFAULT_CHUNK_SIZE + 10)
    header, chunks = split_object(encrypt_bytes(body, key, KEY_ID, NAME))

    with pytest.raises(expected):
        decrypt_bytes(edit(header) + b"".join(chunks), key, NAME)


def test_header_edit_releases_nothing() -> None:
    key = new_key()
    header, chunks = split_object(encrypt_bytes(os.urandom(3 * DEFAULT_CHUNK_SIZE), key, KEY_ID, NAME))
    edited = header[:-1] + bytes([header[-1] ^ 1])
    decryptor = StreamDecryptor(key, NAME)

    with pytest.raises(ChunkAuthenticationError, match="chunk 0 "):
        decryptor.update(edited + b"".join(chunks))


# Tampering with chunks. The object has four chunks, the last one short.


def _swap(chunks: list[bytes], i: int, j: int) -> list[bytes]:
    swapped = list(chunks)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    return swapped


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def _flip_chunk(chunks: list[bytes], index: int, offset: int) -> list[bytes]:
    flipped = list(chunks)
    flipped[index] = _flip(flipped[index], offset)
    return flipped


CHUNK_EDITS = [
    ("reorder first two", lambda c: _swap(c, 0, 1), ChunkAuthenticationError),
    ("reorder middle two", lambda c: _swap(c, 1, 2), ChunkAuthenticationError),
    ("move final chunk first", lambda c: [c[3], c[0], c[1], c[2]], ChunkAuthenticationError),
    ("drop final chunk", lambda c: c[:3], TruncatedStreamError),
    ("drop first chunk", lambda c: c[1:], ChunkAuthenticationError),
    ("drop middle chunk", lambda c: [c[0], c[2], c[3]], ChunkAuthenticationError),
    ("drop all chunks", lambda c: [], TruncatedStreamError),
    ("cut inside middle chunk", lambda c: [c[0], c[1][:1000]], ChunkAuthenticationError),
    ("cut inside final tag", lambda c: c[:3] + [c[3][:-1]], ChunkAuthenticationError),
    ("cut before a tag fits", lambda c: c[:3] + [c[3][: TAG_SIZE - 1]], TruncatedStreamError),
    ("duplicate middle chunk", lambda c: [c[0], c[1], c[1], c[2], c[3]], ChunkAuthenticationError),
    ("duplicate final chunk", lambda c: c + [c[3]], ChunkAuthenticationError),
    ("append a middle chunk", lambda c: c + [c[1]], ChunkAuthenticationError),
    ("append one octet", lambda c: c + [b"\x00"], ChunkAuthenticationError),
    ("flip first chunk", lambda c: _flip_chunk(c, 0, 0), ChunkAuthenticationError),
    ("flip middle chunk", lambda c: _flip_chunk(c, 2, 40_000), ChunkAuthenticationError),
    ("flip middle tag", lambda c: _flip_chunk(c, 1, -1), ChunkAuthenticationError),
    ("flip final chunk", lambda c: _flip_chunk(c, 3, 3), ChunkAuthenticationError),
    ("flip final tag", lambda c: _flip_chunk(c, 3, -TAG_SIZE), ChunkAuthenticationError),
]


@pytest.mark.parametrize("edit, expected", [case[1:] for case in CHUNK_EDITS], ids=[case[0] for case in CHUNK_EDITS])
def test_chunk_edit_fails(edit: Callable[[list[bytes]], list[bytes]], expected: type[Exception]) -> None:
    key = new_key()
    body = os.urandom(3 * DEFAULT_CHUNK_SIZE + 100)
    header, chunks = split_object(encrypt_bytes(body, key, KEY_ID, NAME))
    assert len(chunks) == 4

    with pytest.raises(expected):
        decrypt_bytes(header + b"".join(edit(chunks)), key, NAME)


# With a full final chunk, anything after it shows as data after the final chunk.
FULL_FINAL_EDITS = [
    ("append a copy of the final chunk", lambda c: c + [c[-1]], TrailingDataError),
    ("append one octet", lambda c: c + [b"\x00"], TrailingDataError),
    ("drop final chunk", lambda c: c[:-1], TruncatedStreamError),
    ("swap final and previous", lambda c: _swap(c, 1, 2), ChunkAuthenticationError),
]


@pytest.mark.parametrize(
    "edit, expected", [case[1:] for case in FULL_FINAL_EDITS], ids=[case[0] for case in FULL_FINAL_EDITS]
)
def test_full_final_chunk_edit_fails(edit: Callable[[list[bytes]], list[bytes]], expected: type[Exception]) -> None:
    key = new_key()
    body = os.urandom(3 * DEFAULT_CHUNK_SIZE)
    header, chunks = split_object(encrypt_bytes(body, key, KEY_ID, NAME))
    assert len(chunks) == 3

    with pytest.raises(expected):
        decrypt_bytes(header + b"".join(edit(chunks)), key, NAME)


def test_empty_body_edits_fail() -> None:
    key = new_key()
    data = encrypt_bytes(b"", key, KEY_ID, NAME)

    with pytest.raises(TruncatedStreamError):
        decrypt_bytes(data[:-TAG_SIZE], key, NAME)
    # The final chunk is not full, so what follows it fails as part of it.
    with pytest.raises(ChunkAuthenticationError):
        decrypt_bytes(data + b"\x00", key, NAME)
    with pytest.raises(ChunkAuthenticationError):
        decrypt_bytes(data + data[-TAG_SIZE:] * 5000, key, NAME)
    with pytest.raises(ChunkAuthenticationError):
        decrypt_bytes(_flip(data, len(data) - 1), key, NAME)


def test_chunk_from_another_object_fails() -> None:
    key = new_key()
    body = os.urandom(3 * DEFAULT_CHUNK_SIZE + 100)
    header, chunks = split_object(encrypt_bytes(body, key, KEY_ID, NAME))
    _, other_chunks = split_object(encrypt_bytes(body, key, KEY_ID, NAME))

    # Same key, name and plaintext, but another nonce prefix.
    spliced = header + chunks[0] + other_chunks[1] + chunks[2] + chunks[3]

    with pytest.raises(ChunkAuthenticationError, match="chunk 1 "):
        decrypt_bytes(spliced, key, NAME)


def test_truncated_inside_header_fails() -> None:
    key = new_key()
    data = encrypt_bytes(b"body", key, KEY_ID, NAME)

    with pytest.raises(TruncatedStreamError, match="header"):
        decrypt_bytes(data[:10], key, NAME)
    with pytest.raises(TruncatedStreamError, match="header"):
        decrypt_bytes(b"", key, NAME)


def test_not_an_mtas_object_fails() -> None:
    with pytest.raises(InvalidHeaderError, match="not an MTAS object"):
        decrypt_bytes(b"MTA1" + os.urandom(100), new_key(), NAME)


def test_wrong_key_fails() -> None:
    data = encrypt_bytes(os.urandom(1000), new_key(), KEY_ID, NAME)

    with pytest.raises(ChunkAuthenticationError, match="wrong key"):
        decrypt_bytes(data, new_key(), NAME)


def test_wrong_object_name_fails() -> None:
    key = new_key()
    data = encrypt_bytes(os.urandom(1000), key, KEY_ID, NAME)

    with pytest.raises(ChunkAuthenticationError, match="object name"):
        decrypt_bytes(data, key, "4DS3EJN23MFPI5D5")


def test_failure_is_a_decryption_error() -> None:
    data = encrypt_bytes(os.urandom(1000), new_key(), KEY_ID, NAME)

    with pytest.raises(DecryptionError):
        decrypt_bytes(data, new_key(), NAME)


def test_decrypt_iter_stops_at_tampered_chunk() -> None:
    key = new_key()
    body = os.urandom(3 * DEFAULT_CHUNK_SIZE + 100)
    header, chunks = split_object(encrypt_bytes(body, key, KEY_ID, NAME))
    released = []

    with pytest.raises(ChunkAuthenticationError, match="chunk 2 "):
        for plaintext in decrypt_iter([header, *_flip_chunk(chunks, 2, 5)], key, NAME):
            released.append(plaintext)

    assert b"".join(released) == body[: 2 * DEFAULT_CHUNK_SIZE]


# Arguments and limits


@pytest.mark.parametrize("chunk_size", [0, MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1])
def test_chunk_size_out_of_range_rejected(chunk_size: int) -> None:
    with pytest.raises(ValueError, match="chunk size"):
        StreamEncryptor(new_key(), KEY_ID, NAME, chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [MIN_CHUNK_SIZE, MAX_CHUNK_SIZE])
def test_chunk_size_limits_accepted(chunk_size: int) -> None:
    key = new_key()
    body = os.urandom(MIN_CHUNK_SIZE + 1)

    data = encrypt_bytes(body, key, KEY_ID, NAME, chunk_size=chunk_size)

    assert decrypt_bytes(data, key, NAME) == body


@pytest.mark.parametrize("key_id", ["", "k" * (MAX_KEY_ID_LENGTH + 1), "data key", "schlüssel", "a/b"])
def test_invalid_key_id_rejected(key_id: str) -> None:
    with pytest.raises(ValueError, match="key id"):
        StreamEncryptor(new_key(), key_id, NAME)


@pytest.mark.parametrize("key", [b"", bytes(16), bytes(33)])
def test_wrong_key_size_rejected(key: bytes) -> None:
    with pytest.raises(ValueError, match="32 octets"):
        StreamEncryptor(key, KEY_ID, NAME)
    with pytest.raises(ValueError, match="32 octets"):
        StreamDecryptor(key, NAME)


def test_empty_object_name_rejected() -> None:
    with pytest.raises(ValueError, match="object name"):
        StreamEncryptor(new_key(), KEY_ID, "")
    with pytest.raises(ValueError, match="object name"):
        StreamDecryptor(new_key(), "")


def test_encryptor_rejects_use_after_finalize() -> None:
    encryptor = StreamEncryptor(new_key(), KEY_ID, NAME)
    encryptor.finalize()

    with pytest.raises(ValueError, match="already finalized"):
        encryptor.update(b"more")
    with pytest.raises(ValueError, match="already finalized"):
        encryptor.finalize()


def test_decryptor_rejects_use_after_failure() -> None:
    data = encrypt_bytes(os.urandom(3 * DEFAULT_CHUNK_SIZE), new_key(), KEY_ID, NAME)
    decryptor = StreamDecryptor(new_key(), NAME)

    with pytest.raises(ChunkAuthenticationError):
        decryptor.update(data)
    with pytest.raises(ValueError, match="failed"):
        decryptor.update(b"")
    with pytest.raises(ValueError, match="failed"):
        decryptor.finalize()


def test_max_chunks_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    key = new_key()
    longer = encrypt_bytes(os.urandom(3 * MIN_CHUNK_SIZE + 1), key, KEY_ID, NAME, chunk_size=MIN_CHUNK_SIZE)
    monkeypatch.setattr(stream, "MAX_CHUNKS", 3)

    exact = encrypt_bytes(os.urandom(3 * MIN_CHUNK_SIZE), key, KEY_ID, NAME, chunk_size=MIN_CHUNK_SIZE)
    assert len(decrypt_bytes(exact, key, NAME)) == 3 * MIN_CHUNK_SIZE

    with pytest.raises(ValueError, match="more than 3 chunks"):
        encrypt_bytes(os.urandom(3 * MIN_CHUNK_SIZE + 1), key, KEY_ID, NAME, chunk_size=MIN_CHUNK_SIZE)
    with pytest.raises(TrailingDataError, match="more than 3 chunks"):
        decrypt_bytes(longer, key, NAME)
    with pytest.raises(ValueError, match="more than 3"):
        ciphertext_size(3 * MIN_CHUNK_SIZE + 1, KEY_ID, MIN_CHUNK_SIZE)


def test_ciphertext_size_formula() -> None:
    header = len(KEY_ID) + 18

    assert ciphertext_size(0, KEY_ID) == header + TAG_SIZE
    assert ciphertext_size(DEFAULT_CHUNK_SIZE, KEY_ID) == header + DEFAULT_CHUNK_SIZE + TAG_SIZE
    assert ciphertext_size(DEFAULT_CHUNK_SIZE + 1, KEY_ID) == header + DEFAULT_CHUNK_SIZE + 1 + 2 * TAG_SIZE
    assert ciphertext_size(10 * MIB, KEY_ID, 1 * MIB) == header + 10 * MIB + 10 * TAG_SIZE


def test_ciphertext_size_rejects_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        ciphertext_size(-1, KEY_ID)


# Memory

BODY_SIZE = 50 * 1000 * 1000
PEAK_LIMIT = 8 * 1000 * 1000


@pytest.mark.parametrize("chunk_size, piece_size", [(64 * KIB, 100_003), (1 * MIB, 64 * KIB)])
def test_large_body_streams_in_bounded_memory(chunk_size: int, piece_size: int) -> None:
    key = new_key()
    block = os.urandom(piece_size)
    count = BODY_SIZE // piece_size
    expected = hashlib.sha256()
    for _ in range(count):
        expected.update(block)

    def plaintext_source() -> Iterator[bytes]:
        for _ in range(count):
            yield block

    tracemalloc.start()
    try:
        ciphertexts = encrypt_iter(plaintext_source(), key, KEY_ID, NAME, chunk_size=chunk_size)
        received = hashlib.sha256()
        size = 0
        for plaintext in decrypt_iter(ciphertexts, key, NAME):
            received.update(plaintext)
            size += len(plaintext)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert size == count * piece_size
    assert received.digest() == expected.digest()
    assert peak < PEAK_LIMIT, f"peak {peak} octets for a {size}-octet body"
