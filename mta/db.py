"""PostgreSQL access: the embedded server, connection pools and migrations.

The embedded default runs a private PostgreSQL from the ``pgserver`` package
under ``data_dir/pg``, reached over a UNIX socket. Production names a server
by URL. Migrations are the numbered ``.sql`` files in the top-level ``queue/``
folder, applied in order inside one transaction each, under an advisory lock
so that several nodes starting together apply each file once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import psutil

from mta.config import Config, ConfigError

log = logging.getLogger("mta.db")

# The repository's queue/ folder; an installed copy (the container image) names
# its own with MTA_MIGRATIONS_DIR.
MIGRATIONS_DIR = Path(os.environ.get("MTA_MIGRATIONS_DIR", Path(__file__).resolve().parent.parent / "queue"))

# Any constant works: it only has to be the same on every node.
MIGRATION_LOCK_ID = 0x6D7461

# Errors of an unreachable or restarting database (or network): worth a retry
# later, not a traceback. asyncpg raises InternalClientError too when the
# server goes away in the middle of an operation (seen while PostgreSQL stopped).
TRANSIENT_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                    asyncio.TimeoutError)

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def embedded_server(config: Config):
    """Start (or join) the private PostgreSQL under data_dir/pg and return it."""
    import pgserver

    pgdata = config.data_dir / "pg"
    pgdata.mkdir(parents=True, exist_ok=True)
    _forget_dead_handles(pgdata)

    # pgserver stops the server when the last process that started or joined
    # it exits normally. After a crash (kill -9) it keeps running, and the next
    # start joins it.
    return pgserver.get_server(pgdata, cleanup_mode="stop")


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop processes that died without exiting (kill -9) from pgserver's list of users.

    pgserver stops the server when the last process in that list exits, so a
    crashed process left in it would keep the server running for ever.
    """
    import pgserver
    from pgserver.utils import DiskList

    handles = DiskList(pgdata / ".handle_pids.json")
    with pgserver.PostgresServer._lock:
        try:
            pids = handles.get()
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
        if alive != pids:
            handles.put(alive)


def database_url(config: Config) -> str:
    """Return the configured URL, starting the embedded server when none is set."""
    if config.database.url:
        return with_password(config.database.url, config.database.password_file)
    return embedded_server(config).get_uri()


def with_password(url: str, password_file: str) -> str:
    """Put the first line of password_file into url as its password; raise ConfigError when that fails."""
    if not password_file:
        return url
    try:
        password = Path(password_file).read_text().partition("\n")[0].rstrip("\r")
    except OSError as error:
        raise ConfigError(f"database.password_file {password_file} could not be read: {error.strerror}") from None
    if not password:
        raise ConfigError(f"database.password_file {password_file} is empty")

    parts = urlsplit(url)
    credentials, at, host = parts.netloc.rpartition("@")
    user, colon, _ = credentials.partition(":")
    if not at or not user:
        raise ConfigError("database.url must name the user, as in postgresql://mta@db.example.eu/mta, "
                          "when database.password_file is set")
    if colon:
        raise ConfigError("database.url contains a password and database.password_file is set: keep only the file")
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


async def create_pool(url: str, config: Config) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        url,
        min_size=config.database.pool_min,
        max_size=config.database.pool_max,
        # Queue statements are few and prepared once per connection.
        statement_cache_size=200,
        server_settings={"synchronous_commit": "on", "application_name": "mta"},
        reset=_keep_session,
    )


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Return a connection to the pool without asyncpg's reset query.

    The default reset costs a round trip on every release. Pooled
    connections carry no session state to undo: nothing runs SET, LISTEN,
    advisory locks or cursors on them (LISTEN and the migration lock use
    connections of their own), and asyncpg still rolls back an open
    transaction before this is called.
    """


def migration_files() -> list[tuple[int, Path]]:
    if not MIGRATIONS_DIR.is_dir():
        raise RuntimeError(f"migrations folder not found: {MIGRATIONS_DIR}; set MTA_MIGRATIONS_DIR")
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise RuntimeError(f"migration file name must look like 0001_name.sql: {path}")
        found.append((int(match.group(1)), path))
    return found


async def migrate(connection: asyncpg.Connection) -> list[int]:
    """Apply every migration not yet recorded; return the versions applied."""
    applied_now = []
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migration ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())")
        done = {row["version"] for row in await connection.fetch("SELECT version FROM schema_migration")}

        for version, path in migration_files():
            if version in done:
                continue
            async with connection.transaction():
                await connection.execute(path.read_text())
                await connection.execute("INSERT INTO schema_migration (version) VALUES ($1)", version)
            log.info("applied migration %s", path.name)
            applied_now.append(version)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied_now
