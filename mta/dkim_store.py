"""DKIM keys in PostgreSQL (queue/0026_dkim_keys.sql): sealed private keys and their states.

A private key is stored as PKCS#8 DER sealed with AES-256-GCM under the
master key, with the domain, selector and algorithm as associated data. A
key moves pending -> active -> retiring -> retired. Activation and
retirement happen in the caller's transaction, so the audit entry that the
caller writes commits with the change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mta.dkim import DkimKey, PrivateKey
from mta.dkim_keys import PublicKey, public_key_of
from mta.storage.master_key import MasterKey, MasterKeys

PENDING = "pending"
ACTIVE = "active"
RETIRING = "retiring"
RETIRED = "retired"
# States whose record stays in DNS: the next key, the signing key and the replaced one.
PUBLISHED_STATES = (PENDING, ACTIVE, RETIRING)

_SEAL_CONTEXT = b"mta dkim key v1\x00"

_COLUMNS = ("domain, selector, algorithm, state, public_key, created_at, activated_at, retire_after, retired_at")
# $8: for a retiring key, the seconds until it retires.
_INSERT = f"""
INSERT INTO dkim_key (domain, selector, algorithm, state, public_key, sealed_key, master_key_id, activated_at,
                      retire_after)
VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $4 IN ('active', 'retiring') THEN now() END,
        CASE WHEN $4 = 'retiring' THEN now() + make_interval(secs => $8) END)
ON CONFLICT (domain, selector) DO NOTHING
RETURNING {_COLUMNS}
"""
_LIST = f"""
SELECT {_COLUMNS} FROM dkim_key WHERE ($1::text IS NULL OR domain = $1)
ORDER BY domain, array_position(ARRAY['active', 'pending', 'retiring', 'retired'], state), algorithm, selector
"""
_ACTIVE_SELECTORS = "SELECT domain, selector FROM dkim_key WHERE state = 'active' ORDER BY domain, selector"
_ACTIVE_SEALED = """
SELECT domain, selector, algorithm, sealed_key, master_key_id FROM dkim_key WHERE state = 'active'
ORDER BY domain, algorithm
"""
# Locks every key of the domain, so two activations of one domain run one after the other.
_LOCK_DOMAIN = f"SELECT {_COLUMNS} FROM dkim_key WHERE domain = $1 ORDER BY selector FOR UPDATE"
_REPLACE_ACTIVE = """
UPDATE dkim_key SET state = 'retiring', retire_after = now() + make_interval(secs => $3)
WHERE domain = $1 AND algorithm = $2 AND state = 'active' RETURNING selector
"""
_ACTIVATE = """
UPDATE dkim_key SET state = 'active', activated_at = now(), retire_after = NULL WHERE domain = $1 AND selector = $2
"""
_RETIRE_EXPIRED = f"""
UPDATE dkim_key SET state = 'retired', retired_at = now(), retire_after = NULL, sealed_key = NULL
WHERE state = 'retiring' AND retire_after <= now() RETURNING {_COLUMNS}
"""
_SEALED_UNDER_OTHER = """
SELECT domain, selector, algorithm, sealed_key, master_key_id FROM dkim_key
WHERE sealed_key IS NOT NULL AND master_key_id <> $1 ORDER BY domain, selector FOR NO KEY UPDATE
"""
_RESEAL = """
UPDATE dkim_key d SET sealed_key = f.sealed, master_key_id = $4
FROM unnest($1::text[], $2::text[], $3::bytea[]) AS f (domain, selector, sealed)
WHERE d.domain = f.domain AND d.selector = f.selector
"""


class DkimKeyError(Exception):
    """A DKIM key operation that cannot run as requested: unknown selector, wrong state, name taken."""


@dataclass(frozen=True)
class StoredKey:
    """One row of dkim_key, without the sealed private key."""

    domain: str
    selector: str
    algorithm: str
    state: str
    # The p= value of the TXT record.
    public_key: str
    created_at: datetime
    activated_at: datetime | None
    retire_after: datetime | None
    retired_at: datetime | None

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.selector, self.algorithm, self.public_key)

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> StoredKey:
        return cls(**dict(row))


def algorithm_of(private_key: PrivateKey) -> str:
    if isinstance(private_key, rsa.RSAPrivateKey):
        return "rsa"
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise TypeError(f"unsupported DKIM key type {type(private_key).__name__}: expected RSA or Ed25519")


def _associated_data(domain: str, selector: str, algorithm: str) -> bytes:
    return _SEAL_CONTEXT + f"{domain}\x00{selector}\x00{algorithm}".encode()


def seal(masters: MasterKeys, domain: str, selector: str, private_key: PrivateKey) -> bytes:
    """Seal the private key's PKCS#8 DER under the current master key, bound to its row."""
    der = private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    return masters.seal(der, _associated_data(domain, selector, algorithm_of(private_key)))


def unseal(masters: MasterKeys, row: asyncpg.Record) -> PrivateKey:
    """Open a row's sealed private key; raises DecryptionError for a wrong master key or a moved value."""
    name = f"DKIM key {row['selector']} of {row['domain']}"
    der = masters.open(bytes(row["sealed_key"]), _associated_data(row["domain"], row["selector"], row["algorithm"]),
                       row["master_key_id"], name)
    return serialization.load_der_private_key(der, password=None)


async def insert_key(connection: asyncpg.Connection, masters: MasterKeys, domain: str, selector: str,
                     private_key: PrivateKey, state: str, grace: float = 0.0) -> StoredKey | None:
    """Insert a pending, active or retiring key; return None when the domain already has the selector.

    A retiring key retires after grace seconds. An active key fails with
    asyncpg.UniqueViolationError when its algorithm already has one.
    """
    public = public_key_of(private_key, selector)
    row = await connection.fetchrow(_INSERT, domain, selector, public.algorithm, state, public.data,
                                    seal(masters, domain, selector, private_key), masters.current.key_id, grace)
    return StoredKey.from_row(row) if row is not None else None


async def list_keys(connection: asyncpg.Connection, domain: str | None = None) -> list[StoredKey]:
    """Return the keys of domain, or of every domain: active first, then pending, retiring and retired."""
    return [StoredKey.from_row(row) for row in await connection.fetch(_LIST, domain)]


async def published_keys(connection: asyncpg.Connection, domain: str) -> list[PublicKey]:
    """Return the public keys whose records domain publishes: active, pending and retiring."""
    return [key.public for key in await list_keys(connection, domain) if key.state in PUBLISHED_STATES]


async def active_selectors(connection: asyncpg.Connection) -> list[tuple[str, str]]:
    """Return (domain, selector) of every active key, a cheap check of whether the signing keys changed."""
    return [(row["domain"], row["selector"]) for row in await connection.fetch(_ACTIVE_SELECTORS)]


async def load_active_keys(connection: asyncpg.Connection, masters: MasterKeys) -> list[DkimKey]:
    """Return the signing keys: every active key, unsealed."""
    rows = await connection.fetch(_ACTIVE_SEALED)
    return [DkimKey(row["domain"], row["selector"], unseal(masters, row)) for row in rows]


async def activate(connection: asyncpg.Connection, domain: str, selector: str, grace: float) -> str | None:
    """Make a pending or retiring key active and the active key of its algorithm retiring for grace seconds.

    Returns the selector of the key it replaced, or None. Raises DkimKeyError
    for an unknown selector or a key that is active or retired.
    """
    keys = {row["selector"]: StoredKey.from_row(row) for row in await connection.fetch(_LOCK_DOMAIN, domain)}
    key = keys.get(selector)
    if key is None:
        known = ", ".join(f"{other.selector} ({other.state})" for other in keys.values()) or "none"
        raise DkimKeyError(f"{domain} has no DKIM key with selector {selector!r}; its keys: {known}")
    if key.state not in (PENDING, RETIRING):
        raise DkimKeyError(f"DKIM key {selector} of {domain} is {key.state}: only a pending or retiring key "
                           "can be activated")

    replaced = await connection.fetchval(_REPLACE_ACTIVE, domain, key.algorithm, grace)
    await connection.execute(_ACTIVATE, domain, selector)
    return replaced


async def retire_expired(connection: asyncpg.Connection) -> list[StoredKey]:
    """Retire every retiring key whose grace period has ended, deleting its sealed private key."""
    return [StoredKey.from_row(row) for row in await connection.fetch(_RETIRE_EXPIRED)]


async def reseal_all(connection: asyncpg.Connection, masters: MasterKeys, new: MasterKey) -> int:
    """Re-seal every DKIM private key under new, inside the caller's transaction; return how many moved."""
    rows = await connection.fetch(_SEALED_UNDER_OTHER, new.key_id)
    target = MasterKeys(new)
    domains, selectors, sealed = [], [], []
    for row in rows:
        domains.append(row["domain"])
        selectors.append(row["selector"])
        sealed.append(seal(target, row["domain"], row["selector"], unseal(masters, row)))
    if rows:
        await connection.execute(_RESEAL, domains, selectors, sealed, new.key_id)
    return len(rows)
