"""Serve the API's ASGI app with uvicorn on the worker's own event loop.

uvicorn's ``Server.serve`` runs as one more task of the worker: no thread,
no second loop, and uvloop stays the worker's loop because ``Server.run``
(which would set up a loop) is never called. The worker owns the process
signals, so uvicorn is kept from installing its own handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

# Seconds a stopping worker lets HTTP requests in flight finish.
STOP_GRACE = 5.0


class _WorkerServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # SIGTERM and SIGHUP are the worker's: it stops this server itself.
        yield


class HttpServer:
    def __init__(self, app: FastAPI, sock: socket.socket):
        config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, server_header=False,
                                proxy_headers=False, http="h11", ws="none", loop="none",
                                timeout_graceful_shutdown=STOP_GRACE)
        self.server = _WorkerServer(config)
        self.sock = sock
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        """Start serving; return once the socket accepts requests, or raise what stopped uvicorn."""
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]), name="http")
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish for up to STOP_GRACE seconds, and return."""
        if self.task is None:
            return
        self.server.should_exit = True
        await self.task


async def serve(app: FastAPI, sock: socket.socket) -> HttpServer:
    server = HttpServer(app, sock)
    await server.start()
    return server
