"""Delivery status notifications are built CRLF-only, as delivery sends queued bodies unchecked."""

from __future__ import annotations

from datetime import datetime, timezone

from mta.delivery.bounce import build_dsn
from mta.delivery.outcome import Reply
from mta.rfc5322 import has_bare_line_ending


def test_dsn_has_only_crlf_line_endings():
    # A remote reply may carry bare line breaks; the notification must not pass them on.
    reply = Reply(550, "5.1.1 no such user\nsecond line\rthird")
    original = b"From: a@example.net\r\nSubject: hello\r\n\r\nbody\r\n"

    dsn = build_dsn("mta.test", "QUEUEID", "a@example.net", datetime.now(timezone.utc),
                    [("b@example.org", reply)], original)

    assert not has_bare_line_ending(dsn)
    assert b"<b@example.org>: 550 5.1.1 no such user second line third\r\n" in dsn
