"""``mta gdpr ...``: export, erase, legal holds and retention of one person's data.

Export, erase, hold and release write an audit entry naming the address
by its keyed pseudonym (``mta gdpr pseudonym ADDRESS`` prints it), never in
clear, so that erasing the address later leaves no new entry that names it. Exit codes: 2 for an invalid address or an output file
that exists, 1 for runtime failures and for an erasure that a legal hold
rejects: the request itself is valid, but the data must be kept until the
hold is released.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mta.cli_support import EXIT_FAILURE, EXIT_USAGE, audit, run_in_transaction, run_with_bodies
from mta.config import Config
from mta.queue_commands import _actor


def add_parser(commands: argparse._SubParsersAction) -> None:
    gdpr = commands.add_parser("gdpr", help="export or erase one person's data, legal holds, retention") \
        .add_subparsers(metavar="ACTION")

    export = gdpr.add_parser("export", help="write one zip archive of an address's mail, history and records")
    export.add_argument("address")
    export.add_argument("--output", type=Path, metavar="FILE", required=True, help="new file to write")
    export.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
    export.set_defaults(run=cmd_export)

    erase = gdpr.add_parser("erase", help="erase an address's mail and records, and destroy its data keys")
    erase.add_argument("address")
    erase.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
    erase.set_defaults(run=cmd_erase)

    hold = gdpr.add_parser("hold", help="put an address under a legal hold: no erasure, no retention purge")
    hold.add_argument("address")
    hold.add_argument("--reason", required=True, type=_reason, help="why, such as a case reference")
    hold.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
    hold.set_defaults(run=cmd_hold)

    release = gdpr.add_parser("release", help="end an address's legal hold")
    release.add_argument("address")
    release.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
    release.set_defaults(run=cmd_release)

    retention = gdpr.add_parser("retention", help="purge mailbox messages older than their retention now")
    retention.add_argument("--dry-run", action="store_true", help="only print what would be purged, per mailbox")
    retention.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
    retention.set_defaults(run=cmd_retention)

    pseudonym = gdpr.add_parser("pseudonym", help="print the pseudonym that the log and audit log give an address")
    pseudonym.add_argument("address")
    pseudonym.set_defaults(run=cmd_pseudonym)


def _address_or_exit(text: str) -> str:
    from mta.smtp.policy import valid_address

    if not valid_address(text):
        print(f"mta: invalid address: {text!r}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return text.lower()


def _pseudonym_or_exit(config: Config, address: str) -> str:
    from mta.gdpr import pseudonym_of

    try:
        return pseudonym_of(config, address)
    except (OSError, ValueError) as error:
        print(f"mta: pseudonym key {config.data_path(config.logging.pseudonym_key_file)} unusable: {error}",
              file=sys.stderr)
        raise SystemExit(EXIT_FAILURE) from None


def cmd_pseudonym(config: Config, args: argparse.Namespace) -> int:
    print(_pseudonym_or_exit(config, _address_or_exit(args.address)))
    return 0


def cmd_export(config: Config, args: argparse.Namespace) -> int:
    from mta.gdpr.export import Archive, read_snapshot, write_archive
    from mta.storage.crypto import DecryptionError

    address = _address_or_exit(args.address)
    pseudonym = _pseudonym_or_exit(config, address)
    if args.output.exists():
        print(f"mta: {args.output} exists: give a new file name", file=sys.stderr)
        return EXIT_USAGE

    async def work(connection, store, bodies):
        snapshot = await read_snapshot(connection, address, pseudonym)
        result = await write_archive(Archive(snapshot, connection, store, bodies), args.output)
        await audit(connection, _actor(args), "gdpr.export", result.as_audit_detail(pseudonym))
        return result

    try:
        result = run_with_bodies(config, work)
    except OSError as error:
        print(f"mta: cannot write {args.output}: {error.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    except DecryptionError as error:
        print(f"mta: export stopped, nothing written: {error}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"exported {result.messages} message(s), {result.sent} sent message(s), {result.received_events} "
          f"delivery attempt(s) to the address, {result.suppression_entries} suppression entr(ies) and "
          f"{result.audit_entries} audit entr(ies) to {args.output}")
    print(f"sha256 {result.sha256}")
    if result.unreadable:
        print(f"{result.unreadable} message(s) could not be decrypted and are listed in mailbox.json only",
              file=sys.stderr)
    if result.removed:
        print(f"{result.removed} message(s) were removed during the export and are listed in mailbox.json only",
              file=sys.stderr)
    return 0


def _reason(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("a legal hold needs a reason, such as a case reference")
    return text.strip()


def cmd_erase(config: Config, args: argparse.Namespace) -> int:
    from mta.gdpr.erase import erase_and_record
    from mta.gdpr.holds import HeldError
    from mta.webhooks.outbox import Outbox

    address = _address_or_exit(args.address)
    pseudonym = _pseudonym_or_exit(config, address)

    async def work(connection, store, bodies):
        # Running it again is harmless, and finishes deletions that an earlier run left queued.
        outbox = Outbox(config.webhooks.endpoints) if config.webhooks.endpoints else None
        return await erase_and_record(connection, store, address, pseudonym, _actor(args), outbox=outbox)

    try:
        erasure = run_with_bodies(config, work)
    except HeldError as error:
        print(f"mta: {error}", file=sys.stderr)
        return EXIT_FAILURE
    _report_erasure(config, address, pseudonym, erasure)
    return EXIT_FAILURE if erasure.objects_failed else 0


def _report_erasure(config: Config, address: str, pseudonym: str, erasure) -> None:
    if erasure.found_nothing:
        print(f"nothing stored about {address} ({pseudonym}): never seen, or erased already")
    print(f"erased {address}, now {pseudonym}: {erasure.mailbox_messages} mailbox message(s), "
          f"{erasure.bodies} body(ies), {erasure.deliveries_removed} queued deliver(ies), "
          f"{erasure.suppression_entries} suppression entr(ies), {erasure.accounts} account(s), "
          f"{erasure.api_tokens} API token(s); ids of the data keys destroyed: "
          f"{', '.join(map(str, erasure.data_keys_destroyed)) or 'none left'}")
    print(f"pseudonymised {erasure.events_pseudonymised} delivery attempt(s), "
          f"{erasure.messages_pseudonymised} message sender(s) and {erasure.webhook_events_pseudonymised} webhook "
          f"event(s); objects deleted: {erasure.objects_deleted}")
    if erasure.objects_failed:
        print(f"mta: {erasure.objects_failed} object(s) could not be deleted from the body store: run mta gdpr "
              "erase again", file=sys.stderr)
    if erasure.deliveries_in_flight:
        print(f"mta: {erasure.deliveries_in_flight} deliver(ies) were being attempted and may still be sent: run "
              f"mta gdpr erase again after {config.delivery.lease_seconds:.0f} s", file=sys.stderr)
    if erasure.audit_entries_naming_address:
        ids = ", ".join(map(str, erasure.audit_entries_naming_address))
        print(f"note: audit entries {ids} name the address in clear; the hash chain keeps them unchanged "
              "(see README, GDPR)", file=sys.stderr)
    print(f"running MTAs may keep the data keys in memory for up to {config.storage.data_key_cache_seconds:.0f} s")


def cmd_hold(config: Config, args: argparse.Namespace) -> int:
    from mta.gdpr.holds import hold_and_record

    address = _address_or_exit(args.address)
    pseudonym = _pseudonym_or_exit(config, address)
    created = run_in_transaction(config, lambda connection: hold_and_record(
        connection, address, args.reason, _actor(args), pseudonym))
    print(f"{address} is under a legal hold" + ("" if created else " (already was; reason replaced)"))
    return 0


def cmd_release(config: Config, args: argparse.Namespace) -> int:
    from mta.gdpr.holds import release_and_record

    address = _address_or_exit(args.address)
    pseudonym = _pseudonym_or_exit(config, address)
    if not run_in_transaction(config, lambda connection: release_and_record(
            connection, address, _actor(args), pseudonym)):
        print(f"mta: {address} has no legal hold", file=sys.stderr)
        return EXIT_USAGE
    print(f"legal hold of {address} released")
    return 0


def cmd_retention(config: Config, args: argparse.Namespace) -> int:
    from mta.gdpr.retention import expired_by_mailbox, purge

    if args.dry_run:
        rows = run_in_transaction(config, lambda connection: expired_by_mailbox(connection, config.retention))
        print(f"{'MESSAGES':>8}  {'OCTETS':>12}  {'OLDEST':<16}  MAILBOX")
        for row in rows:
            print(f"{row['messages']:>8}  {row['octets']:>12}  {row['oldest']:%Y-%m-%d %H:%M}  {row['mailbox']}")
        print(f"-- {sum(row['messages'] for row in rows)} message(s) in {len(rows)} mailbox(es) would be purged")
        return 0

    async def work(connection, store, bodies):
        result = await purge(connection, store, config.retention)
        await audit(connection, _actor(args), "gdpr.retention", {
            "messages": result.messages, "bodies": result.bodies, "objects_deleted": result.objects_deleted})
        return result

    result = run_with_bodies(config, work)
    if result.busy:
        print("mta: another node is purging or erasing now; what it leaves goes in its next round", file=sys.stderr)
    print(f"purged {result.messages} mailbox message(s) and {result.bodies} body(ies); objects deleted: "
          f"{result.objects_deleted}, failed: {result.objects_failed}")
    return EXIT_FAILURE if result.objects_failed else 0
