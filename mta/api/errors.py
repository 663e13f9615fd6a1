"""The API's error body ``{"error": {"code": ..., "message": ...}}`` and its stable codes.

Clients branch on ``code``, which never changes meaning. ``message`` is
for people and may be reworded. Every error response, FastAPI's own
validation and routing errors included, has this shape.
"""

from __future__ import annotations

import enum
import logging

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from mta.db import TRANSIENT_ERRORS
from mta.ids import new_session_id

log = logging.getLogger("mta.api")


class ErrorCode(str, enum.Enum):
    """Stable error codes, with the HTTP status each comes with."""

    unauthorized = "unauthorized"                  # 401: no bearer token
    invalid_token = "invalid_token"                # 401: unknown, malformed or revoked token
    insufficient_scope = "insufficient_scope"      # 403: the token lacks the endpoint's scope
    sender_not_allowed = "sender_not_allowed"      # 403: From is not the token's account or sender domains
    mailbox_not_allowed = "mailbox_not_allowed"    # 403: a token bound to an account reads another mailbox
    not_found = "not_found"                        # 404: no such path, queue id, suppression entry, mailbox
                                                   # message, stored attachment or legal hold
    unknown_mailbox = "unknown_mailbox"            # 404: the address has no account and no stored message
    nothing_stored = "nothing_stored"              # 404: erase found nothing stored about the address
    method_not_allowed = "method_not_allowed"      # 405
    message_too_large = "message_too_large"        # 413: over the submission size limit
    unsupported_media_type = "unsupported_media_type"  # 415: neither JSON nor message/rfc822
    invalid_request = "invalid_request"            # 422: the request does not match the schema
    invalid_queue_id = "invalid_queue_id"          # 422
    invalid_address = "invalid_address"            # 422: a sender or recipient address
    too_many_recipients = "too_many_recipients"    # 422: over the submission recipient limit
    unknown_recipient = "unknown_recipient"        # 422: a local mailbox that does not exist
    invalid_message = "invalid_message"            # 422: the message breaks submission policy
    message_rejected = "message_rejected"          # 422: a content check rejected it
    busy = "busy"                                  # 409: a node is delivering the message right now
    legal_hold = "legal_hold"                      # 409: the address is under a legal hold, so nothing is erased
    key_destroyed = "key_destroyed"                # 410: the mailbox's data key was destroyed, so the content is gone
    not_ready = "not_ready"                        # 503: /ready only
    temporarily_unavailable = "temporarily_unavailable"  # 503: database, body store or check down, so retry
    internal_error = "internal_error"              # 500: logged with the reference in the message


class ErrorDetail(BaseModel):
    code: ErrorCode
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    """An error to return as the JSON error body."""

    def __init__(self, status: int, code: ErrorCode, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(status: int, code: ErrorCode, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code.value, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def documented(*statuses: int) -> dict[int | str, dict]:
    """Return the ``responses`` argument of a route that documents these error statuses, and 503.

    503 is on every route because any of them can find the database down.
    """
    return {status: {"model": ErrorResponse, "description": "an error, named by its code"} for status in (*statuses, 503)}


_STATUS_CODES = {404: ErrorCode.not_found, 405: ErrorCode.method_not_allowed, 401: ErrorCode.unauthorized,
                 413: ErrorCode.message_too_large, 415: ErrorCode.unsupported_media_type}


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, ErrorCode.invalid_request, _describe(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(error.status_code, ErrorCode.invalid_request)
        return error_response(error.status_code, code, str(error.detail))

    async def transient(request: Request, error: Exception) -> JSONResponse:
        reference = new_session_id()
        log.error("api: %s %s: database or network error, ref %s: %r", request.method, request.url.path,
                  reference, error)
        return error_response(503, ErrorCode.temporarily_unavailable,
                              f"the database is unreachable, try again later (ref {reference})")

    async def unstorable(request: Request, error: Exception) -> JSONResponse:
        return error_response(422, ErrorCode.invalid_request,
                              "a value contains a character the database cannot store, such as NUL")

    # PostgreSQL refuses NUL in text values wherever a client put it: a query
    # parameter, a path or a JSON field. That is the request's fault, not an outage.
    app.add_exception_handler(asyncpg.CharacterNotInRepertoireError, unstorable)
    app.add_exception_handler(asyncpg.UntranslatableCharacterError, unstorable)

    # Each class on its own: a handler for Exception itself would run in
    # Starlette's outermost middleware, which re-raises after responding.
    for error_class in TRANSIENT_ERRORS:
        app.add_exception_handler(error_class, transient)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        reference = new_session_id()
        # uvicorn logs the traceback after this line, as Starlette re-raises the error.
        log.error("api: %s %s: unexpected error, ref %s: %r", request.method, request.url.path, reference, error)
        return error_response(500, ErrorCode.internal_error, f"internal error, logged with ref {reference}")


def _describe(error: RequestValidationError) -> str:
    """Name the first invalid field and why, as '<location>: <reason>'."""
    problems = error.errors()
    if not problems:
        return "invalid request"
    first = problems[0]
    location = ".".join(str(part) for part in first.get("loc", ()))
    return f"{location}: {first.get('msg', 'invalid')}"
