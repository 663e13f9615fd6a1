"""The header of the chunked body format "MTAS" (mta.storage.stream), and its limits.

Layout (docs/ENCRYPTION.md has the table): ``b"MTAS"``, a version octet, a
key id length octet, the key id in ASCII, the plaintext chunk size as a
4-octet big-endian integer, and an 8-octet random nonce prefix.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from mta.storage.crypto import DecryptionError

MAGIC = b"MTAS"
VERSION = 1
NONCE_PREFIX_SIZE = 8

DEFAULT_CHUNK_SIZE = 64 * 1024
MIN_CHUNK_SIZE = 4 * 1024
# A larger chunk would make a reader buffer that much ciphertext, chosen by
# an unauthenticated header, before the first tag can be checked.
MAX_CHUNK_SIZE = 16 * 1024 * 1024

MAX_KEY_ID_LENGTH = 64

# Magic, version and key id length, then the key id, then chunk size and nonce prefix.
_HEAD = struct.Struct(">4sBB")
_TAIL = struct.Struct(f">I{NONCE_PREFIX_SIZE}s")
MAX_HEADER_SIZE = _HEAD.size + MAX_KEY_ID_LENGTH + _TAIL.size

# ASCII only, so a key id is safe to log and to put in a file name.
_KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]+")


class InvalidHeaderError(DecryptionError):
    """The object does not start with a well-formed MTAS version 1 header."""


@dataclass(frozen=True)
class StreamHeader:
    """The header at the start of every object, authenticated through each chunk's associated data."""

    key_id: str
    chunk_size: int
    nonce_prefix: bytes

    def __post_init__(self) -> None:
        check_key_id(self.key_id)
        check_chunk_size(self.chunk_size)
        if len(self.nonce_prefix) != NONCE_PREFIX_SIZE:
            raise ValueError(f"nonce prefix must be {NONCE_PREFIX_SIZE} octets, got {len(self.nonce_prefix)}")

    @property
    def size(self) -> int:
        """Length of the encoded header in octets."""
        return header_size(self.key_id)

    def encode(self) -> bytes:
        key_id = self.key_id.encode("ascii")
        head = _HEAD.pack(MAGIC, VERSION, len(key_id))
        return head + key_id + _TAIL.pack(self.chunk_size, self.nonce_prefix)


def header_size(key_id: str) -> int:
    """Return the length in octets of a header carrying key_id."""
    return _HEAD.size + len(key_id) + _TAIL.size


def parse_header(data: bytes) -> StreamHeader:
    """Parse the header at the start of data, to learn the key id before decrypting.

    Pass the first MAX_HEADER_SIZE octets of the object, or all of it when it
    is shorter. Raises InvalidHeaderError when the header is malformed or
    incomplete. Nothing is authenticated yet: the first chunk's tag checks the
    header.
    """
    header = parse_header_prefix(data)
    if header is None:
        raise InvalidHeaderError(f"header is incomplete: got {len(data)} octets")
    return header


def parse_header_prefix(data: bytes) -> StreamHeader | None:
    """Parse the header at the start of data, or return None while data is too short to hold it.

    Raises InvalidHeaderError as soon as the octets present are malformed.
    """
    if len(data) < _HEAD.size:
        return None
    magic, version, key_id_length = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise InvalidHeaderError(f"object does not start with {MAGIC!r}: not an MTAS object")
    if version != VERSION:
        raise InvalidHeaderError(f"unsupported MTAS format version {version}, expected {VERSION}")
    if not 1 <= key_id_length <= MAX_KEY_ID_LENGTH:
        raise InvalidHeaderError(f"key id length {key_id_length} is outside 1 to {MAX_KEY_ID_LENGTH}")

    size = _HEAD.size + key_id_length + _TAIL.size
    if len(data) < size:
        return None
    raw_key_id = bytes(data[_HEAD.size : _HEAD.size + key_id_length])
    chunk_size, nonce_prefix = _TAIL.unpack_from(data, _HEAD.size + key_id_length)

    try:
        return StreamHeader(raw_key_id.decode("ascii"), chunk_size, nonce_prefix)
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidHeaderError(f"invalid header: {error}") from error


def check_key_id(key_id: str) -> None:
    """Raise ValueError unless key_id is 1 to MAX_KEY_ID_LENGTH characters of the allowed set."""
    if not 1 <= len(key_id) <= MAX_KEY_ID_LENGTH or not _KEY_ID_PATTERN.fullmatch(key_id):
        raise ValueError(f"key id {key_id!r} must be 1 to {MAX_KEY_ID_LENGTH} characters of A-Z, a-z, 0-9 and . _ : -")


def check_chunk_size(chunk_size: int) -> None:
    """Raise ValueError unless chunk_size is within MIN_CHUNK_SIZE to MAX_CHUNK_SIZE octets."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size {chunk_size} is outside {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} octets")
