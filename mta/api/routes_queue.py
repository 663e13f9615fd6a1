"""``/v1/queue``: list, show, hold, release, retry, bounce and delete, as ``mta queue`` does.

The actions go through mta.spool.admin, so each runs in one transaction
with its audit entry, under the actor ``api:TOKEN_NAME``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from mta.api.auth import actor, require
from mta.api.context import ApiContext, get_context
from mta.api.errors import ApiError, ErrorCode, documented
from mta.api.tokens import Token
from mta.spool import admin

router = APIRouter(prefix="/v1/queue", tags=["queue"])


class Delivery(BaseModel):
    """Queued recipients of one message at one destination domain."""

    queue_id: str
    sender: str
    size: int
    received_at: datetime
    domain: str
    recipients: list[str]
    due_at: datetime
    attempts: int
    state: Literal["active", "deferred", "held"]
    last_reply: str | None
    # The last reply per recipient, where one was recorded.
    replies: dict[str, str]


class MessageEnvelope(BaseModel):
    id: str
    sender: str
    size: int
    origin: str
    session_id: str
    received_at: datetime
    completed_at: datetime | None
    quarantine: str | None


class QueuedDelivery(BaseModel):
    domain: str
    recipients: list[str]
    state: Literal["active", "deferred", "held"]
    due_at: datetime
    attempts: int
    last_reply: str | None
    replies: dict[str, str]


class DeliveryEvent(BaseModel):
    at: datetime
    recipient: str
    status: str
    reply: str
    relay: str


class MessageDetails(BaseModel):
    message: MessageEnvelope
    deliveries: list[QueuedDelivery]
    events: list[DeliveryEvent]


class ActionOutcome(BaseModel):
    queue_id: str
    # False when there was nothing to change, such as hold on a held message.
    changed: bool


@router.get("", response_model=list[Delivery], responses=documented(401, 403, 422))
async def list_queue(sender: str | None = None, recipient: str | None = None, domain: str | None = None,
                     state: Literal["active", "deferred", "held"] | None = None,
                     older_than: str | None = Query(None, description="arrived more than AGE ago: 90s, 30m, 4h, 2d"),
                     newer_than: str | None = Query(None, description="arrived less than AGE ago"),
                     token: Token = Depends(require("queue:read")),
                     context: ApiContext = Depends(get_context)) -> list[Delivery]:
    """List queued deliveries, oldest first, with the filters of `mta queue list`. Scope: `queue:read`."""
    filters = admin.Filters(sender, recipient, domain, state, _age(older_than), _age(newer_than))
    async with context.pool.acquire() as connection:
        rows = await admin.list_deliveries(connection, filters)
    return [Delivery(queue_id=row.pop("message_id"), **row) for row in rows]


@router.get("/{queue_id}", response_model=MessageDetails, responses=documented(401, 403, 404, 422))
async def show(queue_id: str, token: Token = Depends(require("queue:read")),
               context: ApiContext = Depends(get_context)) -> MessageDetails:
    """Show one message: envelope, queued deliveries and every attempt. Scope: `queue:read`."""
    queue_id = _checked(queue_id)
    async with context.pool.acquire() as connection:
        try:
            details = await admin.show(connection, queue_id)
        except admin.AdminError as error:
            raise ApiError(404, ErrorCode.not_found, str(error)) from None
    return MessageDetails(**details)


def _action(name: str, summary: str):
    async def run(queue_id: str, token: Token = Depends(require("queue:write")),
                  context: ApiContext = Depends(get_context)) -> ActionOutcome:
        queue_id = _checked(queue_id)
        async with context.pool.acquire() as connection:
            outbox = context.spool.outbox if context.spool is not None else None
            queue_admin = admin.QueueAdmin(connection, actor(token), outbox)
            try:
                result = await _perform(queue_admin, name, queue_id, context)
            except admin.AdminError as error:
                raise ApiError(404, ErrorCode.not_found, str(error)) from None
        if result.busy:
            raise ApiError(409, ErrorCode.busy, f"{queue_id} is being delivered now: repeat after the attempt")
        return ActionOutcome(queue_id=queue_id, changed=queue_id in result.done)

    run.__name__ = f"{name}_message"
    run.__doc__ = f"{summary} Scope: `queue:write`."
    return run


async def _perform(queue_admin: admin.QueueAdmin, name: str, queue_id: str,
                   context: ApiContext) -> admin.ActionResult:
    if name == "bounce":
        return await queue_admin.bounce([queue_id], context.spool, context.store, context.bodies,
                                        context.config.server.hostname)
    if name == "delete":
        return await queue_admin.delete([queue_id], context.store)
    return await getattr(queue_admin, name)([queue_id])


_ACTIONS = {
    "hold": "Hold the message: no delivery attempt until it is released.",
    "release": "Release a held message and make it due now.",
    "retry": "Make the message's deferred deliveries due now.",
    "bounce": "Fail the message's queued recipients and send the sender one notification.",
}
for _name, _summary in _ACTIONS.items():
    router.add_api_route(f"/{{queue_id}}/{_name}", _action(_name, _summary), methods=["POST"],
                         response_model=ActionOutcome, responses=documented(401, 403, 404, 409, 422))
_DELETE = "Remove the message from the queue without notice to the sender."
router.add_api_route("/{queue_id}", _action("delete", _DELETE), methods=["DELETE"],
                     response_model=ActionOutcome, responses=documented(401, 403, 404, 409, 422))


def _checked(queue_id: str) -> str:
    try:
        return admin.check_queue_ids([queue_id])[0]
    except admin.AdminError as error:
        raise ApiError(422, ErrorCode.invalid_queue_id, str(error)) from None


def _age(text: str | None) -> timedelta | None:
    if text is None:
        return None
    try:
        return admin.parse_age(text)
    except ValueError as error:
        raise ApiError(422, ErrorCode.invalid_request, str(error)) from None
