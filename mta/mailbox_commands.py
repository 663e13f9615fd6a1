"""``mta mailbox ...``: list a local mailbox, fetch a message or one of its large attachments.

An unknown mailbox (no account and no stored message), and a message id or
attachment number that the mailbox does not have, exit with status 2, a
body that cannot be decrypted (its data key destroyed) with 1. Raw messages and attachments are binary, so they go to a file or a
pipe, never to a terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mta.cli_support import EXIT_FAILURE, EXIT_USAGE, run_in_transaction, run_with_bodies
from mta.config import Config


def add_parser(commands: argparse._SubParsersAction) -> None:
    mailbox = commands.add_parser("mailbox", help="read local mailboxes").add_subparsers(metavar="ACTION")

    listing = mailbox.add_parser("list", help="list a mailbox's messages, newest first")
    listing.add_argument("address")
    listing.add_argument("--folder", help="only this folder (default: all)")
    listing.add_argument("--limit", type=int, default=100, help="messages at most (default %(default)s)")
    listing.add_argument("--before", type=int, metavar="ID", help="only messages with an id below ID")
    listing.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    listing.set_defaults(run=cmd_list)

    fetch = mailbox.add_parser("fetch", help="write one message as RFC 5322 octets")
    fetch.add_argument("address")
    fetch.add_argument("message_id", type=int, metavar="ID")
    fetch.add_argument("--output", type=Path, metavar="FILE", help="write here instead of standard output")
    fetch.set_defaults(run=cmd_fetch)

    attachments = mailbox.add_parser("attachments", help="list a message's attachments stored on their own")
    attachments.add_argument("address")
    attachments.add_argument("message_id", type=int, metavar="ID")
    attachments.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    attachments.set_defaults(run=cmd_attachments)

    attachment = mailbox.add_parser("attachment", help="write one stored attachment, decoded")
    attachment.add_argument("address")
    attachment.add_argument("message_id", type=int, metavar="ID")
    attachment.add_argument("position", type=int, metavar="N", help="the attachment's number in the listing")
    attachment.add_argument("--output", type=Path, metavar="FILE", required=True, help="file to write")
    attachment.set_defaults(run=cmd_attachment)


def cmd_list(config: Config, args: argparse.Namespace) -> int:
    from mta.mailbox.store import MailboxNotFound, list_messages

    messages = run_in_transaction(config, lambda connection: list_messages(
        connection, args.address, args.folder, args.limit, args.before), (ValueError, MailboxNotFound))
    if args.json:
        for message in messages:
            print(json.dumps(message.as_json()))
        return 0

    print(f"{'ID':>8}  {'DATE':<16}  {'SIZE':>9}  {'FOLDER':<10}  {'FROM':<30}  SUBJECT")
    for message in messages:
        print(f"{message.id:>8}  {message.date:%Y-%m-%d %H:%M}  {message.size:>9}  {message.folder:<10.10}  "
              f"{message.from_header:<30.30}  {message.subject}")
    print(f"-- {len(messages)} message(s)")
    return 0


def cmd_fetch(config: Config, args: argparse.Namespace) -> int:
    from mta.mailbox.store import MessageNotFound, open_message

    if args.output is None and sys.stdout.isatty():
        print("mta: a raw message is not written to a terminal: give --output FILE or redirect standard output",
              file=sys.stderr)
        return EXIT_USAGE

    async def work(connection, store, bodies) -> int:
        content = await open_message(connection, store, bodies, args.address, args.message_id)
        return await _copy(content, args.output)

    written = _read_or_exit(config, work, (MessageNotFound,), args.output)
    if args.output is not None:
        print(f"message {args.message_id} written to {args.output} ({written} octets)", file=sys.stderr)
    return 0


def cmd_attachments(config: Config, args: argparse.Namespace) -> int:
    from mta.mailbox.store import MessageNotFound, list_attachments

    attachments = run_in_transaction(config, lambda connection: list_attachments(
        connection, args.address, args.message_id), (MessageNotFound,))
    if args.json:
        for attachment in attachments:
            print(json.dumps(attachment.as_json()))
        return 0
    print(f"{'N':>3}  {'SIZE':>10}  {'TYPE':<30}  FILENAME")
    for attachment in attachments:
        print(f"{attachment.position:>3}  {attachment.size:>10}  {attachment.content_type:<30.30}  "
              f"{attachment.filename}")
    return 0


def cmd_attachment(config: Config, args: argparse.Namespace) -> int:
    from mta.mailbox.store import AttachmentNotFound, MessageNotFound, open_attachment

    async def work(connection, store, bodies) -> tuple[object, int]:
        info, content = await open_attachment(connection, store, bodies, args.address, args.message_id,
                                              args.position)
        return info, await _copy(content, args.output)

    info, written = _read_or_exit(config, work, (MessageNotFound, AttachmentNotFound), args.output)
    print(f"attachment {info.position} ({info.filename}, {info.content_type}) written to {args.output} "
          f"({written} octets)", file=sys.stderr)
    return 0


def _read_or_exit(config: Config, work, not_found: tuple[type[Exception], ...], output: Path | None):
    """Run work with the body store; exit 2 on a not_found error and 1 when the content cannot be read or written."""
    from mta.storage.crypto import DecryptionError

    try:
        return run_with_bodies(config, work, not_found)
    except DecryptionError as error:
        print(f"mta: cannot decrypt: {error}", file=sys.stderr)
    except OSError as error:
        print(f"mta: cannot write {output or 'standard output'}: {error.strerror}", file=sys.stderr)
    raise SystemExit(EXIT_FAILURE)


async def _copy(content, output: Path | None) -> int:
    """Write the content's pieces to output, or to standard output when it is None; return the octets written.

    A created file gets mode 0600, because it contains mail content. When
    reading or writing fails, the file with part of the content is removed.
    """
    if output is None:
        target = sys.stdout.buffer
    else:
        target = os.fdopen(os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
    written = 0
    try:
        async for piece in content.pieces:
            target.write(piece)
            written += len(piece)
        target.flush()
    except BaseException:
        if output is not None:
            output.unlink(missing_ok=True)
        raise
    finally:
        if output is not None:
            target.close()
    return written
