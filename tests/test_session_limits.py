"""Limits on one client: sessions at once from one address, and error replies in one session."""

from __future__ import annotations

from tests.mx import wait_until
from tests.smtpclient import RawClient


def test_connection_over_limit_gets_421(make_mta):
    mta = make_mta({"smtp": {"max_connections_per_client": 2}})

    first, second = RawClient(mta.mx_port), RawClient(mta.mx_port)
    try:
        assert first.greeting[0] == 220
        assert second.greeting[0] == 220
        with RawClient(mta.mx_port) as third:
            assert third.greeting == (421, "4.7.0 too many connections from your address, try again later")
    finally:
        first.close()
    # A place is free again once the server has seen the session end.
    assert wait_until(lambda: greeting_code(mta.mx_port) == 220, timeout=10)
    second.close()


def greeting_code(port: int) -> int:
    with RawClient(port) as client:
        return client.greeting[0]


def test_too_many_errors_close_the_session(make_mta):
    mta = make_mta({"smtp": {"max_errors": 3}})

    with RawClient(mta.mx_port) as client:
        client.ehlo()
        assert client.command("FOO")[0] == 500
        assert client.command("RCPT TO:<a@example.com>")[0] == 503
        assert client.command("BAR")[0] == 500
        assert client.reply() == (421, "4.7.0 too many errors in this session, closing")
        assert client.unread(2.0) == b""
