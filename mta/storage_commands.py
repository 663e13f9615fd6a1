"""``mta storage sweep``: delete orphaned objects from the body store by hand."""

from __future__ import annotations

import argparse
import asyncio
import sys

from mta.config import Config

EXIT_FAILURE = 1
# Below this a body written for a message not yet committed could be deleted (mta/storage/sweep.py).
MIN_AGE_HOURS = 1.0


def add_parser(commands: argparse._SubParsersAction) -> None:
    storage = commands.add_parser("storage", help="the body store").add_subparsers(metavar="ACTION")
    sweep = storage.add_parser("sweep", help="delete objects that no message, mailbox delivery or attachment needs")
    sweep.add_argument("--dry-run", action="store_true", help="count the orphaned objects, delete nothing")
    sweep.add_argument("--min-age", type=_hours, metavar="HOURS",
                       help="consider only objects older than this many hours, at least 1 "
                            "(default: storage.sweep_min_age)")
    sweep.set_defaults(run=cmd_sweep)


def _hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        hours = -1.0
    if not hours >= MIN_AGE_HOURS:
        raise argparse.ArgumentTypeError(f"invalid age {text!r}: expected a number of hours, "
                                         f"{MIN_AGE_HOURS:g} or more")
    return hours


def cmd_sweep(config: Config, args: argparse.Namespace) -> int:
    from mta.cli import connect_or_exit
    from mta.storage.factory import build_store
    from mta.storage.store import StoreError
    from mta.storage.sweep import SweepBusy, sweep

    min_age = args.min_age * 3600.0 if args.min_age is not None else config.storage.sweep_min_age

    async def run():
        connection = await connect_or_exit(config)
        store = build_store(config)
        try:
            await store.start()
            return await sweep(connection, store, min_age, dry_run=args.dry_run)
        finally:
            await store.close()
            await connection.close()

    try:
        result = asyncio.run(run())
    except (SweepBusy, StoreError) as error:
        print(f"mta: storage sweep failed: {error}", file=sys.stderr)
        return EXIT_FAILURE

    verb = "would be deleted" if args.dry_run else "deleted"
    print(f"{result.listed} objects listed, {result.recent} younger than {min_age / 3600:g} h, "
          f"{result.referenced} in use, {result.orphaned} orphaned: "
          f"{result.orphaned if args.dry_run else result.deleted} {verb}; "
          f"{result.abandoned} unfinished writes {'would be removed' if args.dry_run else 'removed'}")
    if result.failed:
        print(f"mta: {result.failed} orphaned objects failed to delete; run the sweep again", file=sys.stderr)
        return EXIT_FAILURE
    return 0
