"""``/v1/suppression``: list, add and remove suppressed recipients, as ``mta suppression`` does."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field

from mta.api.auth import actor, require
from mta.api.context import ApiContext, get_context
from mta.api.errors import ApiError, ErrorCode, documented
from mta.api.tokens import Token
from mta.cli_support import audit
from mta.delivery import suppression

router = APIRouter(prefix="/v1/suppression", tags=["suppression"])


class SuppressionEntry(BaseModel):
    sender_domain: str
    address: str
    reason: str
    source: str
    created_at: datetime
    expires_at: datetime | None


class NewSuppression(BaseModel):
    sender_domain: str = Field(max_length=253)
    address: str = Field(max_length=254)
    reason: str = Field("added through the API", max_length=500)
    days: int | None = Field(None, ge=1, le=3650, description="expire after this many days; absent: never")


@router.get("", response_model=list[SuppressionEntry], responses=documented(401, 403, 422))
async def list_entries(sender_domain: str | None = None, address: str | None = None,
                       token: Token = Depends(require("suppression:read")),
                       context: ApiContext = Depends(get_context)) -> list[SuppressionEntry]:
    """List suppressed addresses that have not expired. Scope: `suppression:read`."""
    async with context.pool.acquire() as connection:
        rows = await suppression.entries(connection, sender_domain, address)
    return [SuppressionEntry(**dict(row)) for row in rows]


@router.post("", status_code=201, response_model=SuppressionEntry, responses=documented(401, 403, 422))
async def add_entry(request: NewSuppression, token: Token = Depends(require("suppression:write")),
                    context: ApiContext = Depends(get_context)) -> SuppressionEntry:
    """Suppress an address for a sender domain, or replace its entry. Scope: `suppression:write`."""
    expires_at = datetime.now(timezone.utc) + timedelta(days=request.days) if request.days else None
    try:
        entry = suppression.check_entry(suppression.Entry(request.sender_domain, request.address, request.reason,
                                                          "operator", expires_at))
    except suppression.SuppressionError as error:
        raise ApiError(422, ErrorCode.invalid_address, str(error)) from None

    async with context.pool.acquire() as connection:
        async with connection.transaction():
            await suppression.add(connection, [entry])
            await audit(connection, actor(token), "suppression add",
                        {"sender_domain": entry.sender_domain, "address": entry.address, "days": request.days})
            rows = await suppression.entries(connection, entry.sender_domain, entry.address)
    return SuppressionEntry(**dict(rows[0]))


@router.delete("", status_code=204, response_class=Response, responses=documented(401, 403, 404, 422))
async def remove_entry(sender_domain: str = Query(max_length=253), address: str = Query(max_length=254),
                       token: Token = Depends(require("suppression:write")),
                       context: ApiContext = Depends(get_context)) -> Response:
    """Stop suppressing an address for a sender domain. Scope: `suppression:write`."""
    async with context.pool.acquire() as connection:
        async with connection.transaction():
            removed = await suppression.remove(connection, sender_domain, address)
            if removed:
                await audit(connection, actor(token), "suppression remove",
                            {"sender_domain": sender_domain.lower(), "address": address.lower()})
    if not removed:
        raise ApiError(404, ErrorCode.not_found, f"<{address}> is not suppressed for {sender_domain}")
    return Response(status_code=204)
