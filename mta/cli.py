"""The ``mta`` command: serve, migrate, users, configuration check and the queue.

Exit codes: 0 success, 1 runtime failure (database unreachable, for
example), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

from mta import (api_commands, audit_commands, dkim_commands, dns_commands, gdpr_commands, key_commands,
                 mailbox_commands, queue_commands, storage_commands, suppression_commands, user_commands)
from mta.cli_support import audit, run_in_transaction
from mta.queue_commands import _actor
from mta.config import Config, ConfigError, load
from mta.logs import setup_logging

EXIT_FAILURE = 1
EXIT_USAGE = 2
# Printed by check-config only as "(redacted)".
SECRET_STORAGE_KEYS = ("access_key_id", "secret_access_key")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USAGE

    try:
        config = load(Path(args.config) if args.config else None)
    except ConfigError as error:
        print(f"mta: {error}", file=sys.stderr)
        return EXIT_USAGE

    setup_logging(config.server.log_level, config.logging, config.data_dir)
    # pgserver's lock file falls back to /tmp when XDG_RUNTIME_DIR is unset, which is fine here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    # aiosmtpd warns about the implicit-TLS listener, where AUTH needs no STARTTLS because TLS came first.
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    try:
        return args.run(config, args)
    except BrokenPipeError:
        # The reader of standard output went away, as `mta ... | head` does: stop without a traceback.
        # Standard output goes to /dev/null, so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mta", description="A mail transfer agent for mail that stays in the EU.")
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file (default: the embedded defaults)")
    commands = parser.add_subparsers(metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the MTA")
    serve.add_argument("--workers", type=int, metavar="N", help="worker processes sharing the listening sockets")
    serve.set_defaults(run=cmd_serve)

    commands.add_parser("migrate", help="apply database migrations").set_defaults(run=cmd_migrate)
    commands.add_parser("check-config", help="check the configuration and print it").set_defaults(run=cmd_check_config)

    user = commands.add_parser("user", help="manage submission users").add_subparsers(metavar="ACTION")
    user_add = user.add_parser("add", help="add a user or set a new password")
    user_add.add_argument("address")
    user_add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    user_add.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
    user_add.set_defaults(run=cmd_user_add)
    user_import = user.add_parser("import", help="add many users from a file")
    user_import.add_argument("file", help="one user per line: ADDRESS, or ADDRESS and a password after a space;"
                                          " a user without a password receives mail but cannot log in")
    user_import.add_argument("--actor", help="who does this, for the audit log (default: the login name)")
    user_import.set_defaults(run=cmd_user_import)
    user_commands.add_parsers(user, commands)
    audit_commands.add_parser(commands)

    queue_commands.add_parser(commands)
    suppression_commands.add_parser(commands)
    key_commands.add_parser(commands)
    storage_commands.add_parser(commands)
    mailbox_commands.add_parser(commands)
    gdpr_commands.add_parser(commands)
    api_commands.add_parser(commands)

    nodes = commands.add_parser("nodes", help="list the nodes that use this database, alive or lost")
    nodes.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    nodes.set_defaults(run=cmd_nodes)

    dkim_commands.add_parser(commands)
    dns_commands.add_parser(commands)
    return parser


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    if args.workers is not None:
        config.server.workers = args.workers
    if config.server.workers > 1:
        # Counters from all workers are summed at scrape time (prometheus_client
        # multiprocess mode); the variable must be set before the first import.
        metrics_dir = config.data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    from mta import server

    try:
        return server.serve(config)
    except ConfigError as error:
        logging.getLogger("mta.master").error("start-up failed: %s", error)
        return EXIT_USAGE
    except OSError as error:
        logging.getLogger("mta.master").error("start-up failed: %s", error)
        return EXIT_FAILURE


def cmd_migrate(config: Config, args: argparse.Namespace) -> int:
    from mta import db

    async def run() -> list[int]:
        connection = await connect_or_exit(config, create=True)
        try:
            return await db.migrate(connection)
        finally:
            await connection.close()

    applied = asyncio.run(run())
    print(f"applied {len(applied)} migration(s)" + (f": {applied}" if applied else ""))
    return 0


def redact_url_password(url: str) -> str:
    """Return url with the password of its user part, if any, replaced by "(redacted)"."""
    scheme, separator, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not separator or not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:(redacted)@{host}"


def cmd_check_config(config: Config, args: argparse.Namespace) -> int:
    from dataclasses import asdict

    settings = asdict(config)
    settings["database"]["url"] = redact_url_password(settings["database"]["url"])
    for name in SECRET_STORAGE_KEYS:
        if settings["storage"][name]:
            settings["storage"][name] = "(redacted)"
    print(json.dumps(settings, indent=2))

    problem = _unreadable_files(config)
    if problem is not None:
        print(f"mta: {problem}", file=sys.stderr)
        return EXIT_USAGE
    print("configuration ok", file=sys.stderr)
    return 0


def _unreadable_files(config: Config) -> str | None:
    """Return why a key or secret file that mta serve reads cannot be read, or None when all can."""
    from mta.storage.master_key import read_master_keys
    from mta.webhooks.settings import read_secrets

    try:
        read_master_keys(config)
        read_secrets(config.webhooks, config.data_path)
    except (ConfigError, ValueError) as error:
        return str(error)
    return None


def cmd_user_add(config: Config, args: argparse.Namespace) -> int:
    from mta.auth import users
    from mta.smtp.policy import valid_address

    if not valid_address(args.address):
        print(f"mta: invalid address: {args.address!r}", file=sys.stderr)
        return EXIT_USAGE
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        try:
            password = getpass.getpass(f"Password for {args.address}: ")
        except EOFError:
            print("\nmta: no password given", file=sys.stderr)
            return EXIT_USAGE
    if len(password) < 8:
        print("mta: password too short, it must have at least 8 characters", file=sys.stderr)
        return EXIT_USAGE
    domain = args.address.rpartition("@")[2]
    if not config.is_local_domain(domain):
        print(f"mta: note: {domain} is not in domains.local, so this user can log in and send, "
              "but mail to the address is relayed elsewhere", file=sys.stderr)

    async def work(connection) -> None:
        await users.add_user(connection, args.address, password)
        # The password and its hash stay out of the audit log.
        await audit(connection, _actor(args), "user add", {"address": args.address.lower()})

    run_in_transaction(config, work)
    print(f"user {args.address.lower()} saved")
    return 0


def cmd_user_import(config: Config, args: argparse.Namespace) -> int:
    from mta.auth import users
    from mta.smtp.policy import valid_address

    entries = []
    try:
        lines = Path(args.file).read_text().splitlines()
    except OSError as error:
        print(f"mta: cannot read {args.file}: {error.strerror}", file=sys.stderr)
        return EXIT_USAGE
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        address, _, password = line.strip().partition(" ")
        if not valid_address(address):
            print(f"mta: {args.file}:{number}: invalid address: {address!r}", file=sys.stderr)
            return EXIT_USAGE
        if password and len(password) < 8:
            print(f"mta: {args.file}:{number}: password too short, it must have at least 8 characters",
                  file=sys.stderr)
            return EXIT_USAGE
        entries.append((address, password or None))

    async def work(connection) -> int:
        saved = await users.import_users(connection, entries)
        await audit(connection, _actor(args), "user import", {"file": str(args.file), "users": saved})
        return saved

    print(f"{run_in_transaction(config, work)} users saved")
    return 0


# A node that has not updated its heartbeat for this many seconds is reported lost.
NODE_LOST_AFTER = 30.0


def cmd_nodes(config: Config, args: argparse.Namespace) -> int:
    async def run() -> list:
        connection = await connect_or_exit(config)
        try:
            return await connection.fetch(
                "SELECT id, hostname, pid, started_at, seen_at, extract(epoch FROM now() - seen_at) AS silent"
                " FROM node ORDER BY seen_at DESC")
        finally:
            await connection.close()

    rows = asyncio.run(run())
    if args.json:
        for row in rows:
            print(json.dumps({"id": row["id"], "hostname": row["hostname"], "pid": row["pid"],
                              "started_at": row["started_at"].isoformat(), "seen_at": row["seen_at"].isoformat(),
                              "alive": float(row["silent"]) < NODE_LOST_AFTER}))
        return 0
    print(f"{'NODE':<40} {'STATE':<6} {'LAST SEEN':>10}  STARTED")
    for row in rows:
        state = "alive" if float(row["silent"]) < NODE_LOST_AFTER else "lost"
        print(f"{row['id']:<40} {state:<6} {float(row['silent']):>8.0f} s  {row['started_at']:%Y-%m-%d %H:%M:%S %Z}")
    return 0


async def connect_or_exit(config: Config, create: bool = False):
    """Connect to the MTA's database, or exit 1 with the reason.

    Only ``create`` may start a new embedded database: from another working
    directory a relative ``server.data_dir`` names another, empty one.
    """
    import asyncpg

    from mta import db

    pgdata = config.data_dir / "pg"
    if not config.database.url and not create and not (pgdata / "PG_VERSION").exists():
        print(f"mta: no database at {pgdata}: run mta from the directory where mta serve runs, "
              "or give --config with server.data_dir or database.url", file=sys.stderr)
        raise SystemExit(EXIT_FAILURE)
    try:
        connection = await asyncpg.connect(db.database_url(config), timeout=10)
    except ConfigError as error:
        print(f"mta: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except (OSError, asyncpg.PostgresError) as error:
        print(f"mta: database unreachable: {error}", file=sys.stderr)
        raise SystemExit(EXIT_FAILURE) from None
    if not create and await connection.fetchval("SELECT to_regclass('schema_migration')") is None:
        await connection.close()
        print("mta: the database has no tables yet: run mta migrate or mta serve first", file=sys.stderr)
        raise SystemExit(EXIT_FAILURE)
    return connection


if __name__ == "__main__":
    sys.exit(main())
