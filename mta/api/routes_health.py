"""``/health`` for load balancers, ``/ready`` for orchestrators and ``/metrics`` for Prometheus.

Health returns 200 when the database responds and the number of queued
deliveries is under its threshold, else 503 with the reasons, one per line.
Queue depth, node heartbeats and the webhook backlog are read from the
database at scrape time, so every worker reports the same, correct numbers.
None of the three needs a token: they reveal nothing about messages or people,
and the HTTP listener is on loopback unless configured otherwise.
"""

from __future__ import annotations

import asyncio
import os

import asyncpg
from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import multiprocess
from pydantic import BaseModel

from mta import metrics
from mta.api.context import ApiContext, get_context
from mta.api.errors import ApiError, ErrorCode, documented
from mta.db import TRANSIENT_ERRORS

router = APIRouter(tags=["operations"])

_DEPTH = """
SELECT count(*) FILTER (WHERE lease_owner IS NULL AND NOT held AND due_at <= now()) AS due,
       count(*) FILTER (WHERE lease_owner IS NULL AND NOT held AND due_at > now()) AS deferred,
       count(*) FILTER (WHERE lease_owner IS NOT NULL) AS active,
       count(*) FILTER (WHERE lease_owner IS NULL AND held) AS held
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

_WEBHOOK_BACKLOG = """
SELECT endpoint, count(*) AS pending, extract(epoch FROM now() - min(created_at)) AS oldest
FROM webhook_outbox WHERE state = 'pending' GROUP BY endpoint
"""

_TEXT = {"content": {"text/plain": {"schema": {"type": "string"}}}}

# The auditor reads messages in (xid, id) order, so the next one it will audit is first in that order.
_AUDIT_LAG = """
SELECT COALESCE(EXTRACT(EPOCH FROM now() - (
    SELECT m.received_at FROM message m, audit_cursor c
    WHERE (m.xid, m.id) > (c.message_xid, c.message_id)
    ORDER BY m.xid, m.id LIMIT 1)), 0)::float8
"""


async def queue_depth(pool: asyncpg.Pool) -> dict[str, int]:
    row = await asyncio.wait_for(pool.fetchrow(_DEPTH), timeout=3)
    return {"due": row["due"], "deferred": row["deferred"], "active": row["active"], "held": row["held"]}


@router.get("/health", response_class=PlainTextResponse,
            responses={200: {**_TEXT, "description": "ok"}, 503: {**_TEXT, "description": "the reasons, one a line"}})
async def health(context: ApiContext = Depends(get_context)) -> PlainTextResponse:
    problems = []
    try:
        depth = await queue_depth(context.pool)
        # Held mail waits for an operator on purpose, so it is no backlog.
        backlog = depth["due"] + depth["deferred"] + depth["active"]
        threshold = context.config.http.backlog_threshold
        if backlog > threshold:
            problems.append(f"backlog: {backlog} queued deliveries exceed the threshold of {threshold}")
    except TRANSIENT_ERRORS as error:
        problems.append(f"database unreachable: {error!r}")
    store_problem = await context.store.check()
    if store_problem is not None:
        problems.append(store_problem)

    if problems:
        return PlainTextResponse("\n".join(problems) + "\n", status_code=503)
    return PlainTextResponse("ok\n")


class Ready(BaseModel):
    status: str = "ready"


@router.get("/ready", response_model=Ready, responses=documented(503))
async def ready(context: ApiContext = Depends(get_context)) -> Ready:
    """Report whether this node takes mail: its SMTP listeners are up and the database answers."""
    problems = []
    if not context.readiness.listeners_up:
        problems.append("SMTP listeners are not accepting sessions")
    try:
        await asyncio.wait_for(context.pool.fetchval("SELECT 1"), timeout=3)
    except TRANSIENT_ERRORS as error:
        problems.append(f"database unreachable: {error!r}")
    if problems:
        raise ApiError(503, ErrorCode.not_ready, "; ".join(problems))
    return Ready()


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"}})
async def scrape(context: ApiContext = Depends(get_context)) -> Response:
    try:
        for state, count in (await queue_depth(context.pool)).items():
            metrics.QUEUE_DEPTH.labels(state=state).set(count)
        nodes = await asyncio.wait_for(context.pool.fetchrow(_NODES), timeout=3)
        for state in ("alive", "lost"):
            metrics.NODES.labels(state=state).set(nodes[state])
        metrics.AUDIT_LAG.set(await asyncio.wait_for(context.pool.fetchval(_AUDIT_LAG), timeout=3))
        await _record_webhook_backlog(context)
    except TRANSIENT_ERRORS:
        pass
    return Response(content=generate_latest(_registry()), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _record_webhook_backlog(context: ApiContext) -> None:
    """Set the backlog gauges of each configured endpoint; rows of other endpoints are left out to bound the labels."""
    endpoints = context.config.webhooks.endpoints
    if not endpoints:
        return
    rows = {row["endpoint"]: row for row in await asyncio.wait_for(context.pool.fetch(_WEBHOOK_BACKLOG), timeout=3)}
    for name in endpoints:
        row = rows.get(name)
        metrics.WEBHOOK_PENDING.labels(endpoint=name).set(row["pending"] if row else 0)
        metrics.WEBHOOK_OLDEST.labels(endpoint=name).set(float(row["oldest"]) if row else 0.0)


def _registry() -> CollectorRegistry:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        from prometheus_client import REGISTRY
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry
