"""Bearer-token authentication and scope checks, as FastAPI dependencies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mta.api import tokens
from mta.api.context import ApiContext, get_context
from mta.api.errors import ApiError, ErrorCode
from mta.api.tokens import Token

# auto_error off: a missing token gets the API's own 401 body, not FastAPI's.
_bearer = HTTPBearer(auto_error=False, description="a token from `mta api token create`")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def require(scope: str) -> Callable[..., Awaitable[Token]]:
    """Return a dependency that yields the request's token once it is valid and has the scope."""
    if scope not in tokens.SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def dependency(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
                         context: ApiContext = Depends(get_context)) -> Token:
        if credentials is None:
            raise ApiError(401, ErrorCode.unauthorized, "missing bearer token: send Authorization: Bearer TOKEN",
                           _CHALLENGE)
        token = await tokens.authenticate(context.pool, credentials.credentials)
        if token is None:
            raise ApiError(401, ErrorCode.invalid_token, "invalid, unknown or revoked token",
                           {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        # Set before the scope check, so the request log names the token of a 403 too.
        request.state.token = token
        if scope not in token.scopes:
            raise ApiError(403, ErrorCode.insufficient_scope, f"the token {token.name} lacks the scope {scope}",
                           {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'})
        return token

    return dependency


def actor(token: Token) -> str:
    """Return the name under which the token's actions go into the audit log."""
    return f"api:{token.name}"
