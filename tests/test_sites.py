"""Destination sites: concurrency windows, rate limits, and suspension of a site that refuses connections."""

from __future__ import annotations

import time
from collections import deque

from tests.conftest import REMOTE_MX_ADDRESS, query
from tests.mx import RELAY_DOMAIN, relay_config, send_mx, wait_until
from tests.pgcluster import free_port
from tests.sink import sink_on

SUSPEND_SECONDS = 3.0


def test_dead_site_suspended_then_resumed(make_mta):
    port = free_port(REMOTE_MX_ADDRESS)  # nothing listens here until the end
    site = f"{REMOTE_MX_ADDRESS}:{port}"
    mta = make_mta(relay_config(port, retry_schedule=[1.0], connect_timeout=2.0,
                                sites={"dead_after_failures": 2, "suspend_seconds": SUSPEND_SECONDS}))

    for number in range(2):
        code, text = send_mx(mta, "sender@example.net", f"user{number}@{RELAY_DOMAIN}")
        assert code == 250, text
    assert wait_until(lambda: f"site {site} suspended for 3 s after 2 failed connections" in mta.log())
    rows = query(mta.database_url, "SELECT suspended_until > now() AS suspended, last_reply FROM site"
                                   " WHERE key = $1", site)
    assert rows[0]["suspended"]
    assert "4.4.1 connection to" in rows[0]["last_reply"]

    # A message for the suspended site is deferred without a connection attempt.
    code, text = send_mx(mta, "sender@example.net", f"user2@{RELAY_DOMAIN}")
    assert code == 250, text
    assert wait_until(lambda: f"(451 4.4.1 site {site} suspended for" in mta.log())

    with sink_on(REMOTE_MX_ADDRESS, port) as sink:
        arrived = sink.wait_for(3, timeout=30)
    assert sorted(message.recipients[0] for message in arrived) == [f"user{n}@{RELAY_DOMAIN}" for n in range(3)]


def site_limits(sink_port: int, **relay_limits) -> dict:
    config = relay_config(sink_port)
    config["delivery"]["sites"] = {"initial_concurrency": 2, "overrides": {RELAY_DOMAIN: relay_limits}}
    return config


def send_many(mta, count: int, domain: str = RELAY_DOMAIN) -> None:
    for number in range(count):
        code, text = send_mx(mta, "sender@example.net", f"user{number}@{domain}")
        assert code == 250, text


def test_site_window_caps_parallel_deliveries(make_mta, sink, sink_port):
    mta = make_mta(site_limits(sink_port, max_concurrency=2))
    sink.script.rcpt_delays = deque([0.5] * 6)

    send_many(mta, 6)

    assert len(sink.wait_for(6)) == 6
    assert sink.max_in_transaction == 2


def test_busy_site_leaves_room_for_others(make_mta, sink, sink_port):
    other_port = free_port(REMOTE_MX_ADDRESS)
    config = site_limits(sink_port, max_concurrency=1)
    config["domains"]["local"].append("other.example")
    config["delivery"]["routes"]["other.example"] = f"{REMOTE_MX_ADDRESS}:{other_port}"
    # Two places in all: without giving them back, the slow site's waiting deliveries would hold both.
    config["delivery"]["concurrency"] = 2
    mta = make_mta(config)
    sink.script.rcpt_delays = deque([2.0] * 4)

    with sink_on(REMOTE_MX_ADDRESS, other_port) as other:
        send_many(mta, 4)
        started = time.monotonic()
        send_many(mta, 1, "other.example")
        assert other.wait_for(1, timeout=20)
        waited = time.monotonic() - started

    assert waited < 3.0
    assert len(sink.wait_for(4)) == 4
    assert sink.max_in_transaction == 1


def test_site_rate_spaces_messages(make_mta, sink, sink_port):
    mta = make_mta(site_limits(sink_port, rate_per_second=4.0))

    send_many(mta, 6)

    arrived = sink.wait_for(6)
    assert len(arrived) == 6
    # Five intervals of 0.25 s at least between the first and the last.
    assert arrived[-1].at - arrived[0].at >= 1.2
    assert query(mta.database_url, "SELECT second_tat IS NOT NULL AS set FROM site")[0]["set"]
