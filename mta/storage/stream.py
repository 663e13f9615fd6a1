"""A chunked AES-256-GCM format for message bodies at rest ("MTAS", version 1).

A body is cut into chunks of a fixed plaintext size (64 KiB by default) and
each chunk is sealed on its own, so a body of any size is encrypted and
decrypted while holding about one chunk in memory. In short (the byte layout
and the limits are in docs/ENCRYPTION.md):

    header  = "MTAS" | version | key id length | key id | chunk size | nonce prefix
    chunk i = AES-256-GCM(key, nonce = nonce prefix | i,
                          associated data = header | i | final flag | object name)

The nonce fixes each chunk's place and the final flag marks the last chunk.
The header and the object name in every chunk's associated data make an
edited header, or an object copied under another name, fail to decrypt. So
reordered, dropped, duplicated or appended chunks, an object cut short and
flipped bits all raise a DecryptionError.

The key is a 32-octet content key made for one body. The key id names the
key that wrapped that content key (a data key), so a reader can read it with
parse_header() and choose the key to unwrap with before decrypting. The
wrapping itself is up to the caller.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mta.storage.crypto import KEY_SIZE, DecryptionError
from mta.storage.stream_header import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MAX_HEADER_SIZE,
    MAX_KEY_ID_LENGTH,
    MIN_CHUNK_SIZE,
    NONCE_PREFIX_SIZE,
    InvalidHeaderError,
    StreamHeader,
    check_chunk_size,
    check_key_id,
    header_size,
    parse_header,
    parse_header_prefix,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNKS",
    "MAX_CHUNK_SIZE",
    "MAX_HEADER_SIZE",
    "MAX_KEY_ID_LENGTH",
    "MIN_CHUNK_SIZE",
    "TAG_SIZE",
    "ChunkAuthenticationError",
    "DecryptionError",
    "InvalidHeaderError",
    "StreamDecryptor",
    "StreamEncryptor",
    "StreamHeader",
    "TrailingDataError",
    "TruncatedStreamError",
    "ciphertext_size",
    "decrypt_aiter",
    "decrypt_bytes",
    "decrypt_iter",
    "encrypt_aiter",
    "encrypt_bytes",
    "encrypt_iter",
    "parse_header",
]

TAG_SIZE = 16
# The chunk index is a 4-octet counter in the nonce.
MAX_CHUNKS = 2**32


class ChunkAuthenticationError(DecryptionError):
    """A chunk's tag did not verify: wrong key or object name, or altered data."""


class TruncatedStreamError(DecryptionError):
    """The object ends before its final chunk."""


class TrailingDataError(DecryptionError):
    """The object goes on after its final chunk."""


def ciphertext_size(plaintext_size: int, key_id: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Return the object size in octets for a body of plaintext_size octets, for Content-Length or part planning."""
    if plaintext_size < 0:
        raise ValueError(f"plaintext size must not be negative, got {plaintext_size}")
    check_key_id(key_id)
    check_chunk_size(chunk_size)

    # An empty body still has one (empty) final chunk.
    chunks = max(1, -(-plaintext_size // chunk_size))
    if chunks > MAX_CHUNKS:
        raise ValueError(f"a body of {plaintext_size} octets needs {chunks} chunks, more than {MAX_CHUNKS}")
    return header_size(key_id) + plaintext_size + chunks * TAG_SIZE


class StreamEncryptor:
    """Encrypt one body in pieces: update() with plaintext of any size, then finalize() once.

    The object is the concatenation of everything the calls return. The first
    update() returns at least the header. A chunk is sealed once more
    plaintext follows it, so finalize() seals the last chunk and flags it final.
    """

    def __init__(self, key: bytes, key_id: str, object_name: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE):
        _check_key(key)
        _check_object_name(object_name)
        self.header = StreamHeader(key_id, chunk_size, secrets.token_bytes(NONCE_PREFIX_SIZE))
        self._cipher = _ChunkCipher(key, self.header, object_name)
        self._splitter = _ChunkSplitter(chunk_size)
        self._object_name = object_name
        self._header_sent = False
        self._index = 0
        self._closed = False

    def update(self, data: bytes) -> bytes:
        """Seal the chunks that data completes and return them, after the header on the first call."""
        return b"".join(self._seal_pieces(data))

    def finalize(self) -> bytes:
        """Seal the held-back plaintext as the final chunk and return the rest of the object."""
        self._check_open()
        self._closed = True
        pieces = []
        if not self._header_sent:
            pieces.append(self.header.encode())
        pieces.append(self._seal(self._splitter.remainder(), final=True))
        return b"".join(pieces)

    def _seal_pieces(self, data: bytes) -> Iterator[bytes]:
        """Yield the header on the first call, then each chunk that data completes."""
        self._check_open()
        if not self._header_sent:
            self._header_sent = True
            yield self.header.encode()

        for plaintext in self._splitter.feed(data):
            yield self._seal(plaintext, final=False)

    def _seal(self, plaintext: bytes, final: bool) -> bytes:
        if self._index >= MAX_CHUNKS:
            self._closed = True
            raise ValueError(f"object {self._object_name} would need more than {MAX_CHUNKS} chunks")

        ciphertext = self._cipher.seal(self._index, final, plaintext)
        self._index += 1
        return ciphertext

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("encryptor already finalized (start a new one for another body)")


class StreamDecryptor:
    """Decrypt one object in pieces: update() with ciphertext of any size, then finalize() once.

    Each call returns the plaintext of the chunks completed so far, each
    released only after its tag verified. The body is whole and authentic only
    when finalize() returns, because only then is the final chunk known. Until
    then the object may still prove truncated, so act on nothing before it
    returns (for example, do not end an SMTP DATA). The first error closes the
    decryptor.
    """

    def __init__(self, key: bytes, object_name: str):
        _check_key(key)
        _check_object_name(object_name)
        self.header: StreamHeader | None = None
        self._key = key
        self._object_name = object_name
        self._header_buffer = bytearray()
        self._cipher: _ChunkCipher | None = None
        self._splitter: _ChunkSplitter | None = None
        self._index = 0
        self._closed = False

    def update(self, data: bytes) -> bytes:
        """Verify and decrypt the chunks that data completes, except the held-back last one."""
        return b"".join(self._open_pieces(data))

    def finalize(self) -> bytes:
        """Verify the last chunk as the final one and return its plaintext."""
        self._check_open()
        self._closed = True
        if self._splitter is None:
            raise TruncatedStreamError(f"object {self._object_name} ends inside its header")

        ciphertext = self._splitter.remainder()
        index = self._next_index()
        if len(ciphertext) < TAG_SIZE:
            raise TruncatedStreamError(
                f"object {self._object_name} is truncated: chunk {index} has {len(ciphertext)} octets, "
                f"fewer than its {TAG_SIZE}-octet tag"
            )

        plaintext = self._try_open(index, True, ciphertext)
        if plaintext is not None:
            return plaintext
        if self._try_open(index, False, ciphertext) is not None:
            raise TruncatedStreamError(
                f"object {self._object_name} is truncated: it ends after chunk {index}, which is not the final chunk"
            )
        # A cut inside a chunk also ends here, because it looks the same as altered data.
        raise self._authentication_error(index, "wrong key or object name, altered data, or cut inside the chunk")

    def _open_pieces(self, data: bytes) -> Iterator[bytes]:
        """Yield the plaintext of each chunk that data completes, except the held-back last one."""
        self._check_open()
        try:
            view = memoryview(data).cast("B")
            if self._splitter is None:
                view = yield from self._read_header(view)
                if self._splitter is None:
                    return
            for ciphertext in self._splitter.feed(view):
                yield self._open_middle_chunk(ciphertext)
        except DecryptionError:
            self._closed = True
            raise

    def _read_header(self, view: memoryview) -> Iterator[bytes]:
        """Buffer octets until the header parses, then set up the chunk cipher.

        A generator that yields the plaintext of chunks completed by octets
        that arrived with the header. It returns the rest of view for the caller to feed on.
        """
        room = MAX_HEADER_SIZE - len(self._header_buffer)
        self._header_buffer += view[:room]
        header = parse_header_prefix(self._header_buffer)
        if header is None:
            return view[room:]

        self.header = header
        self._cipher = _ChunkCipher(self._key, header, self._object_name)
        self._splitter = _ChunkSplitter(header.chunk_size + TAG_SIZE)
        after_header = bytes(self._header_buffer[header.size :])
        self._header_buffer = bytearray()

        for ciphertext in self._splitter.feed(after_header):
            yield self._open_middle_chunk(ciphertext)
        return view[room:]

    def _open_middle_chunk(self, ciphertext: bytes) -> bytes:
        """Open a chunk that more data follows, so it must not be final."""
        index = self._next_index()
        plaintext = self._try_open(index, False, ciphertext)
        if plaintext is not None:
            return plaintext

        # A chunk that opens as final here is followed by data it should not be.
        if self._try_open(index, True, ciphertext) is not None:
            raise TrailingDataError(f"object {self._object_name} has data after its final chunk {index}")
        raise self._authentication_error(index, "wrong key or object name, or altered data")

    def _try_open(self, index: int, final: bool, ciphertext: bytes) -> bytes | None:
        assert self._cipher is not None
        try:
            return self._cipher.open(index, final, ciphertext)
        except InvalidTag:
            return None

    def _next_index(self) -> int:
        index = self._index
        if index >= MAX_CHUNKS:
            raise TrailingDataError(f"object {self._object_name} has more than {MAX_CHUNKS} chunks")
        self._index += 1
        return index

    def _authentication_error(self, index: int, causes: str) -> ChunkAuthenticationError:
        return ChunkAuthenticationError(f"object {self._object_name}: chunk {index} failed authentication ({causes})")

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("decryptor already finalized or failed (start a new one to read the object again)")


def encrypt_bytes(
    body: bytes, key: bytes, key_id: str, object_name: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> bytes:
    """Encrypt a body held in memory into one object, for small bodies."""
    encryptor = StreamEncryptor(key, key_id, object_name, chunk_size=chunk_size)
    pieces = list(encryptor._seal_pieces(body))
    pieces.append(encryptor.finalize())
    return b"".join(pieces)


def decrypt_bytes(data: bytes, key: bytes, object_name: str) -> bytes:
    """Decrypt an object held in memory, for small bodies."""
    decryptor = StreamDecryptor(key, object_name)
    pieces = list(decryptor._open_pieces(data))
    pieces.append(decryptor.finalize())
    return b"".join(pieces)


def encrypt_iter(
    pieces: Iterable[bytes], key: bytes, key_id: str, object_name: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[bytes]:
    """Encrypt plaintext pieces of any size, yielding the header and then one sealed chunk at a time."""
    encryptor = StreamEncryptor(key, key_id, object_name, chunk_size=chunk_size)
    return _encrypt_pieces(encryptor, pieces)


def decrypt_iter(pieces: Iterable[bytes], key: bytes, object_name: str) -> Iterator[bytes]:
    """Decrypt ciphertext pieces of any size, yielding the plaintext of one verified chunk at a time.

    The body is whole only when the iterator ends without an error, as StreamDecryptor explains.
    """
    decryptor = StreamDecryptor(key, object_name)
    return _decrypt_pieces(decryptor, pieces)


def encrypt_aiter(
    pieces: AsyncIterable[bytes], key: bytes, key_id: str, object_name: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> AsyncIterator[bytes]:
    """Encrypt like encrypt_iter() from an async iterable.

    Each chunk is sealed on the event loop: about 0.1 ms for 64 KiB, more for larger chunks.
    """
    encryptor = StreamEncryptor(key, key_id, object_name, chunk_size=chunk_size)
    return _encrypt_async_pieces(encryptor, pieces)


def decrypt_aiter(pieces: AsyncIterable[bytes], key: bytes, object_name: str) -> AsyncIterator[bytes]:
    """Decrypt like decrypt_iter() from an async iterable, on the event loop."""
    decryptor = StreamDecryptor(key, object_name)
    return _decrypt_async_pieces(decryptor, pieces)


def _encrypt_pieces(encryptor: StreamEncryptor, pieces: Iterable[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        yield from encryptor._seal_pieces(piece)
    yield encryptor.finalize()


def _decrypt_pieces(decryptor: StreamDecryptor, pieces: Iterable[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        yield from _nonempty(decryptor._open_pieces(piece))
    yield from _nonempty([decryptor.finalize()])


async def _encrypt_async_pieces(encryptor: StreamEncryptor, pieces: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    async for piece in pieces:
        for ciphertext in encryptor._seal_pieces(piece):
            yield ciphertext
    yield encryptor.finalize()


async def _decrypt_async_pieces(decryptor: StreamDecryptor, pieces: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    async for piece in pieces:
        for plaintext in _nonempty(decryptor._open_pieces(piece)):
            yield plaintext
    for plaintext in _nonempty([decryptor.finalize()]):
        yield plaintext


def _nonempty(pieces: Iterable[bytes]) -> Iterator[bytes]:
    return (piece for piece in pieces if piece)


class _ChunkCipher:
    """AES-256-GCM for the chunks of one object, with nonce and associated data from each chunk's place."""

    def __init__(self, key: bytes, header: StreamHeader, object_name: str):
        self._aead = AESGCM(key)
        self._nonce_prefix = header.nonce_prefix
        self._header = header.encode()
        self._object_name = object_name.encode("utf-8")

    def seal(self, index: int, final: bool, plaintext: bytes) -> bytes:
        nonce, associated_data = self._nonce_and_associated_data(index, final)
        return self._aead.encrypt(nonce, plaintext, associated_data)

    def open(self, index: int, final: bool, ciphertext: bytes) -> bytes:
        """Return the chunk's plaintext, or raise InvalidTag."""
        nonce, associated_data = self._nonce_and_associated_data(index, final)
        return self._aead.decrypt(nonce, ciphertext, associated_data)

    def _nonce_and_associated_data(self, index: int, final: bool) -> tuple[bytes, bytes]:
        counter = index.to_bytes(4, "big")
        # The header is self-delimiting and index and flag have fixed sizes,
        # so the object name can take the rest without a length prefix.
        associated_data = self._header + counter + (b"\x01" if final else b"\x00") + self._object_name
        return self._nonce_prefix + counter, associated_data


class _ChunkSplitter:
    """Cut a byte stream into units of one size, holding back the last unit.

    A full unit is released only once an octet after it arrives, because the
    last unit, full or not, is the final chunk. remainder() returns what is
    held back: at most one unit, and empty only when nothing was fed.
    """

    def __init__(self, unit_size: int):
        self._unit_size = unit_size
        self._pending: bytearray | memoryview = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Yield each unit that data completes; consume the iterator before feeding again."""
        view = memoryview(data).cast("B")
        if self._pending and len(self._pending) + len(view) > self._unit_size:
            fill = self._unit_size - len(self._pending)
            unit = self._pending
            if fill:
                unit = bytearray(unit) if isinstance(unit, memoryview) else unit
                unit += view[:fill]
            self._pending = bytearray()
            view = view[fill:]
            yield unit

        # Slices of the caller's buffer go straight to the cipher, uncopied.
        while len(view) > self._unit_size:
            yield view[: self._unit_size]
            view = view[self._unit_size :]
        self._hold(view)

    def remainder(self) -> bytearray | memoryview:
        remainder, self._pending = self._pending, bytearray()
        return remainder

    def _hold(self, view: memoryview) -> None:
        # A whole bytes object no larger than a unit is kept by reference, so
        # chunk-sized reads are not copied: it cannot change, and it costs no
        # more memory than a copy. Other buffers may be reused by the caller.
        if not self._pending and isinstance(view.obj, bytes) and len(view.obj) <= self._unit_size:
            self._pending = view
            return

        if isinstance(self._pending, memoryview):
            self._pending = bytearray(self._pending)
        self._pending += view


def _check_key(key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"content key must be {KEY_SIZE} octets, got {len(key)}")


def _check_object_name(object_name: str) -> None:
    # An empty name would drop the binding that stops objects being swapped.
    if not object_name:
        raise ValueError("object name must not be empty")
