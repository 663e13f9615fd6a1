"""Keyed pseudonyms for the email addresses in log output.

``alice@example.com`` becomes ``anon.<16 hex digits>@example.com``: the
first 64 bits of HMAC-SHA256 over the lower-cased address, keyed with 32
random octets kept in a file (mode 0600) under the data directory. The same
address always gives the same pseudonym, so an operator can still follow one
person's mail through the log, but cannot recover the address without the
key. With 64 bits, the chance that two of a million addresses share a
pseudonym is about 3e-8 (the birthday bound, an estimate).

The domain stays in clear: delivery problems are diagnosed per destination
domain (its MX hosts, throttling, DMARC), and each delivery line already
names the remote host in ``relay=``. The local part is what names a person.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sys
import threading
from pathlib import Path

KEY_SIZE = 32
PSEUDONYM_HEX_DIGITS = 16
PREFIX = "anon."
# Written instead of the pseudonym when the key cannot be read or created, so no address leaks.
UNKEYED = "anon.unkeyed"

# A quoted local part, or one without the characters that delimit addresses in log lines
# and replies (whitespace, <>()[],;:"@). This matches more than RFC 5321 allows, which is
# the safe side: an address missed would appear in clear. The domain is a dotted name or an
# address literal; a full stop that ends a sentence is left out.
ADDRESS = re.compile(
    r'(?:"[^"\r\n]*"|[^\s<>()\[\],;:"@]+)'
    r"@(?P<domain>\[[^\]\s]+\]|[\w-]+(?:\.[\w-]+)*)")


class Pseudonymiser:
    """Replacement of every email address in a text by its keyed pseudonym.

    The key is read, or created, on the first address. A key that cannot be
    used is reported once on standard error, and addresses are then
    replaced by ``anon.unkeyed`` rather than written in clear.
    """

    def __init__(self, key_path: Path):
        self.key_path = key_path
        self._key: bytes | None = None
        self._key_failed = False
        self._lock = threading.Lock()

    def apply(self, text: str) -> str:
        if "@" not in text:
            return text
        return ADDRESS.sub(self._replace, text)

    def pseudonym(self, address: str) -> str:
        """Return the pseudonym of a whole address, without its domain."""
        key = self._load_key()
        if key is None:
            return UNKEYED
        return local_pseudonym(key, address)

    def _replace(self, match: re.Match) -> str:
        return f"{self.pseudonym(match.group(0))}@{match.group('domain').lower()}"

    def _load_key(self) -> bytes | None:
        if self._key is not None or self._key_failed:
            return self._key
        with self._lock:
            if self._key is None and not self._key_failed:
                try:
                    self._key = load_or_create_key(self.key_path)
                except (OSError, ValueError) as error:
                    # Logging the failure would run this formatter again, so it goes to stderr directly.
                    print(f"mta: log pseudonym key {self.key_path} unusable, addresses in the log are "
                          f"replaced by {UNKEYED}: {error}", file=sys.stderr)
                    self._key_failed = True
        return self._key


def local_pseudonym(key: bytes, address: str) -> str:
    """Return ``anon.`` and the first 16 hex digits of HMAC-SHA256 over the lower-cased address."""
    digest = hmac.new(key, address.lower().encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return PREFIX + digest[:PSEUDONYM_HEX_DIGITS]


def address_pseudonym(key: bytes, address: str) -> str:
    """Return the pseudonym that log lines give a whole address: ``anon.<hex>@domain``."""
    domain = address.rpartition("@")[2].lower()
    return f"{local_pseudonym(key, address)}@{domain}"


def load_or_create_key(path: Path) -> bytes:
    """Read the pseudonym key, creating it with mode 0600 when missing.

    Workers may log their first address at the same moment, so the new key
    is written to a temporary file and linked into place: the first link
    wins and every process reads that one key.
    """
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(secrets.token_bytes(KEY_SIZE))
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(temporary)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) != KEY_SIZE:
        raise ValueError(f"the key must be {KEY_SIZE} octets, found {len(key)}")
    return key
