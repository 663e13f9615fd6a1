"""``POST /v1/messages``: send a message as JSON fields or as raw RFC 5322 (``message/rfc822``)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ValidationError

from mta.api import compose
from mta.api.auth import require
from mta.api.context import ApiContext, get_context
from mta.api.errors import ApiError, ErrorCode, documented
from mta.api.submit import LIMITS_OF, Upload, submit
from mta.api.tokens import Token

router = APIRouter(prefix="/v1", tags=["messages"])

JSON_TYPE = "application/json"
RAW_TYPE = "message/rfc822"
# Octets of JSON allowed per octet of message: base64 attachments grow by a
# third and JSON escapes of non-ASCII text more, so the message size itself
# is checked again once it is built.
_JSON_EXPANSION = 2
_JSON_OVERHEAD = 65536


class Queued(BaseModel):
    queue_id: str
    recipients: int


def schemas() -> dict[str, dict]:
    """Return the OpenAPI component schemas of the JSON request body, for the app to publish."""
    schema = compose.JsonMessage.model_json_schema(ref_template="#/components/schemas/{model}",
                                                   by_alias=True)
    definitions = schema.pop("$defs", {})
    return {"JsonMessage": schema, **definitions}


_REQUEST_BODY = {
    "required": True,
    "content": {
        JSON_TYPE: {"schema": {"$ref": "#/components/schemas/JsonMessage"}},
        RAW_TYPE: {"schema": {"type": "string", "format": "binary"}},
    },
}


@router.post("/messages", status_code=202, response_model=Queued,
             responses=documented(401, 403, 413, 415, 422, 503), openapi_extra={"requestBody": _REQUEST_BODY})
async def send_message(request: Request,
                       to: list[str] = Query([], description="message/rfc822 only: envelope recipients; "
                                                             "absent: the To, Cc and Bcc fields"),
                       token: Token = Depends(require("send")),
                       context: ApiContext = Depends(get_context)) -> Queued:
    """Check, DKIM-sign and queue a message as submission on port 587 does. Scope: `send`.

    The From address must be the token's account, or at a sender domain of
    the token. Size and recipient limits are those of the submission
    listener. Bcc fields of a raw message are removed. The reply comes after
    the message is durably queued.
    """
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    max_size = context.config.listener_limits(LIMITS_OF)[0]
    if media_type == JSON_TYPE:
        body = await _read_body(request, max_size * _JSON_EXPANSION + _JSON_OVERHEAD)
        data, recipients = _from_json(body)
    elif media_type == RAW_TYPE:
        data, recipients = _from_raw(await _read_body(request, max_size), to)
    else:
        raise ApiError(415, ErrorCode.unsupported_media_type,
                       f"Content-Type must be {JSON_TYPE} or {RAW_TYPE}, not {media_type or 'absent'}")

    client = request.client.host if request.client else ""
    queue_id = await submit(context, token, Upload(data, recipients, client))
    return Queued(queue_id=queue_id, recipients=len(set(recipients)))


async def _read_body(request: Request, limit: int) -> bytes:
    """Read the request body, stopping with 413 as soon as it passes limit octets."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, ErrorCode.message_too_large, f"the request exceeds the limit of {limit} octets")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, ErrorCode.message_too_large, f"the request exceeds the limit of {limit} octets")
        chunks.append(chunk)
    return b"".join(chunks)


def _from_json(body: bytes) -> tuple[bytes, list[str]]:
    try:
        message = compose.JsonMessage.model_validate(json.loads(body))
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(422, ErrorCode.invalid_request, _first_problem(error)) from None
    try:
        return compose.compose(message)
    except compose.AddressError as error:
        raise ApiError(422, ErrorCode.invalid_address, str(error)) from None
    except compose.ComposeError as error:
        raise ApiError(422, ErrorCode.invalid_message, str(error)) from None


def _from_raw(body: bytes, recipients: list[str]) -> tuple[bytes, list[str]]:
    data = compose.normalise_raw(body)
    try:
        data, listed = compose.raw_recipients(data)
    except compose.AddressError as error:
        raise ApiError(422, ErrorCode.invalid_address, str(error)) from None
    return data, recipients or listed


def _first_problem(error: Exception) -> str:
    if isinstance(error, ValidationError) and error.errors():
        first = error.errors()[0]
        location = ".".join(str(part) for part in first.get("loc", ())) or "body"
        return f"{location}: {first.get('msg', 'invalid')}"
    return f"invalid JSON: {error}"
