"""A real S3 HTTP endpoint on loopback (moto's server), and a proxy in front of it that fails on request.

Nothing here reaches a real provider: every endpoint is on 127.0.0.1, the
credentials are dummies, and instance metadata lookups are disabled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import boto3
from aiohttp import web
from botocore.config import Config
from moto.server import ThreadedMotoServer

from loadtest.target import free_port

LOOPBACK = "127.0.0.1"
REGION = "eu-west-1"
# Dummies that botocore signs with; moto's server does not check them.
TEST_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "test-access-key-id",
    "AWS_SECRET_ACCESS_KEY": "test-secret-access-key-not-for-logs",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


@contextmanager
def moto_server() -> Iterator[str]:
    """Run moto's S3 server on a free loopback port and yield its endpoint URL."""
    # werkzeug logs one line per request.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port(LOOPBACK)
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.stop()


def inspection_client(endpoint_url: str):
    """Return a plain boto3 client for checking what the store left in moto."""
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=REGION,
                        aws_access_key_id=TEST_ENVIRONMENT["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=TEST_ENVIRONMENT["AWS_SECRET_ACCESS_KEY"],
                        config=Config(retries={"total_max_attempts": 1}))


# Headers that describe one HTTP hop, not the request itself.
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "expect", "te", "upgrade"}


class FailingProxy:
    """Forward requests to the S3 server, failing UploadPart requests after the first ``parts_allowed``.

    ``mode`` is how a part fails: "status_500" replies 500 InternalError,
    "reset" drops the connection, and "down" drops it and every later
    request too, as an endpoint that went away.
    """

    def __init__(self, target: str, parts_allowed: int, mode: str):
        self.target = target
        self.parts_allowed = parts_allowed
        self.mode = mode
        self.parts_seen = 0
        self.failed_requests = 0
        self.down = False
        self.port = free_port(LOOPBACK)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self.port).start()

    async def stop(self) -> None:
        await self._runner.cleanup()
        await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self._should_fail(request):
            self.failed_requests += 1
            if self.mode == "status_500":
                return web.Response(status=500, content_type="application/xml",
                                    text="<Error><Code>InternalError</Code><Message>injected</Message></Error>")
            request.transport.abort()
            # Nothing reaches the client through the aborted transport.
            return web.Response(status=500)
        return await self._forward(request, body)

    def _should_fail(self, request: web.Request) -> bool:
        if self.down:
            return True
        if request.method != "PUT" or "partNumber" not in request.query:
            return False
        self.parts_seen += 1
        if self.parts_seen <= self.parts_allowed:
            return False
        self.down = self.mode == "down"
        return True

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        headers = {name: value for name, value in request.headers.items() if name.lower() not in _HOP_HEADERS}
        async with self._session.request(request.method, self.target + request.path_qs, headers=headers,
                                         data=body) as upstream:
            payload = await upstream.read()
            reply_headers = {name: value for name, value in upstream.headers.items()
                             if name.lower() not in _HOP_HEADERS}
            return web.Response(status=upstream.status, body=payload, headers=reply_headers)
