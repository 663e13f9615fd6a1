"""Random command lines and random message data against a live MX session.

Whatever arrives, the server replies to each line with well-formed lines or
closes the session, never crashes, and serves the next normal session.
"""

from __future__ import annotations

import re
import smtplib
import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.smtpclient import RawClient

VERBS = ["EHLO", "HELO", "MAIL FROM:", "RCPT TO:", "DATA", "RSET", "NOOP", "VRFY", "EXPN", "HELP", "QUIT",
         "STARTTLS", "AUTH", "BDAT", "XCLIENT", "mail from:<", "RCPT TO:<alice@example.com>"]
REPLY_LINE = re.compile(rb"^[2-5]\d\d[ -]")

# Octets other than CR and LF, so that one generated line stays one line on the wire.
line_octets = st.binary(max_size=600).map(lambda data: data.replace(b"\r", b"").replace(b"\n", b""))
command_lines = st.one_of(
    line_octets,
    st.tuples(st.sampled_from(VERBS), line_octets).map(lambda pair: pair[0].encode() + pair[1]),
    st.sampled_from(VERBS).map(str.encode),
)
message_data = st.binary(max_size=4000)


def read_reply(client: RawClient) -> list[bytes]:
    """Read one whole reply; return its lines."""
    lines = []
    while True:
        line = client._line()
        lines.append(line)
        if line[3:4] != b"-":
            return lines


def exchange(port: int, lines: list[bytes], data: bytes) -> None:
    """Send the lines one by one, and the data after any 354; check every reply line."""
    try:
        client = RawClient(port, timeout=3)
    except (ConnectionError, socket.timeout) as error:
        raise AssertionError(f"server did not greet: {error!r}") from error
    with client:
        assert client.greeting[0] in (220, 421)
        try:
            for line in lines:
                client.send(line + b"\r\n")
                try:
                    reply = read_reply(client)
                except TimeoutError:
                    # After "BDAT n" the server rightly waits for n octets of data before replying.
                    assert line[:4].upper() == b"BDAT", line
                    return
                assert all(REPLY_LINE.match(reply_line) for reply_line in reply), reply
                if reply[-1].startswith(b"354"):
                    client.send(data + b"\r\n.\r\n")
                    reply = read_reply(client)
                    assert all(REPLY_LINE.match(reply_line) for reply_line in reply), reply
                # After 221 or 421 the server closes, and after 220 to STARTTLS it expects a TLS handshake.
                if reply[-1][:3] in (b"220", b"221", b"421"):
                    return
        except (ConnectionError, BrokenPipeError):
            # The server may close after a 421 or a TLS attempt that went nowhere.
            return


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(command_lines, max_size=12), data=message_data)
def test_random_sessions_get_wellformed_replies(shared_mta, lines, data):
    exchange(shared_mta.mx_port, lines, data)


def test_normal_session_after_random_ones(shared_mta):
    with smtplib.SMTP("127.0.0.1", shared_mta.mx_port, timeout=30) as client:
        client.ehlo("client.example.net")
        refused = client.sendmail("sender@example.net", ["alice@example.com"], b"Subject: after\r\n\r\nfine\r\n")

    assert refused == {}
    assert shared_mta.process.poll() is None
    assert "Traceback" not in shared_mta.log()
