"""``mta api token create|list|revoke``: bearer tokens of the HTTP API.

Creating and revoking a token are written to the audit log with the actor,
the token's name, id and scopes, never the token itself. A bad name, scope,
account or sender domain exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from mta.cli_support import EXIT_USAGE, audit, run_in_transaction
from mta.config import Config
from mta.queue_commands import _actor


def add_parser(commands: argparse._SubParsersAction) -> None:
    api = commands.add_parser("api", help="the HTTP API").add_subparsers(metavar="ACTION")
    token = api.add_parser("token", help="bearer tokens of the HTTP API").add_subparsers(metavar="ACTION")

    create = token.add_parser("create", help="create a token and print it once")
    create.add_argument("name", help="unique name among active tokens, used in the audit log")
    create.add_argument("--scope", action="append", default=[], dest="scopes", metavar="SCOPE",
                        help="allow an endpoint group; repeat for several (send, queue:read, queue:write, "
                             "suppression:read, suppression:write, audit:read, mailbox:read, gdpr)")
    create.add_argument("--account", metavar="ADDRESS",
                        help="send scope: mail must come from this submission user, as on submission")
    create.add_argument("--sender-domain", action="append", default=[], dest="sender_domains", metavar="DOMAIN",
                        help="send scope: mail may come from any address of this local domain; repeatable")
    create.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
    create.set_defaults(run=cmd_create)

    listing = token.add_parser("list", help="list tokens with their scopes, active ones first")
    listing.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    listing.set_defaults(run=cmd_list)

    revoke = token.add_parser("revoke", help="revoke the active token of that name at once")
    revoke.add_argument("name")
    revoke.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
    revoke.set_defaults(run=cmd_revoke)


def _run(config: Config, work) -> object:
    from mta.api.tokens import TokenError

    return run_in_transaction(config, work, (TokenError,))


def cmd_create(config: Config, args: argparse.Namespace) -> int:
    from mta.api import tokens
    from mta.auth import users

    for domain in args.sender_domains:
        if not config.is_local_domain(domain):
            print(f"mta: {domain} is not in domains.local: a token may only send for local domains",
                  file=sys.stderr)
            return EXIT_USAGE

    async def work(connection) -> str:
        if args.account and not await users.existing_users(connection, [args.account]):
            raise tokens.TokenError(f"no submission user {args.account}: add it with mta user add first")
        token_id, token = await tokens.create(connection, args.name, args.scopes, args.account,
                                              args.sender_domains)
        await audit(connection, _actor(args), "api token create",
                    {"name": args.name, "id": token_id, "scopes": sorted(set(args.scopes)),
                     "account": args.account, "sender_domains": args.sender_domains})
        return token

    token = _run(config, work)
    print(token)
    print("mta: store this token now: it cannot be shown again", file=sys.stderr)
    return 0


def cmd_list(config: Config, args: argparse.Namespace) -> int:
    from mta.api import tokens

    rows = _run(config, tokens.listing)
    if args.json:
        for row in rows:
            print(json.dumps({"id": row["id"], "name": row["name"], "scopes": list(row["scopes"]),
                              "account": row["account"], "sender_domains": list(row["sender_domains"]),
                              "created_at": row["created_at"].isoformat(),
                              "revoked_at": row["revoked_at"].isoformat() if row["revoked_at"] else None}))
        return 0

    print(f"{'NAME':<24} {'ID':<12} {'STATE':<7} {'CREATED':<19}  SCOPES; SENDS AS")
    for row in rows:
        state = "revoked" if row["revoked_at"] else "active"
        sends_as = row["account"] or ", ".join(row["sender_domains"]) or "-"
        print(f"{row['name']:<24} {row['id']:<12} {state:<7} {row['created_at']:%Y-%m-%d %H:%M:%S}  "
              f"{' '.join(row['scopes'])}; {sends_as}")
    print(f"-- {len(rows)} token(s)")
    return 0


def cmd_revoke(config: Config, args: argparse.Namespace) -> int:
    from mta.api import tokens

    async def work(connection) -> str | None:
        token_id = await tokens.revoke(connection, args.name)
        if token_id is not None:
            await audit(connection, _actor(args), "api token revoke", {"name": args.name, "id": token_id})
        return token_id

    token_id = _run(config, work)
    if token_id is None:
        print(f"mta: no active token named {args.name!r}", file=sys.stderr)
        return EXIT_USAGE
    print(f"revoked token {args.name} ({token_id})")
    return 0
