"""``mta queue ...``: the operator's commands for the queue, on top of mta.spool.admin.

Malformed or unknown queue ids and bad filters exit with status 2 and one
line naming the problem. A database that cannot be reached exits with 1.
The queue modules are imported only when a queue command runs: importing
them loads the metrics, which ``mta serve`` with several workers must set
up first.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable

from mta.config import Config

EXIT_USAGE = 2
# Some messages were not changed because a node was delivering them.
EXIT_BUSY = 1
STATES = ("active", "deferred", "held")
UNCHANGED_REASON = {
    "hold": "already held or with no delivery left in the queue",
    "release": "not held",
    "retry": "held, being delivered, or with no delivery left in the queue",
    "delete": "with no delivery left in the queue",
    "bounce": "with no delivery left in the queue",
}


def add_parser(commands: argparse._SubParsersAction) -> None:
    queue = commands.add_parser("queue", help="inspect and steer the queue").add_subparsers(metavar="ACTION")

    listing = queue.add_parser("list", help="list queued deliveries")
    listing.add_argument("--sender", help="envelope sender (case-insensitive)")
    listing.add_argument("--recipient", help="one of the delivery's recipients (case-insensitive)")
    listing.add_argument("--domain", help="destination domain")
    listing.add_argument("--state", choices=STATES, help="active (being delivered), deferred or held")
    listing.add_argument("--older-than", type=_age, metavar="AGE", help="arrived more than AGE ago (30m, 4h, 2d)")
    listing.add_argument("--newer-than", type=_age, metavar="AGE", help="arrived less than AGE ago")
    listing.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    listing.set_defaults(run=cmd_list)

    show = queue.add_parser("show", help="show one message: envelope, deliveries and attempts")
    show.add_argument("queue_id")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(run=cmd_show)

    summary = queue.add_parser("summary", help="queued deliveries per domain and age, like Postfix's qshape")
    summary.add_argument("--top", type=int, default=20, metavar="N", help="domains details (default %(default)s)")
    summary.set_defaults(run=cmd_summary)

    for name, text in (("hold", "hold messages: no delivery attempt until released"),
                       ("release", "release held messages and make them due now"),
                       ("retry", "make messages' deferred deliveries due now"),
                       ("delete", "remove messages from the queue without notice to the sender"),
                       ("bounce", "fail messages' queued recipients and notify the sender")):
        action = queue.add_parser(name, help=text)
        action.add_argument("queue_ids", nargs="+", metavar="QUEUE_ID")
        action.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
        action.set_defaults(run=cmd_action, action=name)

    flush = queue.add_parser("flush", help="make every deferred delivery due now")
    flush.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
    flush.set_defaults(run=cmd_flush)


def _age(text: str):
    from mta.spool import admin

    try:
        return admin.parse_age(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _actor(args: argparse.Namespace) -> str:
    if args.actor:
        return args.actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _run(config: Config, work: Callable[..., Awaitable[object]]) -> object:
    """Run work(connection) and turn AdminError into exit status 2."""
    from mta.cli import EXIT_FAILURE, connect_or_exit
    from mta.spool import admin
    from mta.storage.crypto import DecryptionError

    async def run() -> object:
        connection = await connect_or_exit(config)
        try:
            return await work(connection)
        finally:
            await connection.close()

    try:
        return asyncio.run(run())
    except admin.AdminError as error:
        print(f"mta: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except DecryptionError as error:
        print(f"mta: cannot decrypt a message body: {error}", file=sys.stderr)
        raise SystemExit(EXIT_FAILURE) from None


def cmd_list(config: Config, args: argparse.Namespace) -> int:
    from mta.spool import admin

    filters = admin.Filters(args.sender, args.recipient, args.domain, args.state, args.older_than, args.newer_than)
    rows = _run(config, lambda connection: admin.list_deliveries(connection, filters))
    if args.json:
        for row in rows:
            print(json.dumps(admin.as_json(row)))
        return 0

    print(f"{'QUEUE ID':<16} {'SIZE':>8} {'ARRIVED':<19} {'STATE':<8} {'ATTEMPTS':>8}  SENDER -> RECIPIENTS")
    for row in rows:
        arrived = row["received_at"].strftime("%Y-%m-%d %H:%M:%S")
        print(f"{row['message_id']:<16} {row['size']:>8} {arrived:<19} {row['state']:<8} {row['attempts']:>8}  "
              f"<{row['sender']}> -> {', '.join(row['recipients'])}")
        if row["last_reply"]:
            print(f"{'':<16} last reply: {row['last_reply']}")
    print(f"-- {_count(len(rows), 'delivery', 'deliveries')} in the queue")
    return 0


def cmd_show(config: Config, args: argparse.Namespace) -> int:
    from mta.spool import admin

    (queue_id,) = _checked_ids(args.queue_id)
    details = _run(config, lambda connection: admin.show(connection, queue_id))
    if args.json:
        print(json.dumps(admin.as_json(details), indent=2))
        return 0

    message = details["message"]
    print(f"queue id:  {message['id']}")
    print(f"sender:    <{message['sender']}>")
    print(f"size:      {message['size']}")
    print(f"arrived:   {message['received_at']:%Y-%m-%d %H:%M:%S %Z} via {message['origin']}, "
          f"session {message['session_id']}")
    print(f"completed: {message['completed_at']:%Y-%m-%d %H:%M:%S %Z}" if message["completed_at"] else
          "completed: no")
    if message["quarantine"]:
        print(f"quarantine: {message['quarantine']}")
    for delivery in details["deliveries"]:
        print(f"\n{delivery['domain']}: {delivery['state']}, {delivery['attempts']} attempt(s), "
              f"due {delivery['due_at']:%Y-%m-%d %H:%M:%S %Z}")
        for recipient in delivery["recipients"]:
            reply = delivery["replies"].get(recipient, "")
            print(f"  <{recipient}>" + (f": {reply}" if reply else ""))
    if details["events"]:
        print("\nhistory:")
    for event in details["events"]:
        print(f"  {event['at']:%Y-%m-%d %H:%M:%S} {event['status']:<9} <{event['recipient']}> "
              f"relay={event['relay']} ({event['reply']})")
    return 0


def cmd_summary(config: Config, args: argparse.Namespace) -> int:
    from mta.spool import admin

    if args.top < 1:
        print("mta: --top must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    rows = _run(config, admin.summary)
    columns = [str(bucket) for bucket in admin.AGE_BUCKETS] + ["older"]
    print(f"{'DOMAIN':<32}{'TOTAL':>7}" + "".join(f"{column + 'm' if column != 'older' else '+':>7}"
                                             for column in columns))
    totals = [sum(row[column] for row in rows) for column in ["total", *columns]]
    print(f"{'TOTAL':<32}" + "".join(f"{total:>7}" for total in totals))
    for row in rows[:args.top]:
        print(f"{row['domain']:<32}" + "".join(f"{row[column]:>7}" for column in ["total", *columns]))
    print("-- columns: deliveries by minutes since arrival, each up to the number shown")
    return 0


def cmd_action(config: Config, args: argparse.Namespace) -> int:
    from mta.spool import admin

    queue_ids = _checked_ids(*args.queue_ids)

    async def work(connection):
        queue_admin = admin.QueueAdmin(connection, _actor(args), _outbox(config))
        if args.action == "bounce":
            return await _bounce(config, queue_admin, queue_ids)
        if args.action == "delete":
            return await _delete(config, queue_admin, queue_ids)
        return await getattr(queue_admin, args.action)(queue_ids)

    result = _run(config, work)
    past = {"hold": "held", "release": "released", "retry": "made due", "delete": "deleted",
            "bounce": "bounced"}[args.action]
    print(f"{_count(len(result.done), 'message', 'messages')} {past}" + (f": {' '.join(result.done)}"
                                                                         if result.done else ""))
    unchanged = sorted(set(queue_ids) - set(result.done) - set(result.busy))
    if unchanged:
        print(f"unchanged, as {UNCHANGED_REASON[args.action]}: {' '.join(unchanged)}")
    if result.busy:
        # Exit 1, so a script can tell that these messages still need the action.
        print(f"mta: being delivered now, not changed: {' '.join(result.busy)} (repeat once the attempt is over)",
              file=sys.stderr)
        return EXIT_BUSY
    return 0


async def _delete(config: Config, queue_admin, queue_ids: list[str]):
    from mta.storage.factory import build_store

    store = build_store(config)
    try:
        return await queue_admin.delete(queue_ids, store)
    finally:
        await store.close()


async def _bounce(config: Config, queue_admin, queue_ids: list[str]):
    from mta.key_commands import body_codec
    from mta.spool.enqueue import Spool
    from mta.storage.factory import build_store

    store = build_store(config)
    bodies = body_codec(config, queue_admin.connection)
    # Only prepare() and insert() are used: the notifications go in the action's own transaction.
    spool = Spool(queue_admin.connection, store, bodies, config.storage.inline_max_size, "admin", 0.0,
                  on_ready=lambda jobs: None, outbox=queue_admin.outbox)
    try:
        return await queue_admin.bounce(queue_ids, spool, store, bodies, config.server.hostname)
    finally:
        await store.close()


def _outbox(config: Config):
    """Return the outbox for the webhook events of delete and bounce, or None when no endpoint is configured."""
    from mta.webhooks.outbox import Outbox

    return Outbox(config.webhooks.endpoints) if config.webhooks.endpoints else None


def cmd_flush(config: Config, args: argparse.Namespace) -> int:
    from mta.spool import admin

    count = _run(config, lambda connection: admin.QueueAdmin(connection, _actor(args)).flush())
    print(f"{_count(count, 'delivery', 'deliveries')} made due now")
    return 0


def _checked_ids(*queue_ids: str) -> list[str]:
    from mta.spool import admin

    try:
        return admin.check_queue_ids(list(queue_ids))
    except admin.AdminError as error:
        print(f"mta: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _count(number: int, singular: str, plural: str) -> str:
    return f"{number} {singular if number == 1 else plural}"
