"""Data keys in PostgreSQL, created on first use and kept unwrapped in a bounded in-memory cache.

Every body's content key is wrapped under the data key of an owner: a local
mailbox, a local sender, or the inbound queue. Destroying that data key
(mta.storage.key_admin.destroy_data_key) makes those content keys unreadable.
A cached data key is used without a database round trip, so the hot path of
accepting a message reads PostgreSQL only on a cache miss.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mta.storage.crypto import KEY_SIZE, DecryptionError
from mta.storage.master_key import WRAP_VERSION, MasterKeys

log = logging.getLogger("mta.storage")

QUEUE_INBOUND = "queue:inbound"

# The id is taken before the insert because the wrap binds it.
_NEXT_ID = "SELECT nextval(pg_get_serial_sequence('data_key', 'id'))"
# Another node may create the owner's key at the same moment, so the insert
# yields to it and the select below returns whichever row won.
_CREATE = """
INSERT INTO data_key (id, owner, wrapped, master_key_id, wrap_version) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (owner) WHERE destroyed_at IS NULL DO NOTHING
"""
_BY_OWNER = """
SELECT id, owner, wrapped, master_key_id, wrap_version FROM data_key WHERE owner = $1 AND destroyed_at IS NULL
"""
_BY_ID = "SELECT id, owner, wrapped, master_key_id, wrap_version, destroyed_at FROM data_key WHERE id = $1"


class KeyDestroyedError(DecryptionError):
    """The data key a body's content key is wrapped under was destroyed: the body is erased."""


class UnknownDataKeyError(DecryptionError):
    """No data key has the id that a row names."""


def normalise_owner(owner: str) -> str:
    """Return an owner as data keys are stored: a mailbox or sender address in lower case, local part included.

    The MTA folds whole addresses to lower case before it makes their keys
    (mailbox_owner, sender_owner), so Alice@Example.COM and alice@example.com
    share one key. Other owners are returned unchanged.
    """
    kind, separator, address = owner.partition(":")
    if separator and kind.lower() in ("mailbox", "sender"):
        return f"{kind.lower()}:{address.lower()}"
    return owner


def mailbox_owner(address: str) -> str:
    return f"mailbox:{address.lower()}"


def sender_owner(address: str) -> str:
    return f"sender:{address.lower()}"


# SQLSTATE of the trigger that refuses a row naming a destroyed data key (queue/0025_live_data_keys.sql).
DESTROYED_KEY_SQLSTATE = "KD001"


@dataclass(frozen=True)
class DataKey:
    id: int
    owner: str
    aead: AESGCM = field(repr=False)

    @property
    def key_id(self) -> str:
        """The key id written into the MTAS header of bodies whose first wrap is under this key."""
        return f"data-key:{self.id}"


class Keyring:
    """Look up, create and cache the data keys of owners, on a pool or a single connection."""

    def __init__(self, database, masters: MasterKeys, cache_size: int = 10000, cache_seconds: float = 300.0):
        self.database = database
        self.masters = masters
        self._by_owner = _Cache(cache_size, cache_seconds)
        self._by_id = _Cache(cache_size, cache_seconds)
        # One lookup per owner at a time: concurrent sessions share it.
        self._pending: dict[str, asyncio.Future] = {}

    async def for_owner(self, owner: str) -> DataKey:
        """Return the owner's live data key, creating it on first use."""
        cached = self._by_owner.get(owner)
        if cached is not None:
            return cached

        # The lookup runs as its own task, so a caller that is cancelled does not cancel the others waiting.
        lookup = self._pending.get(owner)
        if lookup is None:
            lookup = asyncio.ensure_future(self._load_or_create(owner))
            self._pending[owner] = lookup
            lookup.add_done_callback(lambda done: self._lookup_done(owner, done))
        return await asyncio.shield(lookup)

    def _lookup_done(self, owner: str, lookup: asyncio.Future) -> None:
        self._pending.pop(owner, None)
        if not lookup.cancelled():
            # Marked as retrieved, so that asyncio logs no warning when every waiter was cancelled.
            lookup.exception()

    def forget_all(self) -> None:
        """Drop every cached key, after the database refused a key that another process destroyed."""
        self._by_owner.clear()
        self._by_id.clear()

    async def by_id(self, data_key_id: int) -> DataKey:
        """Return the data key with this id, or raise KeyDestroyedError or UnknownDataKeyError when it cannot be used."""
        cached = self._by_id.get(data_key_id)
        if cached is not None:
            return cached

        row = await self.database.fetchrow(_BY_ID, data_key_id)
        if row is None:
            raise UnknownDataKeyError(f"data key {data_key_id} does not exist")
        if row["destroyed_at"] is not None:
            raise KeyDestroyedError(f"data key {data_key_id} of {row['owner']} was destroyed at "
                                    f"{row['destroyed_at']:%Y-%m-%d %H:%M:%S %Z}: the body is erased")
        return self._remember(row)

    async def _load_or_create(self, owner: str) -> DataKey:
        row = await self.database.fetchrow(_BY_OWNER, owner)
        if row is None:
            key = AESGCM.generate_key(bit_length=KEY_SIZE * 8)
            data_key_id = await self.database.fetchval(_NEXT_ID)
            wrapped = self.masters.wrap_data_key(key, owner, data_key_id)
            await self.database.execute(_CREATE, data_key_id, owner, wrapped, self.masters.current.key_id,
                                        WRAP_VERSION)
            row = await self.database.fetchrow(_BY_OWNER, owner)
            if row is None:
                raise KeyDestroyedError(f"the data key of {owner} was destroyed while it was being created")
            log.info("data key %d created for %s under master key %s", row["id"], owner, row["master_key_id"])
        return self._remember(row)

    def _remember(self, row) -> DataKey:
        key = self.masters.unwrap_row(row)
        data_key = DataKey(row["id"], row["owner"], AESGCM(key))
        self._by_owner.put(data_key.owner, data_key)
        self._by_id.put(data_key.id, data_key)
        return data_key


class _Cache:
    """A least-recently-used map with a maximum size whose entries expire a fixed time after they were added."""

    def __init__(self, max_entries: int, max_age: float):
        self.max_entries = max_entries
        self.max_age = max_age
        self._entries: OrderedDict = OrderedDict()

    def get(self, name):
        entry = self._entries.get(name)
        if entry is None:
            return None
        value, expires = entry
        if time.monotonic() >= expires:
            del self._entries[name]
            return None
        self._entries.move_to_end(name)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def put(self, name, value) -> None:
        self._entries[name] = (value, time.monotonic() + self.max_age)
        self._entries.move_to_end(name)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
