"""A body store in an S3 bucket, through one aioboto3 client per store.

An object is durable once S3 has answered PutObject or
CompleteMultipartUpload with success. How redundantly the provider keeps it
depends on the provider and the storage class. Bodies larger than one part
go up as a multipart upload, one part at a time, so at most one part is
held in memory. A failed multipart upload is aborted, so no object appears
under its key.

NOTE: when the endpoint is unreachable the abort fails too, and the provider
keeps the uploaded parts (billed, never readable as an object) until a
bucket lifecycle rule such as AbortIncompleteMultipartUpload removes them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp
from botocore.config import Config as BotocoreConfig
from botocore.exceptions import BotoCoreError, ClientError

from mta.storage.store import StoredObject, StoreError

log = logging.getLogger("mta.storage")

# S3 rejects parts under 5 MiB (except the last) and uploads of more than 10,000 parts.
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PARTS = 10_000
# Octets read per piece by get_stream.
READ_SIZE = 1024 * 1024
# Bodies from this size on are hashed in a worker thread, to keep the event loop free.
_HASH_IN_THREAD = 1024 * 1024
# Seconds a health check may wait for the bucket.
CHECK_TIMEOUT = 5.0

_FAILURES = (BotoCoreError, ClientError, aiohttp.ClientError, asyncio.TimeoutError, OSError)


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    region: str
    # Already checked against the EU allow-list (mta.storage.residency).
    endpoint_url: str
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str = field(default="", repr=False)
    # Prepended to every key, such as "mta/".
    prefix: str = ""
    part_size: int = 8 * 1024 * 1024
    # Seconds to connect, and to wait for each read.
    timeout: float = 30.0
    # Tries per request, the first included. botocore's standard retry mode
    # retries throttling, 5xx replies and connection errors.
    max_attempts: int = 3
    max_connections: int = 50
    # Keys per ListObjectsV2 request, at most 1,000 (S3's limit).
    page_size: int = 1000


class S3Store:
    def __init__(self, settings: S3Settings):
        if settings.part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} octets, got {settings.part_size}")
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self._client = None
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._opening = asyncio.Lock()

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    async def start(self) -> None:
        """Open the client; calls made before start() open it themselves."""
        await self._connected()

    async def close(self) -> None:
        if self._exit_stack is not None:
            await self._exit_stack.aclose()
        self._client = None
        self._exit_stack = None

    async def check(self) -> str | None:
        try:
            client = await self._connected()
            await asyncio.wait_for(client.head_bucket(Bucket=self.bucket), CHECK_TIMEOUT)
        except _FAILURES as error:
            return f"body store unreachable: {self.location}: {_describe(error)}"
        return None

    async def put(self, key: str, data: bytes) -> None:
        if len(data) <= self.settings.part_size:
            await self._put_object(key, data)
            return
        await self.put_stream(key, _slices(data, self.settings.part_size))

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        """Store the chunks as one object: PutObject if they fit one part, else a multipart upload.

        Any failure, in the store or in ``chunks``, aborts the multipart
        upload. Store failures raise StoreError, and other errors propagate
        unchanged.
        """
        part_size = self.settings.part_size
        buffer = bytearray()
        upload_id = None
        parts: list[dict] = []
        try:
            async for chunk in chunks:
                buffer += chunk
                while len(buffer) >= part_size:
                    upload_id = upload_id or await self._create_upload(key)
                    parts.append(await self._upload_part(key, upload_id, len(parts) + 1, _take(buffer, part_size)))

            if upload_id is None:
                await self._put_object(key, bytes(buffer))
                return

            if buffer:
                parts.append(await self._upload_part(key, upload_id, len(parts) + 1, bytes(buffer)))
            await self._complete_upload(key, upload_id, parts)
        except BaseException:
            if upload_id is not None:
                # Shielded so that a cancelled caller still frees the parts.
                await asyncio.shield(self._abort_upload(key, upload_id))
            raise

    async def get(self, key: str) -> bytes:
        return b"".join([piece async for piece in self.get_stream(key)])

    async def get_stream(self, key: str) -> AsyncIterator[bytes]:
        """Yield the object in pieces of up to ``READ_SIZE`` octets."""
        try:
            client = await self._connected()
            response = await client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except _FAILURES as error:
            raise StoreError(f"failed to read object {key} from {self.location}: {_describe(error)}") from error

        body = response["Body"]
        try:
            while piece := await body.read(READ_SIZE):
                yield piece
        except _FAILURES as error:
            raise StoreError(f"failed to read object {key} from {self.location}: {_describe(error)}") from error
        finally:
            body.close()

    async def list_keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Yield the keys that start with ``prefix``, in S3's order (ascending UTF-8)."""
        async for stored in self.list_objects(prefix):
            yield stored.key

    async def list_objects(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        """Yield the objects whose keys start with ``prefix``, in S3's order, with their LastModified times.

        NOTE: a provider may date a multipart object from the start of its
        upload rather than its completion, which makes it look older.
        """
        try:
            client = await self._connected()
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix,
                PaginationConfig={"PageSize": self.settings.page_size})
            async for page in pages:
                for item in page.get("Contents", []):
                    yield StoredObject(item["Key"][len(self.prefix):], item["LastModified"])
        except _FAILURES as error:
            raise StoreError(f"failed to list objects in {self.location}: {_describe(error)}") from error

    async def delete(self, key: str) -> None:
        try:
            client = await self._connected()
            await client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except _FAILURES as error:
            raise StoreError(f"failed to delete object {key} from {self.location}: {_describe(error)}") from error

    async def remove_abandoned_writes(self, before: datetime, dry_run: bool = False) -> int:
        count = 0
        try:
            client = await self._connected()
            pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.prefix)
            async for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] >= before:
                        continue
                    if not dry_run:
                        await client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                            UploadId=upload["UploadId"])
                    count += 1
        except _FAILURES as error:
            raise StoreError(f"failed to abort abandoned multipart uploads in {self.location}: "
                             f"{_describe(error)}") from error
        return count

    async def _put_object(self, key: str, data: bytes) -> None:
        try:
            client = await self._connected()
            await client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data,
                                    ContentMD5=await _content_md5(data))
        except _FAILURES as error:
            raise StoreError(f"failed to store object {key} in {self.location}: {_describe(error)}") from error

    async def _create_upload(self, key: str) -> str:
        try:
            client = await self._connected()
            response = await client.create_multipart_upload(Bucket=self.bucket, Key=self.prefix + key)
        except _FAILURES as error:
            raise StoreError(f"failed to start the upload of object {key} to {self.location}: "
                             f"{_describe(error)}") from error
        return response["UploadId"]

    async def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> dict:
        if number > MAX_PARTS:
            raise StoreError(f"object {key} needs more than {MAX_PARTS} parts of {self.settings.part_size} "
                             "octets: raise storage.part_size")
        try:
            client = await self._connected()
            response = await client.upload_part(Bucket=self.bucket, Key=self.prefix + key, UploadId=upload_id,
                                                PartNumber=number, Body=data, ContentMD5=await _content_md5(data))
        except _FAILURES as error:
            raise StoreError(f"failed to upload part {number} of object {key} to {self.location}: "
                             f"{_describe(error)}") from error
        return {"PartNumber": number, "ETag": response["ETag"]}

    async def _complete_upload(self, key: str, upload_id: str, parts: list[dict]) -> None:
        try:
            client = await self._connected()
            await client.complete_multipart_upload(Bucket=self.bucket, Key=self.prefix + key, UploadId=upload_id,
                                                   MultipartUpload={"Parts": parts})
        except _FAILURES as error:
            raise StoreError(f"failed to complete the upload of object {key} to {self.location}: "
                             f"{_describe(error)}") from error

    async def _abort_upload(self, key: str, upload_id: str) -> None:
        try:
            client = await self._connected()
            await client.abort_multipart_upload(Bucket=self.bucket, Key=self.prefix + key, UploadId=upload_id)
        except _FAILURES as error:
            log.warning("%s: failed to abort the multipart upload to %s, its parts stay until a lifecycle rule "
                        "removes them: %s", key, self.location, _describe(error))

    async def _connected(self):
        """Return the client, opening it on first use."""
        if self._client is not None:
            return self._client
        async with self._opening:
            if self._client is None:
                await self._open()
        return self._client

    async def _open(self) -> None:
        # Imported here so that a local store never loads aioboto3.
        import aioboto3

        settings = self.settings
        session = aioboto3.Session(aws_access_key_id=settings.access_key_id,
                                   aws_secret_access_key=settings.secret_access_key,
                                   aws_session_token=settings.session_token or None,
                                   region_name=settings.region)
        stack = contextlib.AsyncExitStack()
        self._client = await stack.enter_async_context(
            session.client("s3", endpoint_url=settings.endpoint_url, config=_botocore_config(settings)))
        self._exit_stack = stack
        log.info("body store %s at %s (region %s)", self.location, settings.endpoint_url, settings.region)


def _botocore_config(settings: S3Settings) -> BotocoreConfig:
    from aiobotocore.config import AioConfig

    from mta.storage.s3_http import NoRedirectSession

    return AioConfig(
        http_session_cls=NoRedirectSession,
        connect_timeout=settings.timeout,
        read_timeout=settings.timeout,
        retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
        max_pool_connections=settings.max_connections,
        # Checksums only where S3 requires them: some S3-compatible services
        # reject the CRC trailers botocore adds by default since 1.36. Writes
        # carry Content-MD5 instead, and reads are checked by the AES-GCM tag.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


async def _content_md5(data: bytes) -> str:
    if len(data) < _HASH_IN_THREAD:
        digest = hashlib.md5(data, usedforsecurity=False).digest()
    else:
        digest = await asyncio.to_thread(lambda: hashlib.md5(data, usedforsecurity=False).digest())
    return base64.b64encode(digest).decode("ascii")


def _take(buffer: bytearray, size: int) -> bytes:
    part = bytes(buffer[:size])
    del buffer[:size]
    return part


async def _slices(data: bytes, size: int) -> AsyncIterator[memoryview]:
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield view[start:start + size]


def _describe(error: BaseException) -> str:
    """Return only the code and message of an S3 error reply.

    Other fields of some replies, such as SignatureDoesNotMatch, contain the
    access key id and the string that was signed.
    """
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        return f"{details.get('Code', 'unknown error')}: {details.get('Message', '')}".rstrip(": ")
    if isinstance(error, asyncio.TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__
