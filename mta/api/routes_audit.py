"""``/v1/audit/verify``: recompute the audit log's hash chain, as ``mta audit verify`` does."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from mta import audit
from mta.api.auth import require
from mta.api.context import ApiContext, get_context
from mta.api.errors import documented
from mta.api.tokens import Token

router = APIRouter(prefix="/v1/audit", tags=["audit"])


class AuditVerification(BaseModel):
    valid: bool
    entries: int = Field(description="entries checked, up to and including the first altered one")
    head: str = Field(description="hex SHA-256 of the last entry that verified; 64 zeros for an empty log")
    broken_at: int | None = Field(description="id of the first altered entry; null when the chain holds")
    reason: str


@router.get("/verify", response_model=AuditVerification, responses=documented(401, 403))
async def verify(token: Token = Depends(require("audit:read")),
                 context: ApiContext = Depends(get_context)) -> AuditVerification:
    """Recompute every entry's hash and name the first entry that does not match. Scope: `audit:read`.

    An altered chain is a finding, not an error of the request, so it comes
    back as 200 with `valid` false.
    """
    async with context.pool.acquire() as connection:
        result = await audit.verify(connection)
    return AuditVerification(valid=result.broken_at is None, entries=result.entries, head=result.head.hex(),
                             broken_at=result.broken_at, reason=result.reason)
