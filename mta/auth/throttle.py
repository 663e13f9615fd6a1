"""Throttling of failed AUTH attempts per client address and per account.

Each failure counts against the client's address (an IPv6 client by its
/64, which one host usually controls) and against the login name tried,
whether that account exists or not, so the reply reveals nothing about it.
Counts live in PostgreSQL and are shared by all nodes. When a count reaches
its limit within ``auth_failure_window`` seconds, AUTH from that address, or
for that account, gets 454 4.7.0 without a password check until the window
has passed. Every failure is also answered only after
``auth_failure_delay`` seconds, which slows a guesser inside the limits.

Each attempt is counted before its password check and refunded when it
succeeds. Counting first makes the limit hold for attempts that run at the
same time on several sessions or nodes: each sees the counts of the others.

An attacker who knows a login name can block it for others by failing on
purpose, as with any per-account lockout; the per-account limit is set
higher than the per-address one for that reason.
"""

from __future__ import annotations

import asyncio
import ipaddress

import asyncpg

from mta.config import SmtpConfig

# A window that has passed starts again at this attempt. Reaching a key's
# limit blocks it until the window's end. The configuration keeps limits at
# 2 or more, and the first attempt of a key (the INSERT) never blocks. Each
# row returned says whether this attempt is beyond the key's limit.
_ATTEMPT = """
INSERT INTO auth_failure AS f (key, failures)
SELECT unnest($1::text[]), 1
ON CONFLICT (key) DO UPDATE SET
    failures = CASE WHEN f.window_started < now() - make_interval(secs => $2) THEN 1 ELSE f.failures + 1 END,
    window_started = CASE WHEN f.window_started < now() - make_interval(secs => $2)
                          THEN now() ELSE f.window_started END,
    blocked_until = CASE
        WHEN f.window_started >= now() - make_interval(secs => $2)
             AND f.failures + 1 >= (CASE WHEN f.key LIKE 'client:%' THEN $3::int ELSE $4::int END)
        THEN f.window_started + make_interval(secs => $2)
        ELSE f.blocked_until END
RETURNING f.failures > (CASE WHEN f.key LIKE 'client:%' THEN $3::int ELSE $4::int END) AS over_limit
"""

# A successful attempt gives back what it counted, and lifts the block it set.
_REFUND = """
UPDATE auth_failure SET
    failures = failures - 1,
    blocked_until = CASE WHEN failures - 1 < (CASE WHEN key LIKE 'client:%' THEN $2::int ELSE $3::int END)
                         THEN NULL ELSE blocked_until END
WHERE key = ANY($1::text[]) AND failures > 0
"""

_SWEEP = "DELETE FROM auth_failure WHERE window_started < now() - make_interval(secs => $1)" \
         " AND coalesce(blocked_until, now()) <= now()"


def client_key(address: str) -> str:
    """Return the throttling key of a client address: itself for IPv4, its /64 for IPv6."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return f"client:{address}"
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return f"client:{parsed.ipv4_mapped}"
        return f"client:{ipaddress.ip_network(f'{parsed}/64', strict=False)}"
    return f"client:{parsed}"


def account_key(login: str) -> str:
    return f"account:{login.lower()}"


class AuthThrottle:
    def __init__(self, pool: asyncpg.Pool, config: SmtpConfig):
        self.pool = pool
        self.config = config

    async def begin(self, client_address: str, login: str) -> bool:
        """Count an attempt against the client address and the account; return False when either is over its limit."""
        keys = [client_key(client_address), account_key(login)]
        rows = await self.pool.fetch(_ATTEMPT, keys, self.config.auth_failure_window,
                                     self.config.auth_max_failures_per_client,
                                     self.config.auth_max_failures_per_account)
        return not any(row["over_limit"] for row in rows)

    async def succeeded(self, client_address: str, login: str) -> None:
        """Give back the attempt counted by begin, because its password was right."""
        keys = [client_key(client_address), account_key(login)]
        await self.pool.execute(_REFUND, keys, self.config.auth_max_failures_per_client,
                                self.config.auth_max_failures_per_account)

    async def failed(self) -> None:
        """Wait out the failure delay; begin has already counted the attempt."""
        await asyncio.sleep(self.config.auth_failure_delay)


async def sweep(pool: asyncpg.Pool, window: float) -> int:
    """Delete the counts whose window and block have both passed; return how many."""
    status = await pool.execute(_SWEEP, window)
    return int(status.split()[-1])
