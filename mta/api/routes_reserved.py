"""Mailbox and GDPR endpoints, reserved with their scopes but not built yet.

They authenticate and check the scope like the others, then return 501
``not_implemented``, so clients and tokens can be set up against the final
paths.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from mta.api.auth import require
from mta.api.errors import ApiError, ErrorCode, documented
from mta.api.tokens import Token

router = APIRouter(prefix="/v1", tags=["reserved"])

# TODO: serve these from the mailbox store and GDPR modules once they are on main.
_NOT_BUILT = "this endpoint is reserved and not implemented yet"


@router.get("/mailbox/{address}/messages", responses=documented(401, 403, 422, 501))
async def list_mailbox(address: str, token: Token = Depends(require("mailbox:read"))) -> None:
    """List the messages in a local mailbox. Scope: `mailbox:read`. Not implemented yet: 501."""
    raise ApiError(501, ErrorCode.not_implemented, _NOT_BUILT)


@router.post("/gdpr/{address}/export", responses=documented(401, 403, 422, 501))
async def export_person(address: str, token: Token = Depends(require("gdpr"))) -> None:
    """Export what is stored about one person (GDPR article 15). Scope: `gdpr`. Not implemented yet: 501."""
    raise ApiError(501, ErrorCode.not_implemented, _NOT_BUILT)


@router.post("/gdpr/{address}/erase", responses=documented(401, 403, 422, 501))
async def erase_person(address: str, token: Token = Depends(require("gdpr"))) -> None:
    """Erase one person's mail and keys (GDPR article 17). Scope: `gdpr`. Not implemented yet: 501."""
    raise ApiError(501, ErrorCode.not_implemented, _NOT_BUILT)
