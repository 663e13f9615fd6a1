"""``/health`` for load balancers and ``/metrics`` for Prometheus, on aiohttp.

Health returns 200 when the database responds and the number of queued
deliveries is under its threshold, else 503 with the reasons, one per line.
Queue depth and node heartbeats are read from the database at scrape time,
so every worker reports the same, correct numbers.
"""

from __future__ import annotations

import asyncio
import os
import socket

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import multiprocess

from mta import metrics
from mta.config import Config
from mta.db import TRANSIENT_ERRORS
from mta.storage.store import BodyStore

_DEPTH = """
SELECT count(*) FILTER (WHERE lease_owner IS NULL AND due_at <= now()) AS due,
       count(*) FILTER (WHERE lease_owner IS NULL AND due_at > now()) AS deferred,
       count(*) FILTER (WHERE lease_owner IS NOT NULL) AS active
FROM delivery
"""

# Alive as `mta nodes` and the site shares count them (30 s). A crashed node's
# row is never removed, so lost counts only the last hour: an alert on it
# fires after a crash and then clears by itself.
_NODES = """
SELECT count(*) FILTER (WHERE seen_at > now() - interval '30 seconds') AS alive,
       count(*) FILTER (WHERE seen_at <= now() - interval '30 seconds'
                          AND seen_at > now() - interval '1 hour') AS lost
FROM node
"""


async def queue_depth(pool: asyncpg.Pool) -> dict[str, int]:
    row = await asyncio.wait_for(pool.fetchrow(_DEPTH), timeout=3)
    return {"due": row["due"], "deferred": row["deferred"], "active": row["active"]}


def build_app(config: Config, pool: asyncpg.Pool, store: BodyStore) -> web.Application:
    async def health(request: web.Request) -> web.Response:
        problems = []
        try:
            depth = await queue_depth(pool)
            backlog = sum(depth.values())
            if backlog > config.http.backlog_threshold:
                problems.append(f"backlog: {backlog} queued deliveries exceed the threshold "
                                f"of {config.http.backlog_threshold}")
        except TRANSIENT_ERRORS as error:
            problems.append(f"database unreachable: {error!r}")
        store_problem = await store.check()
        if store_problem is not None:
            problems.append(store_problem)

        if problems:
            return web.Response(status=503, text="\n".join(problems) + "\n")
        return web.Response(text="ok\n")

    async def scrape(request: web.Request) -> web.Response:
        try:
            for state, count in (await queue_depth(pool)).items():
                metrics.QUEUE_DEPTH.labels(state=state).set(count)
            nodes = await asyncio.wait_for(pool.fetchrow(_NODES), timeout=3)
            for state in ("alive", "lost"):
                metrics.NODES.labels(state=state).set(nodes[state])
        except TRANSIENT_ERRORS:
            pass
        return web.Response(body=generate_latest(_registry()), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", scrape)
    return app


def _registry() -> CollectorRegistry:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        from prometheus_client import REGISTRY
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


async def serve(app: web.Application, sock: socket.socket) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    return runner
