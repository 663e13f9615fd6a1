"""Limits on one client: sessions at once, errors and idle commands per session, and timeouts."""

from __future__ import annotations

import smtplib
import socket
import time

from tests.conftest import query
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
        with RawClient(mta.mx_port, source="127.0.0.51") as other_address:
            assert other_address.greeting[0] == 220
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


# Small values so that each case runs in seconds. The production defaults are minutes.
TIMEOUTS = {"idle_timeout": 2.0, "data_timeout": 4.0, "session_timeout": 60.0}


def read_until_closed(client: RawClient, within: float) -> bytes:
    """Return what the server sends before closing; fail if it is still open after ``within`` seconds."""
    deadline = time.monotonic() + within
    received = client.buffer
    while time.monotonic() < deadline:
        client.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = client.sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"connection still open after {within} s, received {received!r}")


def messages_queued(mta) -> int:
    return query(mta.database_url, "SELECT count(*) AS n FROM message")[0]["n"]


def mta_with_alice(make_mta, smtp: dict):
    mta = make_mta({"smtp": smtp})
    mta.cli("user", "add", "alice@example.com", "--password-stdin", input_text="secret-password\n")
    return mta


def start_transaction(client: RawClient) -> None:
    client.ehlo()
    assert client.command("MAIL FROM:<sender@example.net>")[0] == 250
    assert client.command("RCPT TO:<alice@example.com>")[0] == 250
    assert client.command("DATA")[0] == 354


def test_silent_client_gets_421_after_idle_timeout(make_mta):
    mta = make_mta({"smtp": TIMEOUTS})

    with RawClient(mta.mx_port) as client:
        started = time.monotonic()
        last = read_until_closed(client, within=TIMEOUTS["idle_timeout"] + 2)

    assert last == b"421 4.4.2 timed out after 2 s without input, closing\r\n"
    assert time.monotonic() - started >= TIMEOUTS["idle_timeout"] - 0.1


def test_trickled_data_cut_at_data_timeout(make_mta):
    mta = mta_with_alice(make_mta, TIMEOUTS)

    with RawClient(mta.mx_port) as client:
        start_transaction(client)
        # One octet every half second never trips the idle timeout, only the DATA timeout.
        last = b""
        for _ in range(int(TIMEOUTS["data_timeout"] * 2) + 4):
            try:
                client.send(b"x")
            except OSError:
                break
            last = client.unread(0.5)
            if last:
                break
        last += read_until_closed(client, within=2)

    assert last == b"421 4.4.2 message not completed within 4 s, closing\r\n"
    assert messages_queued(mta) == 0


def test_silence_inside_data_closes_session(make_mta):
    mta = mta_with_alice(make_mta, TIMEOUTS)

    with RawClient(mta.mx_port) as client:
        start_transaction(client)
        client.send(b"Subject: half\r\n\r\n" + b"y" * 1024)
        last = read_until_closed(client, within=TIMEOUTS["idle_timeout"] + 2)

    assert last == b"421 4.4.2 timed out after 2 s without input, closing\r\n"
    assert messages_queued(mta) == 0


def test_busy_session_closed_at_session_limit(make_mta):
    mta = make_mta({"smtp": TIMEOUTS | {"session_timeout": 3.0}})

    with RawClient(mta.mx_port) as client:
        client.ehlo()
        # A NOOP every half second keeps the session from ever being idle.
        noops, unsolicited = 0, b""
        while noops < 20 and not unsolicited:
            assert client.command("NOOP")[0] == 250
            noops += 1
            unsolicited = client.unread(0.5)
        unsolicited += read_until_closed(client, within=2)

    assert 4 <= noops < 20
    assert unsolicited == b"421 4.4.2 session time limit of 3 s exceeded, closing\r\n"


def test_junk_commands_limited_between_messages(make_mta):
    mta = mta_with_alice(make_mta, {"max_junk_commands": 3})

    with RawClient(mta.mx_port) as client:
        client.ehlo()
        for command in ("NOOP", "RSET", "NOOP"):
            assert client.command(command)[0] == 250
        assert client.command("MAIL FROM:<sender@example.net>")[0] == 250
        assert client.command("RCPT TO:<alice@example.com>")[0] == 250
        assert client.data(b"Subject: one\r\n\r\nbody\r\n.\r\n")[0] == 250

        # A message starts the count again.
        for command in ("NOOP", "VRFY <alice@example.com>", "HELP"):
            assert client.command(command)[0] in (250, 252, 214)
        assert client.command("NOOP") == (421, "4.7.0 too many commands without a message, closing")
        assert read_until_closed(client, within=2) == b""


def test_client_talking_before_greeting_refused(make_mta):
    mta = mta_with_alice(make_mta, {"greet_pause": 1.0})

    with socket.create_connection(("127.0.0.1", mta.mx_port), timeout=10) as sock:
        first = sock.recv(1024)
        # Send the whole transaction at once, without waiting for the greeting's last line.
        sock.sendall(b"EHLO spam.example\r\nMAIL FROM:<a@spam.example>\r\nRCPT TO:<alice@example.com>\r\n")
        rest = b""
        while chunk := sock.recv(1024):
            rest += chunk

    assert first == b"220-mta.example.com ESMTP\r\n"
    assert rest == b"554 5.5.1 protocol error: data sent before the greeting\r\n"
    assert "sent data before the greeting" in mta.log()


def test_patient_client_served_after_greet_pause(make_mta):
    mta = mta_with_alice(make_mta, {"greet_pause": 1.0})

    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=30) as client:
        assert client.ehlo("client.example.net")[0] == 250
        refused = client.sendmail("sender@example.net", ["alice@example.com"], b"Subject: patient\r\n\r\nhi\r\n")

    assert refused == {}
    assert time.monotonic() - started >= 1.0
