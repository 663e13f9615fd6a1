"""The orphan sweep of the body store, with the local store and with moto's S3 server on loopback."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from mta import db
from mta.storage.local import LocalStore
from mta.storage.s3 import S3Settings, S3Store
from mta.storage.sweep import SWEEP_LOCK_ID, StoreSweeper, SweepBusy, sweep
from tests.conftest import create_database
from tests.s3server import REGION, TEST_ENVIRONMENT, inspection_client, moto_server

DAY = 86400.0
# Objects in each state: none of these keys but ORPHAN and DONE may be deleted.
OLD_KEYS = ["ORPHAN", "QUEUED", "MAILBOX", "DONE", "ATTACHED"]


@pytest.fixture
def database_url(pg) -> str:
    return create_database(pg)


@pytest.fixture
async def connection(database_url) -> AsyncIterator[asyncpg.Connection]:
    connected = await asyncpg.connect(database_url)
    await db.migrate(connected)
    yield connected
    await connected.close()


async def add_message(connection: asyncpg.Connection, key: str, completed: bool) -> None:
    await connection.execute(
        "INSERT INTO message (id, sender, size, body_key, origin, session_id, completed_at)"
        " VALUES ($1, 'a@example.net', 10, $1, 'mx', 's1', CASE WHEN $2 THEN now() END)", key, completed)


async def add_rows(connection: asyncpg.Connection, attachments: bool = True) -> None:
    """Give QUEUED, MAILBOX and ATTACHED a row that needs them; DONE's message is completed with no mailbox copy."""
    await add_message(connection, "QUEUED", completed=False)
    await add_message(connection, "MAILBOX", completed=True)
    await connection.execute("INSERT INTO mailbox_message (mailbox, message_id, size, date)"
                             " VALUES ('b@example.com', 'MAILBOX', 100, now())")
    await add_message(connection, "DONE", completed=True)
    # Replaced by a table of the one column the sweeper reads, or dropped, as in a database from before it.
    await connection.execute("DROP TABLE mailbox_attachment")
    if attachments:
        await connection.execute("CREATE TABLE mailbox_attachment (id bigserial PRIMARY KEY, object_key text NOT NULL)")
        await connection.execute("INSERT INTO mailbox_attachment (object_key) VALUES ('ATTACHED')")


def backdate(store: LocalStore, key: str, seconds: float) -> None:
    moment = time.time() - seconds
    os.utime(store._path(key), (moment, moment))


@pytest.fixture
async def local_store(tmp_path) -> LocalStore:
    store = LocalStore(tmp_path / "blobs")
    for key in OLD_KEYS:
        await store.put(key, b"ciphertext")
        backdate(store, key, 2 * DAY)
    await store.put("FRESH", b"ciphertext")
    return store


async def keys_of(store) -> list[str]:
    return [key async for key in store.list_keys()]


async def test_local_sweep_deletes_old_orphans(connection, local_store):
    await add_rows(connection)

    result = await sweep(connection, local_store, DAY)

    assert await keys_of(local_store) == ["ATTACHED", "FRESH", "MAILBOX", "QUEUED"]
    assert result.listed == 6
    assert result.recent == 1
    assert result.referenced == 3
    assert result.orphaned == 2
    assert result.deleted == 2
    assert result.failed == 0


async def test_local_dry_run_deletes_nothing(connection, local_store):
    await add_rows(connection)

    result = await sweep(connection, local_store, DAY, dry_run=True)

    assert await keys_of(local_store) == sorted(OLD_KEYS + ["FRESH"])
    assert result.orphaned == 2
    assert result.deleted == 0


async def test_sweep_without_attachment_table(connection, local_store):
    await add_rows(connection, attachments=False)

    await sweep(connection, local_store, DAY)

    assert await keys_of(local_store) == ["FRESH", "MAILBOX", "QUEUED"]


async def test_fresh_orphan_kept_under_min_age(connection, local_store):
    await add_rows(connection)

    result = await sweep(connection, local_store, 3 * DAY)

    assert result.deleted == 0
    assert result.recent == 6
    assert await keys_of(local_store) == sorted(OLD_KEYS + ["FRESH"])


async def test_second_sweep_busy(database_url, connection, local_store):
    other = await asyncpg.connect(database_url)
    try:
        await other.execute("SELECT pg_advisory_lock($1)", SWEEP_LOCK_ID)
        with pytest.raises(SweepBusy):
            await sweep(connection, local_store, DAY)
    finally:
        await other.close()
    assert "ORPHAN" in await keys_of(local_store)


async def test_background_sweeper_run(database_url, connection, local_store):
    await add_rows(connection)

    result = await StoreSweeper(database_url, local_store, 60.0, DAY).run_once()

    assert result is not None
    assert result.deleted == 2
    assert await keys_of(local_store) == ["ATTACHED", "FRESH", "MAILBOX", "QUEUED"]


async def test_local_sweep_removes_old_temporary_files(connection, local_store):
    old = local_store._path("CRASHED").with_name("CRASHED.tmp")
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes(b"half a body")
    moment = time.time() - 2 * DAY
    os.utime(old, (moment, moment))
    young = local_store._path("WRITING").with_name("WRITING.tmp")
    young.parent.mkdir(parents=True, exist_ok=True)
    young.write_bytes(b"a body being written")

    dry = await sweep(connection, local_store, DAY, dry_run=True)
    assert dry.abandoned == 1
    assert old.exists()

    result = await sweep(connection, local_store, DAY)
    assert result.abandoned == 1
    assert not old.exists()
    assert young.exists()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in TEST_ENVIRONMENT.items():
            patch.setenv(name, value)
        with moto_server() as url:
            yield url


@pytest.fixture
async def s3_store(s3_endpoint) -> AsyncIterator[S3Store]:
    bucket = f"sweep-{secrets.token_hex(4)}"
    inspection_client(s3_endpoint).create_bucket(Bucket=bucket,
                                                 CreateBucketConfiguration={"LocationConstraint": REGION})
    store = S3Store(S3Settings(bucket=bucket, region=REGION, endpoint_url=s3_endpoint,
                               access_key_id=TEST_ENVIRONMENT["AWS_ACCESS_KEY_ID"],
                               secret_access_key=TEST_ENVIRONMENT["AWS_SECRET_ACCESS_KEY"], prefix="mta/"))
    await store.start()
    for key in OLD_KEYS:
        await store.put(key, b"ciphertext")
    yield store
    await store.close()


async def test_s3_sweep_deletes_old_orphans(connection, s3_store):
    await add_rows(connection)
    # moto dates objects by its own clock, so the sweep runs two days later instead.
    later = datetime.now(UTC) + timedelta(days=2)
    await s3_store.put("FRESH", b"ciphertext")

    dry = await sweep(connection, s3_store, DAY, dry_run=True, now=later)
    assert dry.orphaned == 3
    assert len(await keys_of(s3_store)) == 6

    now_result = await sweep(connection, s3_store, DAY)
    assert now_result.recent == 6
    assert now_result.deleted == 0

    await sweep(connection, s3_store, DAY, now=later)
    assert await keys_of(s3_store) == ["ATTACHED", "MAILBOX", "QUEUED"]


async def test_s3_sweep_aborts_abandoned_uploads(connection, s3_endpoint, s3_store):
    client = inspection_client(s3_endpoint)
    client.create_multipart_upload(Bucket=s3_store.bucket, Key="mta/CRASHED")
    client.create_multipart_upload(Bucket=s3_store.bucket, Key="elsewhere/NOT-OURS")
    # moto dates every upload in 2010, so only the local store's test shows a young write kept.
    assert (await sweep(connection, s3_store, DAY, dry_run=True)).abandoned == 1
    assert len(client.list_multipart_uploads(Bucket=s3_store.bucket)["Uploads"]) == 2

    assert (await sweep(connection, s3_store, DAY)).abandoned == 1

    left = client.list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads", [])
    assert [upload["Key"] for upload in left] == ["elsewhere/NOT-OURS"]


def test_cli_sweep_and_dry_run(make_mta):
    mta = make_mta()
    store = LocalStore(mta.workdir / "var" / "blobs")
    asyncio.run(store.put("ORPHAN", b"ciphertext"))
    backdate(store, "ORPHAN", 2 * DAY)

    dry = mta.cli("storage", "sweep", "--dry-run", "--min-age", "24")
    assert dry.returncode == 0, dry.stderr
    assert "1 orphaned: 1 would be deleted" in dry.stdout
    assert store._path("ORPHAN").exists()

    swept = mta.cli("storage", "sweep", "--min-age", "24")
    assert swept.returncode == 0, swept.stderr
    assert "1 orphaned: 1 deleted" in swept.stdout
    assert not store._path("ORPHAN").exists()


def test_cli_rejects_short_min_age(make_mta):
    result = make_mta(start=False).cli("storage", "sweep", "--min-age", "0.5")

    assert result.returncode == 2
    assert "invalid age '0.5'" in result.stderr
