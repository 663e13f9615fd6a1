"""Sealing and opening message bodies through the key hierarchy.

A new body gets a fresh 32-octet content key and becomes an MTAS object
(mta.storage.stream), whether it is kept inline in PostgreSQL or in the body
store. The content key is wrapped under a data key and the wrap is stored on
the row that references the body: ``message`` for the queue copy, and each
``mailbox_message`` row for a local delivery. The wrap binds the object name,
so a wrap copied onto another message's row fails.

A row whose data key id is NULL comes from before the key hierarchy: its
wrap is under the master key itself, and its object may be in the MTA1
format. The first four octets of the object tell MTA1 from MTAS.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mta.storage import crypto, stream
from mta.storage.crypto import KEY_SIZE, NONCE_SIZE, DecryptionError
from mta.storage.keyring import DataKey, Keyring

_CONTENT_KEY_CONTEXT = b"mta content key v1\x00"

# Bodies larger than this (octets) are sealed and opened in a worker thread,
# so that one large message does not stall every other session on the event
# loop. cryptography releases the GIL during AES-GCM, so the thread runs
# beside the loop. On a 2-core VM, `python -m loadtest baseline --size
# 1000000` accepted 0.85 times as many messages per second with a 256 KiB
# threshold as without threads, because of the hand-over and GIL contention.
# A 1 MB body stalls the loop for only about 0.7 ms, so only larger bodies,
# whose stall grows with their size, go to a thread.
THREAD_THRESHOLD = 1024 * 1024


@dataclass(frozen=True)
class Sealed:
    """A body encrypted for its first owner."""

    data: bytes = field(repr=False)
    content_key: bytes = field(repr=False)
    wrapped_key: bytes = field(repr=False)
    data_key_id: int


@dataclass(frozen=True)
class StreamSeal:
    """A body being encrypted for its first owner: the object is what its encryptor returns."""

    encryptor: stream.StreamEncryptor = field(repr=False)
    content_key: bytes = field(repr=False)
    wrapped_key: bytes = field(repr=False)
    data_key_id: int


@dataclass(frozen=True)
class Opened:
    body: bytes = field(repr=False)
    content_key: bytes = field(repr=False)


def wrap_content_key(data_key: DataKey, content_key: bytes, object_name: str) -> bytes:
    nonce = secrets.token_bytes(NONCE_SIZE)
    return nonce + data_key.aead.encrypt(nonce, content_key, _CONTENT_KEY_CONTEXT + object_name.encode())


def unwrap_content_key(data_key: DataKey, wrapped: bytes, object_name: str) -> bytes:
    try:
        return data_key.aead.decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:],
                                     _CONTENT_KEY_CONTEXT + object_name.encode())
    except InvalidTag:
        raise DecryptionError(f"content key of object {object_name} failed authentication under "
                              f"data key {data_key.id}") from None


class BodyCodec:
    """Seal new bodies under an owner's data key, and open bodies in either format."""

    def __init__(self, keyring: Keyring):
        self.keyring = keyring
        self._legacy_masters = [AESGCM(key.key) for key in keyring.masters.keys()]

    async def seal(self, object_name: str, body: bytes, owner: str) -> Sealed:
        data_key = await self.keyring.for_owner(owner)
        content_key = AESGCM.generate_key(bit_length=KEY_SIZE * 8)
        data = await _run_sized(len(body), stream.encrypt_bytes, body, content_key, data_key.key_id, object_name)
        return Sealed(data, content_key, wrap_content_key(data_key, content_key, object_name), data_key.id)

    async def seal_stream(self, object_name: str, owner: str) -> StreamSeal:
        """Start sealing a body that arrives in pieces, as seal() would seal it whole."""
        data_key = await self.keyring.for_owner(owner)
        content_key = AESGCM.generate_key(bit_length=KEY_SIZE * 8)
        encryptor = stream.StreamEncryptor(content_key, data_key.key_id, object_name)
        return StreamSeal(encryptor, content_key, wrap_content_key(data_key, content_key, object_name), data_key.id)

    async def wrap_for(self, owner: str, content_key: bytes, object_name: str) -> tuple[bytes, int]:
        """Wrap an existing body's content key for another owner; return the wrap and its data key id."""
        data_key = await self.keyring.for_owner(owner)
        return wrap_content_key(data_key, content_key, object_name), data_key.id

    async def content_key(self, object_name: str, wrapped_key: bytes, data_key_id: int | None) -> bytes:
        """Unwrap a row's content key; raise KeyDestroyedError when its data key was destroyed."""
        if data_key_id is None:
            return crypto.unwrap_legacy_body_key(self._legacy_masters, object_name, bytes(wrapped_key))
        data_key = await self.keyring.by_id(data_key_id)
        return unwrap_content_key(data_key, bytes(wrapped_key), object_name)

    async def open(self, object_name: str, data: bytes, wrapped_key: bytes, data_key_id: int | None) -> Opened:
        """Decrypt a body object with the content key from a row's wrap."""
        content_key = await self.content_key(object_name, wrapped_key, data_key_id)
        body = await _run_sized(len(data), decrypt_object, content_key, object_name, data)
        return Opened(body, content_key)


async def _run_sized(size: int, function, *args):
    """Call function(*args) on the event loop, or in a worker thread when size is above THREAD_THRESHOLD."""
    if size > THREAD_THRESHOLD:
        return await asyncio.to_thread(function, *args)
    return function(*args)


def decrypt_object(content_key: bytes, object_name: str, data: bytes) -> bytes:
    """Decrypt an MTAS or MTA1 object, choosing the format by its magic."""
    if data[:4] == crypto.MAGIC:
        return crypto.decrypt_mta1(content_key, object_name, data)
    return stream.decrypt_bytes(data, content_key, object_name)


async def decrypt_object_stream(content_key: bytes, object_name: str,
                                pieces: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Decrypt an MTAS or MTA1 object read in pieces, yielding plaintext one verified chunk at a time.

    The body is whole and authentic only when the iterator ends without a
    DecryptionError, as mta.storage.stream explains. An MTA1 object has a
    single tag over the whole body, so it is gathered and decrypted at once.
    """
    source = aiter(pieces)
    first = await anext(source, b"")
    if first[:4] == crypto.MAGIC:
        rest = [piece async for piece in source]
        yield crypto.decrypt_mta1(content_key, object_name, b"".join([first, *rest]))
        return

    async for plaintext in stream.decrypt_aiter(prepend(first, source), content_key, object_name):
        yield plaintext


async def prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Yield first, then the pieces of rest."""
    yield first
    async for piece in rest:
        yield piece
