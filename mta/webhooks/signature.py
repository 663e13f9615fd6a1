"""The Mta-Signature header: HMAC-SHA256 over the timestamp, a dot and the body.

The value is ``sha256=`` and 64 lower-case hex digits. Receivers recompute it
with the endpoint secret over ``Mta-Timestamp + "." + body`` exactly as the
octets arrived, compare in constant time, and reject timestamps far from
their clock so that a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """Return the Mta-Signature value for a body sent at timestamp (seconds since the epoch)."""
    digest = hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return PREFIX + digest


def verify(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """Return whether signature is the Mta-Signature of body sent at timestamp."""
    if not timestamp.isdigit():
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)
