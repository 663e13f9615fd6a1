"""Bearer tokens of the HTTP API: creation, lookup and revocation.

A token reads ``mta_<id>_<secret>``: id is 12 hex digits stored in clear to
find the row, secret is 32 random octets in base64url. Only the SHA-256 of
the whole token is stored, so a copy of the database cannot be used to call
the API. A slow hash would add nothing, as the secret is random and long.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import asyncpg

from mta.addresses import domain_of

SCOPES = ("send", "queue:read", "queue:write", "suppression:read", "suppression:write", "audit:read",
          "mailbox:read", "gdpr")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TOKEN = re.compile(r"^mta_(?P<id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})$")


class TokenError(ValueError):
    """A token request that cannot be carried out, named in the message."""


@dataclass(frozen=True)
class Token:
    """An active token as the API sees it: who it is and what it may do."""

    id: str
    name: str
    scopes: frozenset[str]
    # Set: the token sends as this account only. Otherwise it sends for sender_domains.
    account: str | None
    sender_domains: frozenset[str]

    def may_send_as(self, address: str) -> bool:
        """Tell whether mail with this From address (and envelope sender) may be sent with the token."""
        if self.account is not None:
            return address.lower() == self.account
        return domain_of(address).lower().rstrip(".") in self.sender_domains


def new_token() -> tuple[str, str]:
    """Return a fresh token id and the full token."""
    token_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return token_id, f"mta_{token_id}_{secret}"


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def check_request(name: str, scopes: list[str], account: str | None, sender_domains: list[str]) -> None:
    """Raise TokenError when a token with these properties could not be used as intended."""
    if not NAME.match(name):
        raise TokenError(f"invalid token name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-'")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise TokenError(f"unknown scope {unknown[0]!r}: expected one of {', '.join(SCOPES)}")
    if not scopes:
        raise TokenError("a token needs at least one --scope")
    if account and sender_domains:
        raise TokenError("give either --account or --sender-domain, not both")
    if "send" in scopes and not account and not sender_domains:
        raise TokenError("the send scope needs --account ADDRESS or --sender-domain DOMAIN")


async def create(connection: asyncpg.Connection, name: str, scopes: list[str], account: str | None,
                 sender_domains: list[str]) -> tuple[str, str]:
    """Store a new token; return its id and the full token, which is never stored."""
    check_request(name, scopes, account, sender_domains)
    token_id, token = new_token()
    try:
        await connection.execute(
            "INSERT INTO api_token (id, name, token_hash, scopes, account, sender_domains)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            token_id, name, token_hash(token), sorted(set(scopes)), account.lower() if account else None,
            sorted({domain.lower().rstrip(".") for domain in sender_domains}))
    except asyncpg.UniqueViolationError:
        raise TokenError(f"a token named {name!r} exists: revoke it first or choose another name") from None
    return token_id, token


async def revoke(connection: asyncpg.Connection, name: str) -> str | None:
    """Revoke the active token of that name; return its id, or None when there is none."""
    return await connection.fetchval(
        "UPDATE api_token SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL RETURNING id", name)


async def listing(connection: asyncpg.Connection) -> list[asyncpg.Record]:
    return await connection.fetch(
        "SELECT id, name, scopes, account, sender_domains, created_at, revoked_at FROM api_token"
        " ORDER BY revoked_at IS NOT NULL, name, created_at")


async def authenticate(pool: asyncpg.Pool, presented: str) -> Token | None:
    """Return the active token matching the presented one, or None."""
    match = _TOKEN.match(presented)
    if match is None:
        return None
    row = await pool.fetchrow(
        "SELECT id, name, token_hash, scopes, account, sender_domains FROM api_token"
        " WHERE id = $1 AND revoked_at IS NULL", match.group("id"))
    if row is None or not hmac.compare_digest(bytes(row["token_hash"]), token_hash(presented)):
        return None
    return Token(row["id"], row["name"], frozenset(row["scopes"]), row["account"],
                 frozenset(row["sender_domains"]))
