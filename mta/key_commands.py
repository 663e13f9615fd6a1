"""``mta keys ...``: list data keys, destroy one, and rotate the master key.

No command prints or logs key material: only data key ids, owners, dates
and master key ids (the first 8 hex digits of the key's SHA-256). Destroying
a key and rotating the master key are written to the audit log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from mta.cli_support import EXIT_USAGE, audit, run_in_transaction
from mta.config import Config, ConfigError
from mta.queue_commands import _actor

EXIT_FAILURE = 1


def add_parser(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="data keys of bodies at rest, and the master key") \
        .add_subparsers(metavar="ACTION")

    listing = keys.add_parser("list", help="list data keys: owner, id, master key id, created, destroyed")
    listing.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    listing.set_defaults(run=cmd_list)

    destroy = keys.add_parser("destroy", help="destroy an owner's data key, which erases every body wrapped under it")
    destroy.add_argument("owner", help="such as mailbox:alice@example.com or sender:alice@example.com")
    destroy.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
    destroy.set_defaults(run=cmd_destroy)

    rotate = keys.add_parser("rotate-master", help="re-wrap every data key under the new master key, which must "
                                                   "already be storage.master_key_file or master_key_env")
    source = rotate.add_mutually_exclusive_group(required=True)
    source.add_argument("--new-key-file", type=Path, metavar="PATH", help="file with the new key: 32 raw octets")
    source.add_argument("--new-key-env", metavar="NAME",
                        help="environment variable with the new key as base64 of 32 octets")
    rotate.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
    rotate.set_defaults(run=cmd_rotate_master)


def master_keys_or_exit(config: Config):
    """Return the configured master keys, or exit 2 when they are missing or malformed."""
    from mta.storage.master_key import read_master_keys

    try:
        masters = read_master_keys(config)
    except ConfigError as error:
        print(f"mta: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    if masters is None:
        print(f"mta: master key file {config.data_path(config.storage.master_key_file)} not found: run mta from "
              "the directory where mta serve runs, or give --config", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return masters


def body_codec(config: Config, connection):
    """Return a BodyCodec over one connection, for commands that read or write bodies."""
    from mta.storage.bodies import BodyCodec
    from mta.storage.keyring import Keyring

    return BodyCodec(Keyring(connection, master_keys_or_exit(config)))


def cmd_list(config: Config, args: argparse.Namespace) -> int:
    from mta.storage.key_admin import list_data_keys

    rows = run_in_transaction(config, list_data_keys)
    if args.json:
        for row in rows:
            print(json.dumps({"id": row["id"], "owner": row["owner"], "master_key_id": row["master_key_id"],
                              "created_at": row["created_at"].isoformat(),
                              "destroyed_at": row["destroyed_at"].isoformat() if row["destroyed_at"] else None}))
        return 0

    print(f"{'ID':>8}  {'MASTER':<8}  {'CREATED':<19}  {'DESTROYED':<19}  OWNER")
    for row in rows:
        destroyed = f"{row['destroyed_at']:%Y-%m-%d %H:%M:%S}" if row["destroyed_at"] else "-"
        print(f"{row['id']:>8}  {row['master_key_id']:<8}  {row['created_at']:%Y-%m-%d %H:%M:%S}  "
              f"{destroyed:<19}  {row['owner']}")
    return 0


def cmd_destroy(config: Config, args: argparse.Namespace) -> int:
    from mta.storage.key_admin import KeyAdminError, destroy_data_key
    from mta.storage.keyring import normalise_owner
    from mta.storage.store import StoreError

    owner = normalise_owner(args.owner)

    async def work(connection):
        destroyed = await destroy_data_key(connection, owner)
        await audit(connection, _actor(args), "keys.destroy", {
            "owner": owner, "data_key_id": destroyed.data_key_id, "legacy_mailbox_rows": destroyed.legacy_rows})
        return destroyed

    destroyed = run_in_transaction(config, work, (KeyAdminError,))
    if destroyed.data_key_id is not None:
        print(f"data key {destroyed.data_key_id} of {owner} destroyed: every body wrapped under it is unreadable")
        print(f"running MTAs may keep it in memory for up to {config.storage.data_key_cache_seconds:.0f} s "
              "(storage.data_key_cache_seconds)")
    if destroyed.legacy_rows:
        print(f"deleted {destroyed.legacy_rows} mailbox message(s) of {owner} delivered before the key hierarchy")

    try:
        deleted, failed = asyncio.run(_after_destroy(config))
    except StoreError as error:
        deleted, failed = 0, len(destroyed.objects)
        print(f"mta: body store failed: {error}", file=sys.stderr)
    if deleted:
        print(f"deleted {deleted} object(s) from the body store")
    if failed:
        print(f"mta: {failed} object(s) are still queued for deletion from the body store: run mta gdpr "
              "retention once the store is reachable", file=sys.stderr)
        return EXIT_FAILURE
    return 0


async def _after_destroy(config: Config) -> tuple[int, int]:
    """Vacuum the destroyed key's old row versions, then delete the objects queued for deletion.

    Returns how many objects were deleted and how many failed.
    """
    from mta.cli import connect_or_exit
    from mta.mailbox.removal import delete_queued_objects
    from mta.storage.factory import build_store

    connection = await connect_or_exit(config)
    store = build_store(config)
    try:
        # NOTE: WAL segments, replicas and base backups keep the wrapped octets
        # until they expire; those are still wrapped under the master key.
        await connection.execute("VACUUM data_key")
        await store.start()
        return await delete_queued_objects(connection, store)
    finally:
        await store.close()
        await connection.close()


def cmd_rotate_master(config: Config, args: argparse.Namespace) -> int:
    from mta.storage.crypto import DecryptionError
    from mta.storage.master_key import MasterKey, key_from_environment, key_from_file

    masters = master_keys_or_exit(config)
    try:
        new_key = key_from_file(args.new_key_file) if args.new_key_file else key_from_environment(args.new_key_env)
    except ConfigError as error:
        print(f"mta: {error}", file=sys.stderr)
        return EXIT_USAGE
    new = MasterKey.from_bytes(new_key)
    # Nodes must unwrap with the new key before any data key moves to it, so it has to be configured first.
    if new.key_id != masters.current.key_id:
        print(f"mta: the new master key {new.key_id} is not the configured master key {masters.current.key_id}: "
              "first make the new key storage.master_key_file (or master_key_env) and the old one "
              "storage.previous_master_key_file on every node, restart them, then run rotate-master",
              file=sys.stderr)
        return EXIT_USAGE

    try:
        legacy, rotation = asyncio.run(_rotate(config, masters, new, _actor(args)))
    except DecryptionError as error:
        print(f"mta: rotation failed before the data keys were re-wrapped: {error}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"re-wrapped {rotation.data_keys} data key(s), {legacy} older body key(s) and {rotation.dkim_keys} "
          f"DKIM key(s) from master key(s) {', '.join(rotation.old_master_key_ids) or '(none)'} to "
          f"{rotation.new_master_key_id}")
    print("next: remove storage.previous_master_key_file on every node and restart them")
    return 0


async def _rotate(config: Config, masters, new, actor: str):
    """Re-wrap the older body keys batch by batch, then the data keys and the record in one transaction."""
    from mta.cli import connect_or_exit
    from mta.storage.key_admin import rewrap_legacy_body_keys, rotate_master

    connection = await connect_or_exit(config)
    try:
        legacy = await rewrap_legacy_body_keys(connection, masters, new)
        async with connection.transaction():
            rotation = await rotate_master(connection, masters, new)
            await audit(connection, actor, "keys.rotate-master", {
                "old_master_key_ids": rotation.old_master_key_ids, "new_master_key_id": rotation.new_master_key_id,
                "data_keys": rotation.data_keys, "legacy_body_keys": legacy, "dkim_keys": rotation.dkim_keys})
    finally:
        await connection.close()
    return legacy, rotation
