"""Delivery over reused SMTP connections, against aiosmtpd sinks on 127.0.0.2."""

from __future__ import annotations

import smtplib

import pytest

from tests.conftest import REMOTE_MX_ADDRESS
from tests.mx import RELAY_DOMAIN, relay_config, send_mx, wait_until
from tests.pgcluster import free_port
from tests.sink import Sink, sink_on

RECIPIENT = "user@relay.example"


def cached(sink_port: int, seconds: float, **delivery) -> dict:
    return relay_config(sink_port, connection_cache_seconds=seconds, **delivery)


def send_in_turn(mta, sink: Sink, count: int) -> list[int]:
    """Send count messages one after another, each after the last arrived; return the sink's client ports."""
    for number in range(1, count + 1):
        code, text = send_mx(mta, "sender@example.net", RECIPIENT)
        assert code == 250, text
        assert len(sink.wait_for(number)) == number
    return [message.peer_port for message in sink.messages]


def test_messages_share_one_connection(make_mta, sink, sink_port):
    mta = make_mta(cached(sink_port, 30.0))

    ports = send_in_turn(mta, sink, 3)

    assert len(set(ports)) == 1


def test_reuse_limit_opens_new_connection(make_mta, sink, sink_port):
    mta = make_mta(cached(sink_port, 30.0, connection_reuse_limit=2))

    ports = send_in_turn(mta, sink, 3)

    assert ports[0] == ports[1]
    assert ports[2] != ports[1]


def test_zero_cache_time_closes_each_connection(make_mta, sink, sink_port):
    mta = make_mta(cached(sink_port, 0.0))

    ports = send_in_turn(mta, sink, 2)

    assert ports[0] != ports[1]
    assert wait_until(lambda: sink.quits == 2, timeout=10)


def test_idle_connection_quits_after_cache_time(make_mta, sink, sink_port):
    mta = make_mta(cached(sink_port, 0.5))

    send_in_turn(mta, sink, 1)

    # Closed by the background pruner, which looks once a second.
    assert wait_until(lambda: sink.quits == 1, timeout=10)


def test_closed_cached_connection_is_replaced(make_mta):
    port = free_port(REMOTE_MX_ADDRESS)
    mta = make_mta(cached(port, 60.0))
    # The remote MX restarts between the messages, which closes the connection idle in the cache.
    with sink_on(REMOTE_MX_ADDRESS, port) as first:
        send_in_turn(mta, first, 1)
    with sink_on(REMOTE_MX_ADDRESS, port) as second:
        send_in_turn(mta, second, 1)

    assert first.messages[0].peer_port != second.messages[0].peer_port
    assert "status=deferred" not in mta.log()


def test_oversize_message_bounces_before_data(make_mta, sink_port):
    small_port = free_port(REMOTE_MX_ADDRESS)
    config = relay_config(sink_port)
    config["domains"]["local"].append("small.example")
    config["delivery"]["routes"]["small.example"] = f"{REMOTE_MX_ADDRESS}:{small_port}"
    mta = make_mta(config)

    with sink_on(REMOTE_MX_ADDRESS, small_port, data_size_limit=2000) as small:
        code, text = send_mx(mta, "sender@example.net", "user@small.example",
                             b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 60)
        assert code == 250, text
        log = wait_until(lambda: "status=bounced" in mta.log() and mta.log())

    assert "dsn=5.3.4" in log
    assert "exceeds the limit 2000" in log
    assert small.messages == []


@pytest.mark.parametrize("replies, delivered", [
    (["550 5.1.1 no such user", "250 OK"], [["b@relay.example"]]),
    (["550 5.1.1 no such user", "550 5.1.1 no such user"], []),
])
def test_refused_recipients_keep_their_replies(make_mta, sink, sink_port, replies, delivered):
    mta = make_mta(cached(sink_port, 30.0))
    sink.script.rcpt_replies.extend(replies)

    with smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=30) as client:
        client.sendmail("<>", ["a@relay.example", "b@relay.example"], b"Subject: two\r\n\r\nhello\r\n")

    log = wait_until(lambda: mta.log().count("status=") >= 2 and mta.log())
    assert "to=<a@relay.example>" in log
    assert "dsn=5.1.1, status=bounced (550 5.1.1 no such user)" in log
    assert [message.recipients for message in sink.wait_for(len(delivered))] == delivered


def test_connection_reused_after_refusals(make_mta, sink, sink_port):
    mta = make_mta(cached(sink_port, 30.0))
    sink.script.rcpt_replies.append("550 5.1.1 no such user")

    code, text = send_mx(mta, "sender@example.net", RECIPIENT)
    assert code == 250, text
    assert wait_until(lambda: "status=bounced" in mta.log())
    send_in_turn(mta, sink, 1)

    # RSET after the refusal left the connection fit for the next message.
    assert sink.ehlos == 1


@pytest.mark.parametrize("limit_reply", ["452 4.5.3 Too many recipients", "552 5.5.3 Too many recipients"])
@pytest.mark.parametrize("pipelining", [True, False])
def test_recipients_over_remote_limit_go_in_next_transaction(make_mta, limit_reply, pipelining):
    port = free_port(REMOTE_MX_ADDRESS)
    mta = make_mta(cached(port, 30.0) | {"smtp": {"max_recipients": 200}})
    recipients = [f"r{number:03d}@{RELAY_DOMAIN}" for number in range(1, 151)]

    with sink_on(REMOTE_MX_ADDRESS, port, offer_pipelining=pipelining) as sink:
        # A pipelining client sends every RCPT of the group, and each one past the limit is refused.
        refused = 50 if pipelining else 1
        sink.script.rcpt_replies.extend(["250 2.1.5 OK"] * 100 + [limit_reply] * refused)
        with smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=30) as client:
            assert client.sendmail("sender@example.net", recipients, b"Subject: many\r\n\r\nhello\r\n") == {}

        first, second = sink.wait_for(2)
        assert wait_until(lambda: mta.log().count("status=sent") == 150)

    assert len(first.recipients) == 100
    assert sorted(first.recipients + second.recipients) == recipients
    assert "status=deferred" not in mta.log()
    assert sink.ehlos == 1


def test_recipient_over_inbound_limit_gets_452(make_mta, sink, sink_port):
    mta = make_mta(relay_config(sink_port))

    with smtplib.SMTP("127.0.0.1", mta.mx_port, timeout=30) as client:
        client.ehlo("client.example.net")
        client.mail("sender@example.net")
        for number in range(1, 101):
            assert client.rcpt(f"u{number:03d}@{RELAY_DOMAIN}")[0] == 250
        code, text = client.rcpt(f"u101@{RELAY_DOMAIN}")
        assert (code, text[:5]) == (452, b"4.5.3")
        assert client.data(b"Subject: hundred\r\n\r\nhello\r\n")[0] == 250

    assert len(sink.wait_for(1)[0].recipients) == 100
