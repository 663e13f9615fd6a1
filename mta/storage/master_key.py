"""The master key: where it comes from, its id, and the wrapping of data keys under it.

The master key comes from ``storage.master_key_env`` (base64 of 32 octets in
that environment variable) when set, otherwise from ``storage.master_key_file``
(32 raw octets, created with mode 0600 on first start). Its id, the first 8
hex digits of its SHA-256, is stored with every data key it wraps, so a
rotation can tell keys under the old master from keys under the new one. The
id reveals nothing usable about the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mta.config import Config, ConfigError
from mta.storage.crypto import KEY_SIZE, NONCE_SIZE, DecryptionError, load_or_create_master_key

# Associated data of a data key's wrap, by the wrap_version of its row (queue/0027_master_key_record.sql):
# version 1 binds the owner, and version 2, which new wraps use, the owner and the data key's id.
_DATA_KEY_CONTEXT_V1 = b"mta data key v1\x00"
_DATA_KEY_CONTEXT_V2 = b"mta data key v2\x00"
WRAP_VERSION = 2


class MasterKeyMismatchError(DecryptionError):
    """A data key is wrapped under a master key that is not loaded."""


@dataclass(frozen=True)
class MasterKey:
    key: bytes = field(repr=False)
    key_id: str

    @classmethod
    def from_bytes(cls, key: bytes) -> MasterKey:
        return cls(key, master_key_id(key))


def master_key_id(key: bytes) -> str:
    """Return the first 8 hex digits of the key's SHA-256, which name the key in the database and the audit log."""
    return hashlib.sha256(key).hexdigest()[:8]


class MasterKeys:
    """The current master key, which wraps new data keys, and an optional previous one, which only unwraps."""

    def __init__(self, current: MasterKey, previous: MasterKey | None = None):
        self.current = current
        self.previous = previous if previous is not None and previous.key_id != current.key_id else None
        self._aeads = {key.key_id: AESGCM(key.key) for key in self.keys()}

    def keys(self) -> list[MasterKey]:
        return [self.current] if self.previous is None else [self.current, self.previous]

    @property
    def ids(self) -> list[str]:
        return [key.key_id for key in self.keys()]

    def wrap_data_key(self, data_key: bytes, owner: str, data_key_id: int) -> bytes:
        """Wrap a data key under the current master key as WRAP_VERSION.

        The owner and the data key's id are bound in, so a wrap moved to another row fails.
        """
        return self.seal(data_key, _data_key_context(WRAP_VERSION, owner, data_key_id))

    def unwrap_data_key(self, wrapped: bytes, owner: str, key_id: str, data_key_id: int, wrap_version: int) -> bytes:
        """Unwrap a data key with the master key named key_id, or raise DecryptionError when that key is not loaded or fails."""
        return self.open(wrapped, _data_key_context(wrap_version, owner, data_key_id), key_id,
                         f"data key {data_key_id} of {owner}")

    def unwrap_row(self, row) -> bytes:
        """Unwrap the data key of a data_key row that has id, owner, wrapped, master_key_id and wrap_version."""
        return self.unwrap_data_key(bytes(row["wrapped"]), row["owner"], row["master_key_id"], row["id"],
                                    row["wrap_version"])

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt plaintext under the current master key: a fresh nonce, then the GCM ciphertext and tag.

        associated_data must name the purpose and the row, so that a sealed
        value opens only where it was written.
        """
        nonce = secrets.token_bytes(NONCE_SIZE)
        return nonce + self._aeads[self.current.key_id].encrypt(nonce, plaintext, associated_data)

    def open(self, sealed: bytes, associated_data: bytes, key_id: str, name: str) -> bytes:
        """Decrypt what seal() returned under the master key named key_id; name says what it is in errors.

        Raises MasterKeyMismatchError when that master key is not loaded and
        DecryptionError when the value fails authentication.
        """
        aead = self._aeads.get(key_id)
        if aead is None:
            raise MasterKeyMismatchError(
                f"{name} is wrapped under master key {key_id}, but the loaded master keys are "
                f"{', '.join(self.ids)}: configure the right storage.master_key_file or master_key_env")
        try:
            return aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], associated_data)
        except InvalidTag:
            raise DecryptionError(f"{name} failed authentication under master key {key_id}") from None


def _data_key_context(wrap_version: int, owner: str, data_key_id: int) -> bytes:
    if wrap_version == 1:
        return _DATA_KEY_CONTEXT_V1 + owner.encode()
    if wrap_version == 2:
        return _DATA_KEY_CONTEXT_V2 + owner.encode() + b"\x00" + str(data_key_id).encode()
    raise DecryptionError(f"data key {data_key_id} of {owner} has unknown wrap version {wrap_version}")


def read_master_keys(config: Config) -> MasterKeys | None:
    """Read the configured master keys, or return None when the master key file does not exist yet.

    Raises ConfigError for a missing environment variable, a malformed key or an unreadable file.
    """
    storage = config.storage
    if storage.master_key_env:
        current = MasterKey.from_bytes(key_from_environment(storage.master_key_env))
    else:
        path = config.data_path(storage.master_key_file)
        if not path.exists():
            return None
        current = MasterKey.from_bytes(key_from_file(path))

    previous = None
    if storage.previous_master_key_file:
        try:
            previous = MasterKey.from_bytes(key_from_file(config.data_path(storage.previous_master_key_file)))
        except ConfigError as error:
            raise ConfigError(f"storage.previous_master_key_file: {error}") from None
    return MasterKeys(current, previous)


def create_master_key(config: Config) -> MasterKeys:
    """Create the master key file (mode 0600) for a new installation and return the keys."""
    key = load_or_create_master_key(config.data_path(config.storage.master_key_file))
    return MasterKeys(MasterKey.from_bytes(key))


def key_from_file(path: Path) -> bytes:
    try:
        key = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read master key file {path}: {error.strerror}") from None
    if len(key) != KEY_SIZE:
        raise ConfigError(f"master key file {path} must contain {KEY_SIZE} octets, found {len(key)}")
    return key


def key_from_environment(name: str) -> bytes:
    """Decode the base64 master key in environment variable name. Errors never include the value."""
    text = os.environ.get(name)
    if not text:
        raise ConfigError(f"environment variable {name} (storage.master_key_env) is missing or empty: "
                          f"set it to the base64 of {KEY_SIZE} random octets")
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"environment variable {name} is not valid base64") from None
    if len(key) != KEY_SIZE:
        raise ConfigError(f"environment variable {name} must contain base64 of {KEY_SIZE} octets, "
                          f"found {len(key)} octets")
    return key
