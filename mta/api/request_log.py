"""One log line and one counted metric per API request, as the SMTP side logs its sessions.

The line names the route's template (``/v1/mailbox/{address}/messages``),
never the path as sent, because paths carry addresses. It also names the
token, by its name only, once the request got that far. Failed
authentication (401) and a missing scope (403) are logged as warnings, so
guessed tokens stand out in the log as failed SMTP AUTH attempts do.
"""

from __future__ import annotations

import logging
import time

from mta import metrics

log = logging.getLogger("mta.api")

# Paths that monitoring polls every few seconds: counted, but not logged.
QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})


class RequestLog:
    """ASGI middleware around the FastAPI application."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.monotonic()
        status = 500

        async def send_with_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            _record(scope, status, time.monotonic() - started)


def _record(scope, status: int, seconds: float) -> None:
    route = scope.get("route")
    template = getattr(route, "path", None) or "unmatched"
    metrics.API_REQUESTS.labels(route=template, status_class=f"{status // 100}xx").inc()
    if scope["path"] in QUIET_PATHS:
        return

    token = scope.get("state", {}).get("token")
    client = scope.get("client") or ("-", 0)
    level = logging.WARNING if status in (401, 403) else logging.INFO
    log.log(level, "api: %s %s status=%d token=%s client=%s %.0f ms", scope["method"], template, status,
            token.name if token is not None else "-", client[0], seconds * 1000)
