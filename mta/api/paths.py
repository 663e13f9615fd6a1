"""Path parameters that several routers share."""

from __future__ import annotations

from fastapi import Path

from mta.api.errors import ApiError, ErrorCode
from mta.smtp.policy import valid_address


def mailbox_address(address: str = Path(max_length=254, description="an email address, in any case")) -> str:
    """Return the path's address in lower case, or raise 422 ``invalid_address``."""
    if not valid_address(address):
        raise ApiError(422, ErrorCode.invalid_address, f"invalid address: {address!r}")
    return address.lower()
