"""The FastAPI application: routes, error handlers and the OpenAPI document.

The OpenAPI document is served at ``/openapi.json``. The interactive pages
(``/docs``, ``/redoc``) are off, because they load their scripts from a
CDN outside this host.
"""

from __future__ import annotations

from fastapi import FastAPI

from mta.api import (routes_audit, routes_gdpr, routes_health, routes_mailbox, routes_messages, routes_queue,
                     routes_suppression)
from mta.api.context import ApiContext
from mta.api.errors import install_handlers
from mta.api.request_log import RequestLog

DESCRIPTION = """\
Send mail, steer the queue, manage the suppression list, read local
mailboxes, export or erase one person's data and verify the audit log of
this MTA. Every `/v1` endpoint needs `Authorization: Bearer TOKEN`
with a token from `mta api token create NAME --scope SCOPE ...`; the scope of
each endpoint is named in its description. A missing or invalid token gets
401, a token without the scope 403. Every error has the body
`{"error": {"code": "...", "message": "..."}}`, where `code` is one of the
stable values of `ErrorCode`.
"""


def build_app(context: ApiContext) -> FastAPI:
    app = FastAPI(title="mta", version="1", description=DESCRIPTION, docs_url=None, redoc_url=None)
    app.state.context = context
    install_handlers(app)
    for module in (routes_health, routes_messages, routes_queue, routes_suppression, routes_audit, routes_mailbox,
                   routes_gdpr):
        app.include_router(module.router)
    _publish_request_schemas(app)
    app.add_middleware(RequestLog)
    return app


def _publish_request_schemas(app: FastAPI) -> None:
    """Add the JSON message schemas, which no route declares as a parameter, to the OpenAPI document."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = generate()
            document.setdefault("components", {}).setdefault("schemas", {}).update(routes_messages.schemas())
        return app.openapi_schema

    app.openapi = openapi
