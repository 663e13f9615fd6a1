"""Shared fixtures: a real PostgreSQL, a loopback DNS server, SMTP sinks, the MTA process.

Every address used is on loopback: the MTA listens on 127.0.0.1, delivers
from 127.0.0.3, and the remote MX hosts are sinks on 127.0.0.2 that the test
DNS server names in MX records.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.dnsserver import DnsServer
from tests.mtaprocess import MtaProcess
from tests.pgcluster import PgCluster, free_port
from tests.sink import Sink

REMOTE_MX_ADDRESS = "127.0.0.2"
SOURCE_ADDRESS = "127.0.0.3"


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    cluster = PgCluster()
    cluster.init()
    cluster.start()
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="session")
def dns() -> Iterator[DnsServer]:
    server = DnsServer()
    for domain in ("example.net", "fail.example", "slow.example", "retry.example"):
        server.add(domain, "MX", f"10 mx.{domain}.")
        server.add(f"mx.{domain}", "A", REMOTE_MX_ADDRESS)
    server.add("nullmx.example", "MX", "0 .")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sink_port() -> int:
    return free_port(REMOTE_MX_ADDRESS)


@pytest.fixture
def sink(sink_port: int) -> Iterator[Sink]:
    server = Sink(REMOTE_MX_ADDRESS, sink_port)
    server.start()
    yield server
    server.stop()


def create_database(cluster: PgCluster) -> str:
    name = f"mta_{secrets.token_hex(4)}"

    async def run() -> None:
        connection = await asyncpg.connect(cluster.url)
        try:
            await connection.execute(f"CREATE DATABASE {name}")
        finally:
            await connection.close()

    asyncio.run(run())
    return cluster.url_for(name)


def stop_and_check(started: list[MtaProcess]) -> None:
    for mta in started:
        mta.stop()
    for mta in started:
        # An unexpected exception inside the MTA is a failure even when the
        # test's own checks passed: it may have lost or duplicated work.
        if "Traceback" in mta.log():
            pytest.fail(f"the MTA logged an unexpected exception:\n{mta.log()[-4000:]}")


@pytest.fixture
def make_mta(pg: PgCluster, dns: DnsServer, sink_port: int, tmp_path: Path) -> Iterator[Callable[..., MtaProcess]]:
    """Return a factory that starts an MTA on a fresh database; all are stopped at teardown."""
    started: list[MtaProcess] = []

    def factory(extra: dict | None = None, cluster: PgCluster | None = None, start: bool = True) -> MtaProcess:
        workdir = tmp_path / f"mta{len(started)}"
        workdir.mkdir()
        mta = MtaProcess(workdir, create_database(cluster or pg), dns.port, sink_port, extra)
        started.append(mta)
        if start:
            mta.start()
        return mta

    yield factory
    stop_and_check(started)


@pytest.fixture(scope="module")
def shared_mta(pg: PgCluster, dns: DnsServer, sink_port: int, tmp_path_factory) -> Iterator[MtaProcess]:
    """One MTA for a whole module of session-level tests that do not change its state."""
    workdir = tmp_path_factory.mktemp("mta")
    mta = MtaProcess(workdir, create_database(pg), dns.port, sink_port,
                     {"smtp": {"max_message_size": 1048576}})
    mta.start()
    result = mta.cli("user", "add", "alice@example.com", "--password-stdin", input_text="secret-password\n")
    assert result.returncode == 0, result.stderr
    yield mta
    stop_and_check([mta])


def query(url: str, sql: str, *args) -> list[asyncpg.Record]:
    """Run one query against the MTA's database from the test process."""
    async def run() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(url)
        try:
            return await connection.fetch(sql, *args)
        finally:
            await connection.close()

    return asyncio.run(run())


def config_error(tmp_path: Path, toml: str) -> str:
    """Return the ConfigError message that loading this TOML gives; fail when it loads."""
    from mta.config import ConfigError, load

    path = tmp_path / "mta.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as raised:
        load(path)
    return str(raised.value)
