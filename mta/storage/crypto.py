"""Envelope encryption of message bodies with AES-256-GCM.

Each body is encrypted under a fresh 256-bit key. That key is wrapped by the
master key and stored beside the envelope in PostgreSQL, so the object store
holds nothing readable on its own. The object key is bound into the GCM
associated data, so a ciphertext copied under another name fails to decrypt.

Object layout (version 1): ``b"MTA1"``, a 12-octet nonce, then the GCM
ciphertext with its 16-octet tag.

New bodies use the MTAS format and the key hierarchy (mta.storage.bodies).
BodyCipher stays to write MTA1 in benchmarks and tests, and the functions
below read the MTA1 bodies queued before the upgrade.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"MTA1"
NONCE_SIZE = 12
KEY_SIZE = 32
_WRAP_CONTEXT = b"mta body key v1"


class DecryptionError(Exception):
    """A body or wrapped key failed authentication: wrong key or tampered data."""


def load_or_create_master_key(path: Path) -> bytes:
    """Read the 32-octet master key, creating it with mode 0600 if missing.

    A new key file and its directory are fsynced, so the key survives a crash once the database names it.
    """
    if path.exists():
        key = path.read_bytes()
        if len(key) != KEY_SIZE:
            raise ValueError(f"master key {path} must be {KEY_SIZE} octets, found {len(key)}")
        return key

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(KEY_SIZE)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(key)
        file.flush()
        os.fsync(file.fileno())
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return key


class BodyCipher:
    def __init__(self, master_key: bytes):
        self._master = AESGCM(master_key)

    def encrypt(self, object_key: str, body: bytes) -> tuple[bytes, bytes]:
        """Return (object bytes, wrapped body key)."""
        body_key = AESGCM.generate_key(bit_length=256)
        nonce = secrets.token_bytes(NONCE_SIZE)
        ciphertext = AESGCM(body_key).encrypt(nonce, body, object_key.encode())

        return MAGIC + nonce + ciphertext, wrap_legacy_body_key(self._master, body_key)

    def decrypt(self, object_key: str, data: bytes, wrapped_key: bytes) -> bytes:
        body_key = unwrap_legacy_body_key([self._master], object_key, wrapped_key)
        return decrypt_mta1(body_key, object_key, data)


def unwrap_legacy_body_key(masters: list[AESGCM], object_key: str, wrapped_key: bytes) -> bytes:
    """Unwrap an MTA1 body key wrapped directly under a master key, trying each master key given in turn.

    Such wraps carry no master key id, so every loaded master key is tried.
    """
    for master in masters:
        try:
            return master.decrypt(wrapped_key[:NONCE_SIZE], wrapped_key[NONCE_SIZE:], _WRAP_CONTEXT)
        except InvalidTag:
            continue
    raise DecryptionError(f"the body key of object {object_key} failed authentication under every loaded master key")


def wrap_legacy_body_key(master: AESGCM, body_key: bytes) -> bytes:
    """Wrap a body key directly under a master key, as MTA1 rows are; used to re-wrap them on rotation."""
    wrap_nonce = secrets.token_bytes(NONCE_SIZE)
    return wrap_nonce + master.encrypt(wrap_nonce, body_key, _WRAP_CONTEXT)


def decrypt_mta1(body_key: bytes, object_key: str, data: bytes) -> bytes:
    """Decrypt an MTA1 object with its unwrapped body key."""
    if data[:4] != MAGIC:
        raise DecryptionError(f"object {object_key} has an unknown format")

    try:
        nonce = data[4:4 + NONCE_SIZE]
        return AESGCM(body_key).decrypt(nonce, data[4 + NONCE_SIZE:], object_key.encode())
    except Exception as error:
        raise DecryptionError(f"object {object_key} failed authentication") from error
