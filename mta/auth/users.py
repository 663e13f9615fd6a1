"""Mailbox users: addresses with scrypt password hashes in PostgreSQL.

Hashes are stored as ``scrypt$n$r$p$salt$hash`` (base64 fields), so the cost
can rise later without breaking old entries. Verification runs in a worker
thread because scrypt deliberately costs tens of milliseconds of CPU.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time

import asyncpg

SCRYPT_N = 2 ** 14
SCRYPT_R = 8
SCRYPT_P = 1
_KEY_LENGTH = 32


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=_KEY_LENGTH)
    encode = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt).decode()}${encode(digest).decode()}"


def verify_password(password: bytes, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password, salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


# Compared against when the user does not exist, so timing does not tell.
_DUMMY_HASH = hash_password(secrets.token_hex(16))


class VerifiedCache:
    """Recently verified credentials, so a mail client's next login skips scrypt.

    Mail clients log in on every connection, and scrypt costs tens of
    milliseconds of CPU each time, which dominated a load test. An entry is an
    HMAC, under a key made at process start, of the address, the stored hash
    and the password: the password itself is never kept, and a changed
    password (a new stored hash) misses the cache. Only successes are cached,
    so guessing still pays the full cost. Entries live ``ttl`` seconds.
    """

    def __init__(self, ttl: float = 300.0, max_entries: int = 100_000):
        self.ttl = ttl
        self.max_entries = max_entries
        self._key = secrets.token_bytes(32)
        self._entries: dict[bytes, float] = {}

    def _digest(self, address: str, stored: str, password: bytes) -> bytes:
        material = address.encode() + b"\0" + stored.encode() + b"\0" + password
        return hmac.new(self._key, material, hashlib.sha256).digest()

    def contains(self, address: str, stored: str, password: bytes) -> bool:
        digest = self._digest(address, stored, password)
        expires = self._entries.get(digest)
        if expires is None:
            return False
        if expires < time.monotonic():
            del self._entries[digest]
            return False
        return True

    def add(self, address: str, stored: str, password: bytes) -> None:
        if len(self._entries) >= self.max_entries:
            # Dropping everything is crude but bounded; it only costs some scrypt runs.
            self._entries.clear()
        self._entries[self._digest(address, stored, password)] = time.monotonic() + self.ttl


_verified = VerifiedCache()


async def authenticate(pool: asyncpg.Pool, address: str, password: bytes) -> bool:
    address = address.lower()
    row = await pool.fetchrow("SELECT password_hash FROM mailbox_user WHERE address = $1", address)
    if row is not None and _verified.contains(address, row["password_hash"], password):
        return True

    stored = row["password_hash"] if row else _DUMMY_HASH
    valid = await asyncio.to_thread(verify_password, password, stored) and row is not None
    if valid:
        _verified.add(address, stored, password)
    return valid


async def add_user(pool: asyncpg.Pool, address: str, password: str) -> None:
    password_hash = await asyncio.to_thread(hash_password, password)
    await pool.execute(
        "INSERT INTO mailbox_user (address, password_hash) VALUES ($1, $2)"
        " ON CONFLICT (address) DO UPDATE SET password_hash = EXCLUDED.password_hash",
        address.lower(), password_hash)


# Stored for accounts that receive mail but cannot log in: no scrypt hash
# ever matches it, because verify_password rejects any other scheme.
LOCKED = "locked"


async def import_users(connection: asyncpg.Connection, entries: list[tuple[str, str | None]]) -> int:
    """Insert or update many users at once; an entry without a password gets a locked account."""
    with_password = [password for _, password in entries if password is not None]
    hashed = iter(await asyncio.gather(*(asyncio.to_thread(hash_password, p) for p in with_password)))
    hashes = [LOCKED if password is None else next(hashed) for _, password in entries]
    await connection.execute(
        "INSERT INTO mailbox_user (address, password_hash)"
        " SELECT * FROM unnest($1::text[], $2::text[])"
        " ON CONFLICT (address) DO UPDATE SET password_hash = EXCLUDED.password_hash",
        [address.lower() for address, _ in entries], hashes)
    return len(entries)


async def existing_users(pool: asyncpg.Pool | asyncpg.Connection, addresses: list[str]) -> set[str]:
    rows = await pool.fetch("SELECT address FROM mailbox_user WHERE address = ANY($1::text[])",
                            [address.lower() for address in addresses])
    return {row["address"] for row in rows}


async def can_log_in(pool: asyncpg.Pool | asyncpg.Connection, address: str) -> bool:
    """Tell whether the account exists and is not locked."""
    stored = await pool.fetchval("SELECT password_hash FROM mailbox_user WHERE address = $1", address.lower())
    return stored is not None and stored != LOCKED
