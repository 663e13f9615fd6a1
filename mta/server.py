"""``mta serve``: prepare the node, bind the sockets, run one or more workers.

The parent process does everything that must happen once: start the
embedded PostgreSQL if no URL is configured, apply migrations, create the
certificate and master key, import or create the DKIM keys in the database, and bind the listening sockets. With
``--workers N`` it then forks N workers that share those sockets (one Python
process uses one core) and restarts any worker that dies. Each worker runs
its own event loop with SMTP listeners, the spool writer and the delivery
scheduler; worker 0 also serves HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import time
from dataclasses import dataclass

from mta import db
from mta.config import LISTENERS, Config, ConfigError, ListenerConfig
from mta.dkim import DkimKey
from mta.smtp.hooks import BeforeQueueChecks
from mta.smtp.tls import ServerTls, ensure_self_signed
from mta.storage.master_key import MasterKeys, create_master_key, read_master_keys
from mta.webhooks.settings import read_secrets

log = logging.getLogger("mta.master")


@dataclass
class Prepared:
    url: str
    master_keys: MasterKeys
    dkim_keys: list[DkimKey]
    cert_file: str
    key_file: str
    sockets: dict[str, socket.socket]
    # The HMAC key of each webhook endpoint, by endpoint name.
    webhook_secrets: dict[str, bytes]


def prepare(config: Config) -> Prepared:
    """Do the once-per-host work before any worker starts."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    master_keys = read_master_keys(config)
    if config.storage.master_key_env:
        # Read once; child processes such as the embedded PostgreSQL must not inherit it.
        os.environ.pop(config.storage.master_key_env, None)
    url = db.database_url(config)
    master_keys = asyncio.run(_migrate(config, url, master_keys))
    log.info("master key %s loaded%s", master_keys.current.key_id,
             f", and previous master key {master_keys.previous.key_id} for unwrapping only"
             if master_keys.previous else "")

    if config.tls.cert_file:
        cert_file, key_file = config.tls.cert_file, config.tls.key_file
    else:
        cert_path, key_path = ensure_self_signed(config.data_path("tls"), config.server.hostname)
        cert_file, key_file = str(cert_path), str(key_path)
    # Fails here, before any worker starts, when a file is missing or a key does not match.
    ServerTls.from_config(config.tls, cert_file, key_file)

    _try_checks(config)
    dkim_keys = asyncio.run(load_dkim_keys(url, master_keys, config))
    try:
        webhook_secrets = read_secrets(config.webhooks, config.data_path)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    sockets = bind_sockets(config)
    return Prepared(url, master_keys, dkim_keys, cert_file, key_file, sockets, webhook_secrets)


async def load_dkim_keys(url: str, master_keys: MasterKeys, config: Config) -> list[DkimKey]:
    """Import old key files and create missing keys (mta.dkim_lifecycle.provision), then return the active keys."""
    import asyncpg

    from mta.dkim_lifecycle import provision
    from mta.dkim_store import load_active_keys

    connection = await asyncpg.connect(url)
    try:
        await provision(connection, master_keys, config)
        keys = await load_active_keys(connection, master_keys)
    finally:
        await connection.close()
    for key in keys:
        log.info("DKIM key %s of %s signs", key.selector, key.domain)
    return keys


def bind_sockets(config: Config) -> dict[str, socket.socket]:
    from mta.smtp.listener import bind

    sockets = {}
    for name in LISTENERS:
        listener = getattr(config.smtp, name)
        if listener.enabled:
            sockets[name] = bind(listener)
    if config.http.enabled:
        sockets["http"] = bind(ListenerConfig(address=config.http.address, port=config.http.port))
    return sockets


async def _migrate(config: Config, url: str, master_keys: MasterKeys | None) -> MasterKeys:
    """Apply migrations, check that the master keys open what the database holds, and record the master key.

    Makes the master key file when there is none and the database contains nothing wrapped under a master key.
    """
    import asyncpg

    from mta.storage.key_admin import check_master_keys, record_master_key

    connection = await asyncpg.connect(url)
    try:
        await db.migrate(connection)
        await check_master_keys(connection, master_keys)
        if master_keys is None:
            master_keys = create_master_key(config)
        await record_master_key(connection, master_keys)
    finally:
        await connection.close()
    return master_keys


def serve(config: Config) -> int:
    prepared = prepare(config)
    workers = config.server.workers
    names = ", ".join(f"{name} {sock.getsockname()[0]}:{sock.getsockname()[1]}"
                      for name, sock in prepared.sockets.items())
    log.info("starting %d worker(s), listening on %s", workers, names)

    if workers == 1:
        return run_worker(config, prepared, 0)
    return supervise(config, prepared, workers)


def _try_checks(config: Config) -> None:
    """Make each before-queue check once, so a broken one stops start-up instead of every worker."""
    try:
        checks = BeforeQueueChecks(config.smtp.checks)
    except Exception as error:  # the factories are operators' code
        raise ConfigError(f"smtp.checks: {error}") from error
    asyncio.run(checks.close())


def supervise(config: Config, prepared: Prepared, workers: int) -> int:
    """Fork the workers and restart any that dies, until SIGTERM or SIGINT."""
    children: dict[int, int] = {}
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            _signal_quietly(pid, signal.SIGTERM)

    def reload(signum, frame) -> None:
        for pid in children:
            _signal_quietly(pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)

    for index in range(workers):
        children[_fork_worker(config, prepared, index)] = index

    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is None or stopping:
            continue
        log.error("worker %d (pid %d) exited with status %d, restarting it", index, pid, status)
        time.sleep(1)
        children[_fork_worker(config, prepared, index)] = index

    log.info("all workers stopped")
    return 0


def _fork_worker(config: Config, prepared: Prepared, index: int) -> int:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        # Ignored until the worker's event loop handles it: SIGHUP's default would end the process.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        code = 1
        try:
            code = run_worker(config, prepared, index)
        finally:
            os._exit(code)
    return pid


def _signal_quietly(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def run_worker(config: Config, prepared: Prepared, index: int) -> int:
    import uvloop

    from mta.worker import Worker

    node_id = f"{config.server.hostname}/{os.getpid()}/{secrets.token_hex(3)}"
    worker = Worker(config, prepared, index, node_id)
    uvloop.run(worker.run())
    return 0
