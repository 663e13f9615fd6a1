"""``mta audit verify`` and ``mta audit export``: the audit trail for an auditor."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime, timezone

from mta.config import Config

EXIT_FAILURE = 1


def add_parser(commands: argparse._SubParsersAction) -> None:
    audit = commands.add_parser("audit", help="the hash-chained audit log").add_subparsers(metavar="ACTION")
    verify = audit.add_parser("verify", help="recompute the chain and name the first altered entry")
    verify.set_defaults(run=cmd_verify)
    export = audit.add_parser("export", help="print entries with their hashes as JSON lines")
    export.add_argument("--from", dest="start", type=_moment, metavar="TIME",
                        help="first moment, ISO 8601 (for example 2026-12-01 or 2026-12-01T08:00:00+00:00)")
    export.add_argument("--to", dest="end", type=_moment, metavar="TIME", help="moment after the last entry")
    export.add_argument("--after-id", type=_entry_id, metavar="N", help="only entries with ids greater than N")
    export.add_argument("--to-id", type=_entry_id, metavar="N", help="only entries with ids up to and including N")
    export.add_argument("--action", dest="actions", action="append", metavar="ACTION",
                        help='only entries of this action, such as "message accepted"; repeat for several')
    export.set_defaults(run=cmd_export)
    audit.add_parser("actions", help="list the actions in the log with their entry counts").set_defaults(
        run=cmd_actions)


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid time {text!r}, expected ISO 8601 such as 2026-12-01") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _entry_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid entry id {text!r}, expected a whole number 0 or greater")
    return value


def _with_connection(config: Config, work):
    from mta.cli import connect_or_exit

    async def run():
        connection = await connect_or_exit(config)
        try:
            return await work(connection)
        finally:
            await connection.close()

    return asyncio.run(run())


def cmd_verify(config: Config, args: argparse.Namespace) -> int:
    from mta import audit

    result = _with_connection(config, audit.verify)
    if result.broken_at is not None:
        print(f"mta: audit entry {result.broken_at} is altered: {result.reason}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{result.entries} audit entries verified; chain head {result.head.hex()}")
    return 0


def cmd_export(config: Config, args: argparse.Namespace) -> int:
    from mta import audit

    selection = audit.Selection(args.start, args.end, args.after_id, args.to_id, args.actions)

    async def work(connection) -> tuple[list, list[str]]:
        entries = await audit.export(connection, selection)
        unknown = []
        if args.actions:
            known = {row["action"] for row in await connection.fetch(
                "SELECT DISTINCT action FROM audit_log WHERE action = ANY($1::text[])", args.actions)}
            unknown = [action for action in args.actions if action not in known]
        return entries, unknown

    entries, unknown = _with_connection(config, work)
    for entry in entries:
        print(json.dumps(entry))
    if unknown:
        # Not an error: the action may simply not have happened yet, but a typo looks the same.
        print(f"mta: note: no audit entry has the action {', '.join(map(repr, unknown))}; "
              "mta audit actions lists the actions in the log", file=sys.stderr)
    return 0


def cmd_actions(config: Config, args: argparse.Namespace) -> int:
    rows = _with_connection(config, lambda connection: connection.fetch(
        "SELECT action, count(*) AS entries FROM audit_log GROUP BY action ORDER BY action"))
    for row in rows:
        print(f"{row['entries']:>8}  {row['action']}")
    return 0
