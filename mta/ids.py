"""Identifiers for queue entries and SMTP sessions, short enough for log lines."""

import base64
import secrets


def _token(octets: int) -> str:
    # Base32 of random octets: upper-case letters and digits 2-7, no padding
    # when the length is a multiple of 5 octets.
    return base64.b32encode(secrets.token_bytes(octets)).decode()


def new_queue_id() -> str:
    """Return a random 16-character queue id (80 bits), like Postfix's long queue ids."""
    return _token(10)


def new_session_id() -> str:
    """Return a random 8-character session id (40 bits) in lower case."""
    return _token(5).lower()
