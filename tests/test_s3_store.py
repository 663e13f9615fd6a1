"""The S3 body store against moto's S3 server on loopback, its EU allow-list, and the MTA running on it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import smtplib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web

from mta.config import ConfigError, load
from mta.storage.s3 import S3Settings, S3Store
from mta.storage.store import StoreError
from tests.conftest import config_error, query
from tests.mtaprocess import REPOSITORY
from tests.mx import RELAY_DOMAIN, relay_config, send_mx, wait_until
from loadtest.target import free_port
from tests.s3server import REGION, TEST_ENVIRONMENT, FailingProxy, inspection_client, moto_server

MIB = 1024 * 1024


@pytest.fixture(scope="module", autouse=True)
def aws_environment() -> Iterator[None]:
    """Dummy credentials, and no metadata or profile lookups, for this process and the MTAs it starts."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in TEST_ENVIRONMENT.items():
            patch.setenv(name, value)
        yield


@pytest.fixture(scope="module")
def endpoint(aws_environment) -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def bucket(endpoint: str) -> str:
    name = f"bodies-{secrets.token_hex(4)}"
    inspection_client(endpoint).create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    return name


def settings(endpoint: str, bucket: str, **overrides) -> S3Settings:
    values = dict(bucket=bucket, region=REGION, endpoint_url=endpoint,
                  access_key_id=TEST_ENVIRONMENT["AWS_ACCESS_KEY_ID"],
                  secret_access_key=TEST_ENVIRONMENT["AWS_SECRET_ACCESS_KEY"],
                  prefix="mta/", part_size=5 * MIB, timeout=10.0, max_attempts=2)
    values.update(overrides)
    return S3Settings(**values)


@pytest.fixture
async def store(endpoint: str, bucket: str) -> AsyncIterator[S3Store]:
    s3_store = S3Store(settings(endpoint, bucket))
    await s3_store.start()
    yield s3_store
    await s3_store.close()


async def pattern_chunks(total: int, chunk_size: int, digest) -> AsyncIterator[bytes]:
    """Yield ``total`` octets of varied data in chunks, feeding each chunk to ``digest``."""
    block = os.urandom(chunk_size)
    sent = 0
    number = 0
    while sent < total:
        chunk = (number.to_bytes(8, "big") + block)[:min(chunk_size, total - sent)]
        digest.update(chunk)
        sent += len(chunk)
        number += 1
        yield chunk


async def test_put_get_delete_round_trip(store, endpoint, bucket):
    data = os.urandom(300_000)

    await store.put("Q1", data)
    assert await store.get("Q1") == data
    stored = inspection_client(endpoint).get_object(Bucket=bucket, Key="mta/Q1")["Body"].read()
    assert stored == data

    await store.delete("Q1")
    with pytest.raises(StoreError, match="failed to read object Q1 .*NoSuchKey"):
        await store.get("Q1")
    await store.delete("Q1")


async def test_list_keys_pages(endpoint, bucket):
    paged = S3Store(settings(endpoint, bucket, page_size=2))
    keys = [f"A{number:02d}" for number in range(7)] + ["B00", "B01"]
    try:
        for key in keys:
            await paged.put(key, key.encode())

        assert [key async for key in paged.list_keys()] == keys
        assert [key async for key in paged.list_keys("B")] == ["B00", "B01"]
        assert [key async for key in paged.list_keys("C")] == []
    finally:
        await paged.close()


async def test_multipart_upload_of_50_mb(store, endpoint, bucket):
    sent = hashlib.sha256()
    started = time.monotonic()

    await store.put_stream("BIG", pattern_chunks(50 * MIB, 256 * 1024, sent))
    uploaded = time.monotonic() - started

    head = inspection_client(endpoint).head_object(Bucket=bucket, Key="mta/BIG")
    assert head["ContentLength"] == 50 * MIB
    # 50 MiB in 5 MiB parts: the multipart ETag ends in the part count.
    assert head["ETag"].strip('"').endswith("-10")

    received = hashlib.sha256()
    async for piece in store.get_stream("BIG"):
        received.update(piece)
    assert received.hexdigest() == sent.hexdigest()
    assert uploaded < 60


async def test_small_stream_is_one_put(store, endpoint, bucket):
    await store.put_stream("SMALL", pattern_chunks(MIB, 64 * 1024, hashlib.sha256()))

    head = inspection_client(endpoint).head_object(Bucket=bucket, Key="mta/SMALL")
    assert head["ContentLength"] == MIB
    assert "-" not in head["ETag"]


async def test_large_put_is_multipart(store, endpoint, bucket):
    data = os.urandom(12 * MIB)

    await store.put("LARGE", data)

    head = inspection_client(endpoint).head_object(Bucket=bucket, Key="mta/LARGE")
    assert head["ETag"].strip('"').endswith("-3")
    assert await store.get("LARGE") == data


@pytest.mark.parametrize("mode", ["status_500", "reset"])
async def test_failed_part_aborts_upload(endpoint, bucket, mode):
    proxy = FailingProxy(endpoint, parts_allowed=2, mode=mode)
    await proxy.start()
    failing = S3Store(settings(proxy.endpoint_url, bucket))
    try:
        with pytest.raises(StoreError, match="failed to upload part 3 of object HALF"):
            await failing.put_stream("HALF", pattern_chunks(30 * MIB, MIB, hashlib.sha256()))
    finally:
        await failing.close()
        await proxy.stop()

    client = inspection_client(endpoint)
    # Each try of part 3 failed; the HTTP client may retry a reset connection on its own too.
    assert proxy.failed_requests >= 2
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_endpoint_gone_leaves_no_object(endpoint, bucket):
    proxy = FailingProxy(endpoint, parts_allowed=1, mode="down")
    await proxy.start()
    failing = S3Store(settings(proxy.endpoint_url, bucket))
    try:
        with pytest.raises(StoreError, match="failed to upload part 2 of object GONE"):
            await failing.put_stream("GONE", pattern_chunks(20 * MIB, MIB, hashlib.sha256()))
    finally:
        await failing.close()
        await proxy.stop()

    client = inspection_client(endpoint)
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    # The abort could not reach the endpoint either, so the parts stay for a lifecycle rule.
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [upload["Key"] for upload in uploads] == ["mta/GONE"]


async def test_failing_producer_aborts_upload(store, endpoint, bucket):
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(7):
            yield os.urandom(MIB)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.put_stream("DROPPED", chunks())

    client = inspection_client(endpoint)
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_unreachable_endpoint_fails_check(bucket):

    closed = S3Store(settings(f"http://127.0.0.1:{free_port()}", bucket, timeout=2.0, max_attempts=1))
    try:
        problem = await closed.check()
        with pytest.raises(StoreError, match="failed to store object X"):
            await closed.put("X", b"body")
    finally:
        await closed.close()
    assert problem is not None
    assert problem.startswith("body store unreachable")


def s3_toml(**storage) -> str:
    lines = [f"{name} = {value!r}".replace("'", '"') if not isinstance(value, bool)
             else f"{name} = {str(value).lower()}" for name, value in storage.items()]
    return "[storage]\nkind = \"s3\"\nbucket = \"bodies\"\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize("region, reason", [
    ("us-east-1", "is not an allowed EU region"),
    ("eu-west-2", "AWS London, United Kingdom, outside the EU"),
    ("eu-central-2", "AWS Zurich, Switzerland, outside the EU"),
    ("uk", "OVHcloud London, United Kingdom, outside the EU"),
    ("", "is not an allowed EU region"),
    ("EU-WEST-1", "region names are lower case, such as 'eu-west-1'"),
])
def test_config_rejects_region_outside_eu(tmp_path, region, reason):
    message = config_error(tmp_path, s3_toml(region=region))

    assert f"storage.region {region!r}" in message
    assert reason in message
    assert "Allowed regions: de, eu-central-1" in message


@pytest.mark.parametrize("endpoint_url, reason", [
    ("https://s3.us-east-1.amazonaws.com", "is not an allowed EU endpoint"),
    ("https://storage.example.com", "is not an allowed EU endpoint"),
    ("https://s3.eu-west-3.amazonaws.com", "serves region eu-west-3, not storage.region 'eu-west-1'"),
    ("http://s3.eu-west-1.amazonaws.com", "must use https"),
    ("http://127.0.0.1:9000", "allowed only with storage.allow_loopback_endpoint = true"),
    ("https://s3.eu-west-1.amazonaws.com/path", "must look like https://host[:port]"),
])
def test_config_rejects_endpoint(tmp_path, endpoint_url, reason):
    message = config_error(tmp_path, s3_toml(region="eu-west-1", endpoint_url=endpoint_url))

    assert "storage.endpoint_url" in message
    assert reason in message


@pytest.mark.parametrize("pattern", ["*", "*.eu", "s3.*.example.eu", "*.s3.us-east-1.amazonaws.com"])
def test_config_rejects_wide_extra_host(tmp_path, pattern):
    message = config_error(tmp_path, s3_toml(region="eu-west-1", extra_endpoint_hosts=[pattern]))

    assert f"storage.extra_endpoint_hosts entry {pattern!r}" in message


@pytest.mark.parametrize("storage", [
    {"region": "fr-par"},
    {"region": "gra", "endpoint_url": "https://s3.gra.perf.cloud.ovh.net"},
    {"region": "eu-south-2", "endpoint_url": "https://s3.dualstack.eu-south-2.amazonaws.com"},
    {"region": "eu-north-1", "endpoint_url": "https://objects.example.eu", "extra_endpoint_hosts": ["objects.example.eu"]},
    # Your own EU service names its region as it likes: the listed host is what counts.
    {"region": "fsn1", "endpoint_url": "https://fsn1.objects.example.eu", "extra_endpoint_hosts": ["*.objects.example.eu"]},
    {"region": "eu-west-1", "endpoint_url": "http://127.0.0.1:9000", "allow_loopback_endpoint": True},
])
def test_config_accepts_eu_location(tmp_path, storage):
    path = tmp_path / "mta.toml"
    path.write_text(s3_toml(**storage))

    assert load(path).storage.region == storage["region"]


def test_config_needs_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    message = config_error(tmp_path, s3_toml(region="eu-west-1"))

    assert "needs credentials" in message
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in message


def check_config(tmp_path, toml: str) -> subprocess.CompletedProcess:
    path = tmp_path / "mta.toml"
    path.write_text(toml)
    return subprocess.run([sys.executable, "-m", "mta", "--config", str(path), "check-config"],
                          capture_output=True, text=True, cwd=REPOSITORY, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(REPOSITORY)})


def test_check_config_rejects_us_region(tmp_path):
    result = check_config(tmp_path, s3_toml(region="us-east-1"))

    assert result.returncode == 2
    assert "storage.region 'us-east-1' is not an allowed EU region" in result.stderr


def test_check_config_redacts_credentials(tmp_path):
    result = check_config(tmp_path, s3_toml(region="eu-west-1", access_key_id="AKIDFROMFILE",
                                            secret_access_key="secret-from-file"))

    assert result.returncode == 0, result.stderr
    assert "AKIDFROMFILE" not in result.stdout
    assert "secret-from-file" not in result.stdout
    assert '"secret_access_key": "(redacted)"' in result.stdout


def large_message(size: int) -> bytes:
    """Return a message of about ``size`` octets with lines of 76 characters."""
    line = secrets.token_hex(38).encode()
    lines = [line] * (size // 78)
    return b"Subject: large\r\nFrom: sender@example.net\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"


def test_mta_stores_and_delivers_through_s3(make_mta, sink, sink_port, endpoint, bucket):
    extra = relay_config(sink_port)
    extra["storage"] = {"kind": "s3", "bucket": bucket, "region": REGION, "endpoint_url": endpoint,
                        "allow_loopback_endpoint": True, "prefix": "bodies/", "part_size": 5 * MIB}
    mta = make_mta(extra)
    result = mta.cli("user", "add", "alice@example.com", "--password-stdin", input_text="long enough password\n")
    assert result.returncode == 0, result.stderr
    body = large_message(6 * MIB)

    with smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=60) as client:
        client.ehlo("client.example.net")
        client.mail("sender@example.net")
        client.rcpt("alice@example.com")
        client.rcpt(f"user@{RELAY_DOMAIN}")
        code, text = client.data(body)
    assert code == 250, text
    queue_id = text.decode().rsplit(" ", 1)[1]

    delivered = sink.wait_for(1, timeout=60)[0].data
    assert delivered.endswith(body.split(b"\r\n\r\n", 1)[1])
    assert wait_until(lambda: query(mta.database_url, "SELECT id FROM delivery") == [])

    # The mailbox copy keeps the body in S3, encrypted: larger than the message, never equal to it.
    client = inspection_client(endpoint)
    head = client.head_object(Bucket=bucket, Key=f"bodies/{queue_id}")
    assert head["ContentLength"] > len(body)
    assert head["ETag"].strip('"').endswith("-2")
    assert body[-1000:] not in client.get_object(Bucket=bucket, Key=f"bodies/{queue_id}")["Body"].read()
    assert not (mta.workdir / "var" / "blobs").exists()
    assert TEST_ENVIRONMENT["AWS_SECRET_ACCESS_KEY"] not in mta.log()


def test_mta_deletes_relayed_body_from_s3(make_mta, sink, sink_port, endpoint, bucket):
    extra = relay_config(sink_port)
    extra["storage"] = {"kind": "s3", "bucket": bucket, "region": REGION, "endpoint_url": endpoint,
                        "allow_loopback_endpoint": True}
    mta = make_mta(extra)

    code, text = send_mx(mta, "sender@example.net", f"user@{RELAY_DOMAIN}", large_message(MIB))
    assert code == 250, text

    assert len(sink.wait_for(1, timeout=30)) == 1
    client = inspection_client(endpoint)
    assert wait_until(lambda: client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0)
    assert "removed" in mta.log()


def test_config_error_names_key(tmp_path):
    with pytest.raises(ConfigError, match="storage.kind must be one of local, s3, got 'ftp'"):
        path = tmp_path / "mta.toml"
        path.write_text('[storage]\nkind = "ftp"\n')
        load(path)


def message_rows(url: str) -> dict[str, int]:
    counts = {}
    for table in ("message", "message_body", "delivery"):
        counts[table] = query(url, f"SELECT count(*) FROM {table}")[0][0]
    return counts


@pytest.mark.parametrize("mode", ["down", "reset"])
async def test_s3_failure_during_accept_gives_451(make_mta, sink, sink_port, endpoint, bucket, mode):
    proxy = FailingProxy(endpoint, parts_allowed=1, mode=mode)
    await proxy.start()
    try:
        extra = relay_config(sink_port)
        extra["smtp"] = {"max_message_size": 32 * MIB}
        extra["storage"] = {"kind": "s3", "bucket": bucket, "region": REGION, "endpoint_url": proxy.endpoint_url,
                            "allow_loopback_endpoint": True, "part_size": 5 * MIB, "timeout": 5.0,
                            "max_attempts": 2}
        # Blocking steps run in threads, so the proxy on this event loop keeps serving the MTA.
        mta = await asyncio.to_thread(make_mta, extra)
        body = large_message(12 * MIB)

        code, text = await asyncio.to_thread(send_mx, mta, "sender@example.net", f"user@{RELAY_DOMAIN}", body)

        assert code == 451, text
        assert text.startswith(b"4.3.0"), text
        assert proxy.failed_requests >= 1
        assert await asyncio.to_thread(message_rows, mta.database_url) == {"message": 0, "message_body": 0,
                                                                           "delivery": 0}
        client = inspection_client(endpoint)
        assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
        assert "not queued, 451 sent: body store unavailable" in mta.log()

        proxy.down = False
        proxy.parts_allowed = 1_000_000
        code, text = await asyncio.to_thread(send_mx, mta, "sender@example.net", f"user@{RELAY_DOMAIN}", body)

        assert code == 250, text
        queue_id = text.decode().rsplit(" ", 1)[1]
        rows = await asyncio.to_thread(query, mta.database_url, "SELECT id, body_key FROM message")
        assert [(row["id"], row["body_key"]) for row in rows] == [(queue_id, queue_id)]
        assert len(await asyncio.to_thread(sink.wait_for, 1, 60)) == 1
    finally:
        await proxy.stop()


async def test_redirect_not_followed(bucket):
    """A 3xx from the endpoint fails the put: following it could take the body outside the allow-list."""
    elsewhere_requests = []

    async def elsewhere(request):
        elsewhere_requests.append(await request.read())
        return web.Response(status=200)

    async def redirect(request):
        raise web.HTTPTemporaryRedirect(f"http://127.0.0.2:{elsewhere_port}{request.path_qs}")

    elsewhere_app, redirect_app = web.Application(), web.Application()
    elsewhere_app.router.add_route("*", "/{tail:.*}", elsewhere)
    redirect_app.router.add_route("*", "/{tail:.*}", redirect)
    runners = [web.AppRunner(elsewhere_app), web.AppRunner(redirect_app)]
    for runner in runners:
        await runner.setup()
    elsewhere_port, redirect_port = free_port("127.0.0.2"), free_port()
    await web.TCPSite(runners[0], "127.0.0.2", elsewhere_port).start()
    await web.TCPSite(runners[1], "127.0.0.1", redirect_port).start()
    redirected = S3Store(settings(f"http://127.0.0.1:{redirect_port}", bucket, max_attempts=1))
    try:
        with pytest.raises(StoreError):
            await redirected.put("redirected-object", b"x" * 1000)
    finally:
        await redirected.close()
        for runner in runners:
            await runner.cleanup()

    assert elsewhere_requests == []
