"""``mta user list|delete|lock`` and ``mta auth unblock``: the rest of an account's life.

Deleting or locking an account and clearing AUTH blocks are written to the
audit log with the actor. An unknown account exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from mta.cli_support import EXIT_USAGE, audit, run_in_transaction
from mta.config import Config
from mta.queue_commands import _actor


def add_parsers(user: argparse._SubParsersAction, commands: argparse._SubParsersAction) -> None:
    listing = user.add_parser("list", help="list users, and whether each can log in")
    listing.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    listing.set_defaults(run=cmd_list)

    for name, text in (("delete", "remove a user: no more login, and mail to the address is refused"),
                       ("lock", "keep the address but refuse its logins, until user add sets a password")):
        action = user.add_parser(name, help=text)
        action.add_argument("address")
        action.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
        action.set_defaults(run=cmd_change, action=name)

    auth = commands.add_parser("auth", help="AUTH failure blocks").add_subparsers(metavar="ACTION")
    unblock = auth.add_parser("unblock", help="clear the failure count of a client address or an account")
    unblock.add_argument("--client", metavar="ADDRESS", help="client IP address (an IPv6 one clears its /64)")
    unblock.add_argument("--account", metavar="LOGIN", help="login name")
    unblock.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
    unblock.set_defaults(run=cmd_unblock)


def cmd_list(config: Config, args: argparse.Namespace) -> int:
    from mta.auth.users import LOCKED

    rows = run_in_transaction(config, lambda connection: connection.fetch(
        "SELECT address, password_hash = $1 AS locked FROM mailbox_user ORDER BY address", LOCKED))
    if args.json:
        for row in rows:
            print(json.dumps({"address": row["address"], "login": not row["locked"]}))
        return 0
    for row in rows:
        print(f"{row['address']:<40} {'locked' if row['locked'] else 'login'}")
    print(f"-- {len(rows)} user(s)")
    return 0


def cmd_change(config: Config, args: argparse.Namespace) -> int:
    from mta.auth.users import LOCKED

    address = args.address.lower()

    async def work(connection) -> bool:
        if args.action == "delete":
            status = await connection.execute("DELETE FROM mailbox_user WHERE address = $1", address)
        else:
            status = await connection.execute("UPDATE mailbox_user SET password_hash = $2 WHERE address = $1",
                                              address, LOCKED)
        if status.endswith(" 0"):
            return False
        await audit(connection, _actor(args), f"user {args.action}", {"address": address})
        return True

    if not run_in_transaction(config, work):
        print(f"mta: user not found: {address}", file=sys.stderr)
        return EXIT_USAGE
    print(f"user {address} {'deleted' if args.action == 'delete' else 'locked'}")
    return 0


def cmd_unblock(config: Config, args: argparse.Namespace) -> int:
    from mta.auth.throttle import account_key, client_key

    if not args.client and not args.account:
        print("mta: give --client ADDRESS, --account LOGIN, or both", file=sys.stderr)
        return EXIT_USAGE
    keys = []
    if args.client:
        keys.append(client_key(args.client))
    if args.account:
        keys.append(account_key(args.account))

    async def work(connection) -> int:
        status = await connection.execute("DELETE FROM auth_failure WHERE key = ANY($1::text[])", keys)
        await audit(connection, _actor(args), "auth unblock", {"keys": keys})
        return int(status.split()[-1])

    cleared = run_in_transaction(config, work)
    print(f"cleared {cleared} of {len(keys)} failure count(s): {', '.join(keys)}")
    return 0
