"""Identifiers for queue entries and SMTP sessions, short enough for log lines."""

import secrets

_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"


def _token(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_queue_id() -> str:
    """Return a random 14-character queue id, like Postfix's long queue ids."""
    return _token(14)


def new_session_id() -> str:
    return _token(10).lower()
