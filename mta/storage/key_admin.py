"""Operations on all data keys: the start-up check, listing, destroying and master key rotation.

Rotation re-wraps every live data key, every MTA1 body key from before the
key hierarchy and every DKIM private key under a new master key. Bodies are
not touched: their content keys stay wrapped under the same data keys. The
database records the id of the master key in use (table master_key), which
start-up checks and rotation moves.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mta.config import ConfigError
from mta.mailbox.removal import Removed, remove_mailbox_rows
from mta.storage import crypto
from mta.storage.master_key import WRAP_VERSION, MasterKey, MasterKeys

# Rows whose wraps depend on the master key: live data keys, DKIM private keys, and
# message rows from before the key hierarchy (wrapped directly under the master key).
_WRAPPED_UNDER_MASTER = """
SELECT (SELECT count(*) FROM data_key WHERE destroyed_at IS NULL)
       + (SELECT count(*) FROM dkim_key WHERE sealed_key IS NOT NULL) AS data_keys,
       (SELECT array_agg(DISTINCT id) FROM (
            SELECT master_key_id FROM data_key WHERE destroyed_at IS NULL
            UNION SELECT master_key_id FROM dkim_key WHERE sealed_key IS NOT NULL) AS wraps (id)) AS master_key_ids,
       (SELECT count(*) FROM message WHERE data_key_id IS NULL AND wrapped_key IS NOT NULL) AS legacy_wraps,
       (SELECT key_id FROM master_key) AS recorded_key_id
"""
_RECORD = "INSERT INTO master_key (key_id) VALUES ($1) ON CONFLICT (only_row) DO NOTHING"
_RECORDED = "SELECT key_id FROM master_key"
_MOVE_RECORD = """
INSERT INTO master_key (key_id) VALUES ($1)
ON CONFLICT (only_row) DO UPDATE SET key_id = excluded.key_id, recorded_at = now()
"""
_LIVE_KEYS = """
SELECT id, owner, wrapped, master_key_id, wrap_version FROM data_key WHERE destroyed_at IS NULL
ORDER BY id FOR NO KEY UPDATE
"""
_REWRAP_KEYS = """
UPDATE data_key d SET wrapped = f.wrapped, master_key_id = $3, wrap_version = $4
FROM unnest($1::bigint[], $2::bytea[]) AS f (id, wrapped) WHERE d.id = f.id
"""
# One batch of message rows from before the key hierarchy, after the id where the previous batch ended.
_LEGACY_WRAPS = """
SELECT id, wrapped_key FROM message WHERE data_key_id IS NULL AND wrapped_key IS NOT NULL AND id > $1
ORDER BY id LIMIT $2 FOR UPDATE
"""
_REWRAP_LEGACY = """
UPDATE message m SET wrapped_key = f.wrapped FROM unnest($1::text[], $2::bytea[]) AS f (id, wrapped) WHERE m.id = f.id
"""
# FOR UPDATE waits for every insert that checked the key as live (they hold FOR KEY SHARE, see
# queue/0025_live_data_keys.sql), and inserts that come later see it destroyed.
_LOCK_FOR_DESTROY = "SELECT id FROM data_key WHERE owner = $1 AND destroyed_at IS NULL FOR UPDATE"
_DESTROY = """
UPDATE data_key SET wrapped = NULL, destroyed_at = now() WHERE owner = $1 AND destroyed_at IS NULL RETURNING id
"""
_LIST = "SELECT id, owner, master_key_id, created_at, destroyed_at FROM data_key ORDER BY id"
# Mailbox rows delivered before the key hierarchy, read through their message's wrap under the master key.
_LEGACY_MAILBOX_ROWS = "SELECT id FROM mailbox_message WHERE mailbox = $1 AND wrapped_key IS NULL ORDER BY id FOR UPDATE"


class KeyAdminError(Exception):
    """An operator's key command cannot run as requested."""


# Message rows re-wrapped per transaction, so that rotation never locks the whole queue at once.
LEGACY_BATCH_SIZE = 500


@dataclass(frozen=True)
class Destroyed:
    """The result of destroying an owner's data key."""

    # None when the owner had no live data key, only older mailbox rows.
    data_key_id: int | None
    # Mailbox rows from before the key hierarchy, which no data key wraps, deleted instead.
    legacy_rows: int
    # Body store objects queued for deletion after the commit (mta.mailbox.removal).
    objects: list[str]


@dataclass(frozen=True)
class Rotation:
    old_master_key_ids: list[str]
    new_master_key_id: str
    data_keys: int
    dkim_keys: int


async def check_master_keys(connection: asyncpg.Connection, masters: MasterKeys | None) -> None:
    """Raise ConfigError when the database contains wraps that the loaded master keys cannot open.

    masters is None when the master key file does not exist yet: that is
    fine only for a database with nothing wrapped under a master key, so a
    lost key file is not silently replaced by a new key.
    """
    row = await connection.fetchrow(_WRAPPED_UNDER_MASTER)
    found_ids = sorted(row["master_key_ids"] or [])
    if masters is None:
        if row["data_keys"] or row["legacy_wraps"] or row["recorded_key_id"]:
            raise ConfigError(
                f"the master key file is missing, but the database records master key "
                f"{row['recorded_key_id'] or '(none)'} and has {row['data_keys']} data or DKIM key(s) wrapped under "
                f"master key(s) {', '.join(found_ids) or 'without an id'} and {row['legacy_wraps']} older body "
                "key(s): restore the key file (storage.master_key_file) or set storage.master_key_env")
        return

    unknown = [key_id for key_id in found_ids if key_id not in masters.ids]
    if unknown:
        raise ConfigError(
            f"data keys in the database are wrapped under master key(s) {', '.join(unknown)}, but the loaded "
            f"master key is {masters.current.key_id}: configure the right storage.master_key_file or "
            "master_key_env, or give the other key as storage.previous_master_key_file during a rotation")


async def record_master_key(connection: asyncpg.Connection, masters: MasterKeys) -> None:
    """Record the current master key's id unless one is recorded, and raise ConfigError when the recorded key is not loaded.

    Two nodes that start on an empty database may each make a key: the
    first to record wins, and the other stops here.
    """
    await connection.execute(_RECORD, masters.current.key_id)
    recorded = await connection.fetchval(_RECORDED)
    if recorded not in masters.ids:
        raise ConfigError(
            f"the database records master key {recorded}, but this node loaded {', '.join(masters.ids)}: another "
            "node made or rotated the master key first, so copy its key to storage.master_key_file (or "
            "storage.master_key_env) on this node")


async def rotate_master(connection: asyncpg.Connection, masters: MasterKeys, new: MasterKey) -> Rotation:
    """Re-wrap every live data key and DKIM private key under new and record new as the master key.

    Runs inside the caller's transaction.
    """
    from mta.dkim_store import reseal_all

    rows = await connection.fetch(_LIVE_KEYS)
    target = MasterKeys(new)
    old_ids = sorted({row["master_key_id"] for row in rows if row["master_key_id"] != new.key_id})
    ids, wraps = [], []
    for row in rows:
        if row["master_key_id"] == new.key_id:
            continue
        ids.append(row["id"])
        wraps.append(target.wrap_data_key(masters.unwrap_row(row), row["owner"], row["id"]))
    if ids:
        await connection.execute(_REWRAP_KEYS, ids, wraps, new.key_id, WRAP_VERSION)

    dkim_keys = await reseal_all(connection, masters, new)
    await connection.execute(_MOVE_RECORD, new.key_id)
    return Rotation(old_ids, new.key_id, len(ids), dkim_keys)


async def rewrap_legacy_body_keys(connection: asyncpg.Connection, masters: MasterKeys, new: MasterKey,
                                  batch_size: int = LEGACY_BATCH_SIZE) -> int:
    """Re-wrap under new the body keys of messages queued before the key hierarchy, and return how many moved.

    Each batch commits in a transaction of its own, so a run that stops
    half-way leaves every wrap under the old or the new key, both loaded,
    and the next run goes on where it stopped.
    """
    old_aeads = [AESGCM(key.key) for key in masters.keys()]
    new_aead = AESGCM(new.key)
    moved = 0
    last_id = ""
    while True:
        async with connection.transaction():
            rows = await connection.fetch(_LEGACY_WRAPS, last_id, batch_size)
            moved += await _rewrap_legacy_rows(connection, rows, old_aeads, new_aead)
        if len(rows) < batch_size:
            return moved
        last_id = rows[-1]["id"]


async def _rewrap_legacy_rows(connection: asyncpg.Connection, rows: list[asyncpg.Record], old_aeads: list[AESGCM],
                              new_aead: AESGCM) -> int:
    ids, wraps = [], []
    for row in rows:
        wrapped = bytes(row["wrapped_key"])
        # These wraps carry no master key id, so a second run finds the ones already moved by trying the new key.
        if _opens(new_aead, row["id"], wrapped):
            continue
        body_key = crypto.unwrap_legacy_body_key(old_aeads, row["id"], wrapped)
        ids.append(row["id"])
        wraps.append(crypto.wrap_legacy_body_key(new_aead, body_key))
    if ids:
        await connection.execute(_REWRAP_LEGACY, ids, wraps)
    return len(ids)


def _opens(master: AESGCM, queue_id: str, wrapped: bytes) -> bool:
    try:
        crypto.unwrap_legacy_body_key([master], queue_id, wrapped)
    except crypto.DecryptionError:
        return False
    return True


async def destroy_data_key(connection: asyncpg.Connection, owner: str) -> Destroyed:
    """Delete the wrapped octets of the owner's live data key, keeping a tombstone row, inside the caller's transaction.

    The mailbox rows of a ``mailbox:`` owner from before the key hierarchy
    are deleted, because no data key wraps their bodies. Raises
    KeyAdminError when there is neither a live key nor such a row.
    """
    removed = await _remove_legacy_mailbox_rows(connection, owner)
    await connection.fetchval(_LOCK_FOR_DESTROY, owner)
    data_key_id = await connection.fetchval(_DESTROY, owner)
    if data_key_id is None and not removed.rows:
        raise KeyAdminError(f"no live data key for owner {owner!r}: see mta keys list")
    return Destroyed(data_key_id, removed.rows, removed.objects)


async def _remove_legacy_mailbox_rows(connection: asyncpg.Connection, owner: str) -> Removed:
    kind, _, mailbox = owner.partition(":")
    if kind != "mailbox":
        return Removed(0, 0, [])
    row_ids = [row["id"] for row in await connection.fetch(_LEGACY_MAILBOX_ROWS, mailbox)]
    return await remove_mailbox_rows(connection, row_ids)


async def list_data_keys(connection: asyncpg.Connection) -> list[asyncpg.Record]:
    return await connection.fetch(_LIST)
