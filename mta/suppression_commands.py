"""``mta suppression ...``: list, add, remove and import suppressed recipients.

Changes are written to the audit log with the actor. Bad addresses, domains
and import lines exit with status 2 and one line naming the problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from mta.cli_support import EXIT_USAGE, audit, run_in_transaction
from mta.config import Config
from mta.queue_commands import _actor


def add_parser(commands: argparse._SubParsersAction) -> None:
    suppression = commands.add_parser("suppression", help="recipients a sender domain no longer sends to") \
        .add_subparsers(metavar="ACTION")

    listing = suppression.add_parser("list", help="list suppressed addresses that have not expired")
    listing.add_argument("--domain", help="sender domain")
    listing.add_argument("--address", help="suppressed address")
    listing.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    listing.set_defaults(run=cmd_list)

    adding = suppression.add_parser("add", help="suppress an address for a sender domain")
    adding.add_argument("sender_domain")
    adding.add_argument("address")
    adding.add_argument("--reason", default="added by an operator")
    adding.add_argument("--days", type=_days, help="expire after this many days (default: never)")
    adding.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
    adding.set_defaults(run=cmd_add)

    removing = suppression.add_parser("remove", help="stop suppressing an address for a sender domain")
    removing.add_argument("sender_domain")
    removing.add_argument("address")
    removing.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
    removing.set_defaults(run=cmd_remove)

    importing = suppression.add_parser("import", help="add lines sender_domain,address[,reason] from a CSV file")
    importing.add_argument("file", type=Path, help="CSV file, or - for standard input")
    importing.add_argument("--days", type=_days, help="expire after this many days (default: never)")
    importing.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
    importing.set_defaults(run=cmd_import)


def _run(config: Config, work) -> object:
    """Run work(connection) in a transaction; turn SuppressionError into exit status 2."""
    from mta.delivery.suppression import SuppressionError

    return run_in_transaction(config, work, (SuppressionError,))


def _days(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 3650:
        raise argparse.ArgumentTypeError(f"invalid number of days: {text!r}, expected 1 to 3650")
    return int(text)


def _expiry(days: int | None) -> datetime | None:
    return datetime.now(timezone.utc) + timedelta(days=days) if days else None


def cmd_list(config: Config, args: argparse.Namespace) -> int:
    from mta.delivery import suppression

    rows = _run(config, lambda connection: suppression.entries(connection, args.domain, args.address))
    if args.json:
        for row in rows:
            print(json.dumps({key: value.isoformat() if isinstance(value, datetime) else value
                              for key, value in dict(row).items()}))
        return 0
    print(f"{'SENDER DOMAIN':<24} {'ADDRESS':<32} {'SOURCE':<8} {'EXPIRES':<19}  REASON")
    for row in rows:
        expires = row["expires_at"].strftime("%Y-%m-%d %H:%M:%S") if row["expires_at"] else "never"
        print(f"{row['sender_domain']:<24} {row['address']:<32} {row['source']:<8} {expires:<19}  {row['reason']}")
    print(f"-- {len(rows)} suppressed address(es)")
    return 0


def cmd_add(config: Config, args: argparse.Namespace) -> int:
    from mta.delivery import suppression

    entry = suppression.Entry(args.sender_domain, args.address, args.reason, "operator", _expiry(args.days))

    async def work(connection) -> None:
        checked = suppression.check_entry(entry)
        await suppression.add(connection, [checked])
        await audit(connection, _actor(args), "suppression add",
                    {"sender_domain": checked.sender_domain, "address": checked.address, "days": args.days})

    _run(config, work)
    print(f"suppressed <{args.address.lower()}> for {args.sender_domain.lower()}")
    return 0


def cmd_remove(config: Config, args: argparse.Namespace) -> int:
    from mta.delivery import suppression

    async def work(connection) -> bool:
        removed = await suppression.remove(connection, args.sender_domain, args.address)
        if removed:
            await audit(connection, _actor(args), "suppression remove",
                        {"sender_domain": args.sender_domain.lower(), "address": args.address.lower()})
        return removed

    if not _run(config, work):
        print(f"mta: <{args.address}> is not suppressed for {args.sender_domain}", file=sys.stderr)
        return EXIT_USAGE
    print(f"removed <{args.address.lower()}> for {args.sender_domain.lower()}")
    return 0


def cmd_import(config: Config, args: argparse.Namespace) -> int:
    from mta.delivery import suppression

    try:
        text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text()
    except OSError as error:
        print(f"mta: cannot read {args.file}: {error.strerror}", file=sys.stderr)
        return EXIT_USAGE

    async def work(connection) -> int:
        entries = suppression.parse_import(text, _expiry(args.days))
        count = await suppression.add(connection, entries) if entries else 0
        await audit(connection, _actor(args), "suppression import", {"file": str(args.file), "entries": count})
        return count

    count = _run(config, work)
    print(f"imported {count} suppressed address(es)")
    return 0
